"""THE names of the environment variables Punie reads or sets (one home).

First the PUNIE_ variables that are not profile keys; every other ``PUNIE_<KEY>`` variable is read
as a profile override (pydantic-settings);
config warns about a PUNIE_ variable that is neither. A module that reads a new
non-profile PUNIE_ variable adds its name here (tests/core/test_one_home.py checks the source).
Then other tools' variables Punie reads or sets for its children; tests/core/test_one_home.py fails
when one of these names is written as a literal outside this module.
"""

from __future__ import annotations

CONFIG = "PUNIE_CONFIG"  # the profiles file
PROFILE = "PUNIE_PROFILE"  # the profile to use
CACHE_DIR = "PUNIE_CACHE_DIR"  # Punie's cache (provisioned models)
GUARD_MODE = "PUNIE_GUARD_MODE"  # the orphan guard's mode (launch/guard.py)
CONTROL_FD = "PUNIE_CONTROL_FD"  # the agent's end of the supervisor's control channel (idle unload)
GATE_FD = "PUNIE_GATE_FD"  # the agent's end of the start gate: it waits there for the server (launch/gate.py)
MECHANISMS = "PUNIE_MECHANISMS"  # force the portable (non-Linux) mechanisms (mechanisms.py)
RUN_TOKEN = "PUNIE_RUN_TOKEN"  # marks a run_command command's processes (agent/procs.py, agent/reaper.py)
DENSE = "PUNIE_DENSE"  # off: never serve a dense copy of a quantized model (launch/dense.py)
WARM = "PUNIE_WARM"  # off: the agent does not warm the server's prompt cache at start (agent/warm.py)
BLAS = "PUNIE_BLAS"  # the BLAS of mlx children: auto, off, a library or a directory (launch/blas.py)
EVAL_CONCURRENCY = "PUNIE_EVAL_CONCURRENCY"  # eval requests in flight at once; 1: one by one (training/evaluate.py)

NON_PROFILE = frozenset({CONFIG, PROFILE, CACHE_DIR, GUARD_MODE, CONTROL_FD, GATE_FD, MECHANISMS, RUN_TOKEN, BLAS,
                         DENSE, WARM, EVAL_CONCURRENCY})
PREFIX = "PUNIE_"
#: The same names without the prefix (how config's env layer compares them).
NON_PROFILE_KEYS = frozenset(name[len(PREFIX):] for name in NON_PROFILE)

# Other tools' variables.
HF_HUB_CACHE = "HF_HUB_CACHE"  # the Hugging Face hub cache (punie.paths.hf_hub_cache)
HUGGINGFACE_HUB_CACHE = "HUGGINGFACE_HUB_CACHE"  # its legacy name, still honoured
HF_HOME = "HF_HOME"  # the Hugging Face home ($HF_HOME/hub)
HF_HUB_OFFLINE = "HF_HUB_OFFLINE"  # set to 1 for children: Punie never downloads from the hub
XDG_CACHE_HOME = "XDG_CACHE_HOME"  # the base of ~/.cache
MLX_DISABLE_COMPILE = "MLX_DISABLE_COMPILE"  # mlx children: no graph compilation (steadier on small CPUs)
TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"  # quiets the tokenizers fork warning in children
PYTHONUNBUFFERED = "PYTHONUNBUFFERED"  # children's output reaches the log line by line
VLLM_NO_USAGE_STATS = "VLLM_NO_USAGE_STATS"  # vLLM sends no usage statistics

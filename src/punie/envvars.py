"""THE list of PUNIE_ environment variables that are not profile keys (one home).

Every other ``PUNIE_<KEY>`` variable is read as a profile override (pydantic-settings);
config warns about a PUNIE_ variable that is neither. A module that reads a new
non-profile PUNIE_ variable adds its name here (tests/test_envvars.py checks the source).
"""

from __future__ import annotations

CONFIG = "PUNIE_CONFIG"  # the profiles file
PROFILE = "PUNIE_PROFILE"  # the profile to use
CACHE_DIR = "PUNIE_CACHE_DIR"  # Punie's cache (provisioned models)
GUARD_MODE = "PUNIE_GUARD_MODE"  # the orphan guard's mode (launch/guard.py)
CONTROL_FD = "PUNIE_CONTROL_FD"  # the agent's end of the supervisor's control channel (idle unload)
MECHANISMS = "PUNIE_MECHANISMS"  # force the portable (non-Linux) mechanisms (mechanisms.py)
RUN_TOKEN = "PUNIE_RUN_TOKEN"  # marks a run_command command's processes (agent/procs.py, agent/reaper.py)
DENSE = "PUNIE_DENSE"  # off: never serve a dense copy of a quantized model (launch/dense.py)
WARM = "PUNIE_WARM"  # off: the agent does not warm the server's prompt cache at start (agent/warm.py)
BLAS = "PUNIE_BLAS"  # the BLAS of mlx children: auto, off, a library or a directory (launch/blas.py)

NON_PROFILE = frozenset({CONFIG, PROFILE, CACHE_DIR, GUARD_MODE, CONTROL_FD, MECHANISMS, RUN_TOKEN, BLAS, DENSE, WARM})
PREFIX = "PUNIE_"
#: The same names without the prefix (how config's env layer compares them).
NON_PROFILE_KEYS = frozenset(name[len(PREFIX):] for name in NON_PROFILE)

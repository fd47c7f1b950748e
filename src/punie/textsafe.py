"""THE sanitizer of text shown on a terminal (one home): `printable`.

Untrusted strings (a path in punie.toml, a file or adapter name, a model's config) can hold
control characters; printed raw, an ESC sequence or a carriage return rewrites the screen and a
newline starts a line of its own (a forged ``✓ ...``). The CLI prints through `printable`
(`punie.cli._common.echo`, ``say``, ``print_error``), and a message that lists values one per
line escapes each value with ``one_line=True``.
"""

from __future__ import annotations

import re

# Characters that steer a terminal instead of showing: C0 controls but tab and newline, DEL, C1
# controls (ESC's 8-bit twins), line/paragraph separators and the bidi overrides (Trojan Source).
_STEERING = "\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_STEERING}]")
_CONTROL_OR_NEWLINE = re.compile(f"[{_STEERING}\n\t]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def printable(text: str, *, one_line: bool = False) -> str:
    """THE sanitizer of what the CLI prints: control characters (ESC sequences, carriage returns, bidi
    overrides...) from untrusted strings (a path in punie.toml, a file name) are shown escaped
    (``\\x1b``), never sent raw to a terminal. ``one_line``: a newline (and a tab) too, for a
    value that must stay on its line (it could otherwise forge a line such as ``✓ ...``)."""
    return (_CONTROL_OR_NEWLINE if one_line else _CONTROL).sub(_escaped, text)

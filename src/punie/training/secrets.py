"""Secret-looking strings in training data: found by kind and replaced by ``[REDACTED:kind]``.

Training data made from a person's sessions carries whatever their tools read:
``.env`` files, configs with tokens, URLs with passwords. A LoRA adapter can
memorise them, so they are replaced before anything is written. The patterns
err on the side of removing too much: a false positive costs one example's
fidelity, a miss leaks a credential into an adapter that may be shared.
The report counts what was removed by kind and never holds the secret itself.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

REDACTED = "[REDACTED:{kind}]"

_KEY_WORDS = r"(?:pass(?:word|wd)?|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth|credentials?)"

#: (kind, pattern, group to replace or 0 for the whole match). Order matters: the specific before the generic.
PATTERNS: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("private-key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                               re.DOTALL), 0),
    ("url-password", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@\"']+:([^\s@/\"']+)@"), 1),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), 0),
    ("github-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b"), 0),
    ("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), 0),
    ("api-key", re.compile(r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9]{20,}\b"), 0),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), 0),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"), 0),
    ("bearer-token", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/=-]{16,})"), 1),
    # KEY=value / KEY: value / "key": "value" where the name says it is a secret (.env files, YAML, JSON).
    ("env-secret", re.compile(
        r"(?im)([A-Za-z0-9_.-]*" + _KEY_WORDS + r"[A-Za-z0-9_.-]*[\"']?\s*[:=]\s*)"
        r"(\"[^\"\n]{4,}\"|'[^'\n]{4,}'|[^\s\"',;}{]{4,})"), 2),
)


def _replace(kind: str, pattern: re.Pattern[str], group: int, text: str, found: Counter[str]) -> str:
    def sub(match: re.Match[str]) -> str:
        value = match.group(group)
        if value.startswith("[REDACTED:"):
            return match.group(0)
        found[kind] += 1
        start, end = match.span(group)
        whole_start = match.start(0)
        whole = match.group(0)
        return whole[: start - whole_start] + REDACTED.format(kind=kind) + whole[end - whole_start:]

    return pattern.sub(sub, text)


def scrub_text(text: str, found: Counter[str]) -> str:
    """``text`` with every secret-looking string replaced; counts added to ``found`` by kind."""
    for kind, pattern, group in PATTERNS:
        text = _replace(kind, pattern, group, text, found)
    return text


def scrub_value(value: Any, found: Counter[str]) -> Any:
    """A JSON value with every string in it scrubbed (dict keys are kept as they are)."""
    if isinstance(value, str):
        return scrub_text(value, found)
    if isinstance(value, list):
        return [scrub_value(v, found) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, found) for k, v in value.items()}
    return value

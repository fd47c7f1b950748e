"""TAB completion of profile and adapter names without importing the CLI (stdlib only).

The completion script calls ``punie`` back with ``_PUNIE_COMPLETE`` set. Through click,
that imports the whole CLI (click, the command modules, pydantic for the profiles file):
0.2-0.4 s a TAB. `punie.cli` calls :func:`answer` before importing anything else: when the
word being completed is a profile or an adapter name (the slots of :data:`SLOTS`), the
names are read here (punie.toml with tomllib, the adapters folder) and printed in click's
format for the shell; everything else (command and option names, files, ...) returns
None and click answers as before. tests/cli/test_completion_fast.py checks, against the full
CLI, that the slots are the ones whose parameters complete names, and that both paths
give the same answers.

Imports only the standard library and punie.envvars (whose packages import pydantic are not touched).
"""

from __future__ import annotations

import os
import sys

from punie.envvars import CONFIG as CONFIG_ENV

COMPLETE_VAR = "_PUNIE_COMPLETE"
CONFIG_NAME = "punie.toml"  # punie.config.loader.CONFIG_NAME (checked by the differential test)
ADAPTERS_DIR = "adapters"  # punie.adapters.locate.ADAPTERS_DIR (idem)
ADAPTER_ALIASES = ("latest", "best")

#: Command path -> {slot: what it completes}. A slot is "ARG" (the command's first positional
#: argument; "ARGS" when it takes any number) or an option's spellings joined by "|".
SLOTS: dict[tuple[str, ...], dict[str, str]] = {
    ("check",): {"ARGS": "profiles"},
    ("up",): {"ARG": "profiles"},
    ("ide",): {},  # its PROFILE is its second positional: left to click
    ("profiles", "show"): {"ARG": "profiles"},
    ("adapters", "compose"): {"ARGS": "adapters"},
    ("adapters", "fuse"): {"ARG": "adapters"},
    ("ask",): {"--profile|-p": "profiles"},
    ("serve",): {"--profile|-p": "profiles", "--adapter|-a": "adapters"},
    ("train",): {"ARG": "profiles"},
    ("eval",): {"ARG": "profiles", "--vs": "profiles"},
}
GROUPS = {"profiles", "adapters"}  # commands whose second word is a subcommand
#: The top-level options, and whether each takes a value.
GLOBAL_OPTIONS = {"--config": True, "--set": True, "-v": False, "-vv": False, "-vvv": False, "--verbose": False}


def split_words(text: str) -> list[str]:
    """The shell's words as click splits them (shlex, tolerating an unfinished quote)."""
    if not any(c in text for c in "'\"\\"):
        return text.split()  # the same words, without importing shlex (and re)
    import shlex

    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split = True
    lex.commenters = ""
    out: list[str] = []
    try:
        out.extend(lex)
    except ValueError:
        out.append(lex.token)
    return out


def completion_args(shell: str, environ: dict[str, str] | os._Environ[str]) -> tuple[list[str], str] | None:
    """(words before the one completed, the word completed) as click's bash/zsh/fish classes read them."""
    words = split_words(environ.get("COMP_WORDS", ""))
    if shell in ("bash", "zsh"):
        try:
            cword = int(environ["COMP_CWORD"])
        except (KeyError, ValueError):
            return None
        return words[1:cword], words[cword] if cword < len(words) else ""
    if shell == "fish":
        incomplete = environ.get("COMP_CWORD", "")
        if incomplete:
            incomplete = split_words(incomplete)[0]
        args = words[1:]
        if incomplete and args and args[-1] == incomplete:
            args.pop()
        return args, incomplete
    return None


def slot_of(args: list[str], incomplete: str) -> tuple[str, str | None] | None:
    """What the word being completed is (profiles/adapters) and the --config given, or None
    when it is anything else (or a command line this reader does not follow: click's turn)."""
    if incomplete.startswith("-"):
        return None
    config: str | None = None
    rest = list(args)
    while rest and rest[0].startswith("-"):  # the top-level options
        word = rest.pop(0)
        name, eq, value = word.partition("=")
        if name not in GLOBAL_OPTIONS:
            return None
        if GLOBAL_OPTIONS[name] and not eq:
            if not rest:
                return None  # completing the option's own value
            value = rest.pop(0)
        if name == "--config":
            config = value
    if not rest:
        return None
    path = tuple(rest[:2]) if rest[0] in GROUPS else tuple(rest[:1])
    after = rest[len(path):]
    slots = SLOTS.get(path)
    if slots is None:
        return None
    if after and after[-1].startswith("-"):  # an option's value?
        for spellings, kind in slots.items():
            if after[-1] in spellings.split("|"):
                return kind, config
        return None
    if any(w.startswith("-") for w in after):
        return None  # options (and their values) before it: click knows which take values
    if "ARG" in slots and not after:
        return slots["ARG"], config
    if "ARGS" in slots:
        return slots["ARGS"], config
    return None


def find_config(config: str | None, cwd: str) -> str | None:
    """The profiles file as punie.config.loader.find_config picks it; None when none is found.
    Raises LookupError for an explicit path that is not a file (click's path then answers)."""
    explicit = config or os.environ.get(CONFIG_ENV)
    if explicit:
        path = os.path.join(cwd, os.path.expanduser(explicit))
        if not os.path.isfile(path):
            raise LookupError(explicit)
        return path
    directory = cwd
    while True:
        if os.path.isfile(candidate := os.path.join(directory, CONFIG_NAME)):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def names(kind: str, config: str | None, cwd: str) -> list[str] | None:
    """The names to offer, or None when this reader cannot tell (click's path answers)."""
    try:
        found = find_config(config, cwd)
    except (LookupError, OSError):
        return None
    if kind == "profiles":
        if found is None:
            return None  # the built-in profiles: click's path knows them
        import tomllib  # only here: the adapters' TAB does not pay for it

        try:
            with open(found, "rb") as fh:
                data = tomllib.loads(fh.read().decode("utf-8-sig"))
        except (OSError, ValueError, RecursionError):
            return None
        profiles = data.get("profiles")
        if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
            return None
        return list(profiles)
    root = os.path.join(os.path.dirname(os.path.abspath(found)) if found else cwd, ADAPTERS_DIR)
    try:
        with os.scandir(root) as entries:
            found_names = sorted(e.name for e in entries if os.path.isfile(os.path.join(e.path, "adapter_config.json")))
    except OSError:
        found_names = []
    return [*found_names, *ADAPTER_ALIASES]


def format_item(shell: str, value: str) -> str:
    """One completion as click's shell class writes a plain item without help."""
    return f"plain\n{value}\n_" if shell == "zsh" else f"plain,{value}"


def answer(environ: dict[str, str] | os._Environ[str] | None = None, cwd: str | None = None) -> str | None:
    """The completion output for the shell when this reader can give it, else None."""
    environ = os.environ if environ is None else environ
    shell, _, instruction = environ.get(COMPLETE_VAR, "").partition("_")
    if instruction != "complete":
        return None
    parsed = completion_args(shell, environ)
    if parsed is None:
        return None
    slot = slot_of(*parsed)
    if slot is None:
        return None
    kind, config = slot
    offered = names(kind, config, os.path.abspath(cwd or os.getcwd()))
    if offered is None:
        return None
    incomplete = parsed[1]
    return "\n".join(format_item(shell, n) for n in offered if n.startswith(incomplete))


def complete_and_exit() -> None:
    """Print the answer and exit 0 when there is one (as click does); else return."""
    try:
        text = answer()
    except Exception:  # never a traceback into the shell: click's path answers instead
        return
    if text is not None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        raise SystemExit(0)

"""Generated tool-calling training data: templates with varied phrasings, paths, file types and commands.

`generate_rows` writes mlx_lm chat+tools rows with the agent's system prompt and
tools (those of the shipped eval suite, which a test keeps equal to the agent's).
Each row ends with the one assistant message it teaches (train with
``--mask-prompt``, so only that message is learnt):

- a tool call for a request (read, list, search, write, run), paths copied from
  the prompt: plain names, nested paths, names with spaces, quoted arguments;
- the final answer after a tool's result (which repeats what the result says and
  invents nothing), including "read X and tell me Y" answers taken from the file;
- the second call of a two-step request (list a folder, then read the file the
  listing shows);
- a plain answer to a question that needs no tool.

No row's prompt is an eval prompt or nearly one (`is_held_out`): the suite's
prompts and the README's two prompts are held out, so a score on them measures
the adapter, not its memory.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Prompts a trained adapter is judged on outside the suite (README, tests/training/test_tool_calling_adapter.py).
README_PROMPTS = (
    "List the files in the adapters directory.",
    "Read the file punie.toml and tell me the default profile",
)
#: Prompts at least this similar (difflib ratio, normalised text) to a held-out prompt are not emitted.
NEAR = 0.85

DIRS = ["src", "lib", "docs", "tests", "scripts", "examples", "config", "app", "bin", "tools", "assets", "data",
        "models", "adapters", "notebooks", "pkg", "cmd", "internal", "static", "templates", "migrations", "vendor",
        "build", "web", "api", "utils", "plugins", "schemas", "benchmarks", "packages", "deploy", "infra", "fixtures",
        "handlers", "services", "components", "styles", "images", "locales", "proto", "reports", "samples", "logs",
        "public", "server", "client", "core", "db", "jobs", "cli", "helpers"]
SPACED_DIRS = ["old files", "meeting notes", "test data", "design docs", "my scripts", "backup 2024"]
STEMS = ["main", "app", "utils", "config", "settings", "server", "client", "models", "views", "index", "helpers",
         "parser", "runner", "setup", "cli", "api", "routes", "schema", "core", "worker", "handler", "service",
         "logger", "cache", "auth", "database", "notes", "todo", "report", "deploy", "build", "style", "types"]
EXTS = ["py", "md", "txt", "toml", "json", "yaml", "yml", "js", "ts", "css", "html", "sh", "sql", "rs", "go", "cfg",
        "ini", "rb", "java", "c", "h"]
BARE_FILES = ["README.md", "LICENSE", "Makefile", "Dockerfile", "CONTRIBUTING.md", "requirements.txt", "setup.py",
              "tox.ini", "Cargo.toml", "go.mod", "tsconfig.json", ".env.example", ".editorconfig", "Procfile",
              "docker-compose.yml", "NOTICE", "AUTHORS", "justfile", "pyproject.toml", "punie.toml", "manage.py"]
PATTERNS = ["TODO", "FIXME", "HACK", "XXX", "print(", "import os", "logger", "raise ValueError", "async def",
            "deprecated", "password", "localhost", "api_key", "def test_", "class ", "return None", "assert",
            "subprocess", "open(", "json.loads", "retry", "timeout", "version", "__init__", "main()", "self.cache",
            "NotImplementedError", "console.log", "fetch(", "SELECT", "unwrap()", "panic!", "err != nil"]
COMMANDS = ["pytest", "pytest -q", "pytest tests/unit", "make", "make test", "make lint", "ls -la", "ls", "git log -5",
            "git diff", "git branch", "npm install", "npm run build", "cargo build", "cargo test", "go test ./...",
            "python -m pip list", "ruff check .", "mypy src", "tox -e py311", "uname -a", "df -h", "whoami",
            "cat /etc/os-release", "wc -l README.md", "python manage.py migrate", "docker ps", "node --version",
            "pip freeze", "black --check .", "echo hello", "date", "pwd", "tree -L 2", "du -sh src"]
WRITE_TEXTS = ["hello", "done", "TODO: write docs", "# Title", "version 1.2.3", "ok", "print('hi')", "x = 1",
               "Remember the milk", "name: demo", "[section]", "#!/bin/sh", "release notes", "fixed the bug",
               "42", "first line", "draft", "export PORT=8000", "{}", "hello from punie"]

READ_TEMPLATES = ["Read {p}.", "Show me {p}.", "Open {p}.", "What's in {p}?", "Can you open {p}?",
                  "Please read {p}.", "Print the contents of {p}.", "Let me see {p}.", "Cat {p} for me.",
                  "Show the file {p}.", "I want to read {p}.", "Display the contents of {p}.",
                  "Could you show me what {p} says?", "Read the file {p}.", "Open the file {p} please.",
                  "What does {p} say?", "Give me the contents of {p}.", "read {p}", "show {p}",
                  "Take a look at {p}.", "Have a look at the file {p}."]
ASK_TEMPLATES = ["Read {p} and tell me the {k}.", "What is the {k} in {p}?", "Open {p}: what is the {k}?",
                 "Check {p} and tell me its {k}.", "Look at {p} and find the {k}.",
                 "Read the file {p} and tell me what {k} it sets", "Which {k} does {p} set?"]
LIST_TEMPLATES = ["List the files in {d}.", "What's in the {d} directory?", "Show me the {d} folder.",
                  "List {d}.", "Which files are in {d}?", "What files does {d} contain?", "ls {d}",
                  "Show the contents of the {d} directory.", "List everything in {d}/.",
                  "What is inside {d}?", "Can you list the {d} folder?", "Give me a listing of the {d} directory.",
                  "Show what files are under {d}.", "Please list the files of {d}.", "What's under {d}/?",
                  "List the files in the {d} folder.", "Tell me which files {d} has."]
ROOT_LIST = ["List the files.", "What files are here?", "Show me the project files.", "List the workspace.",
             "What is in this project?", "List all files in the repository.", "Which files does this repo have?"]
SEARCH_TEMPLATES = ["Search for {t}.", "Find {t} in the code.", "Where does {t} appear?", "Grep for {t}.",
                    "Look for {t}.", "Search the code for {t}.", "Find every use of {t}.", "Which files mention {t}?",
                    "Find occurrences of {t}.", "search {t}"]
SEARCH_IN_TEMPLATES = ["Search for {t} in {d}.", "Find {t} under {d}.", "Grep {d} for {t}.",
                       "Look for {t} in the {d} folder.", "Where is {t} used in {d}?"]
WRITE_TEMPLATES = ["Write {c} to {p}.", "Create {p} with {c}.", "Save {c} into {p}.", "Put {c} in {p}.",
                   "Make a file {p} containing {c}.", "Write the text {c} into {p}.",
                   "Create a file {p} that says {c}.", "Overwrite {p} with {c}.", "Store {c} in the file {p}."]
RUN_TEMPLATES = ["Run {c}.", "Execute {c}.", "Please run {c}.", "Run the command {c}.", "Can you run {c}?",
                 "Execute {c} for me.", "Start {c}.", "Run {c} in the project.", "$ {c}", "Use the shell: {c}"]
TWO_STEP_TEMPLATES = ["Look in {d} and read the {k} file.", "Find the {k} file in {d} and show it to me.",
                      "Check what {d} contains, then open the {k} file.", "List {d} and read the {k} file there.",
                      "What {k} file is in {d}? Read it."]
KINDS = {"py": "Python", "md": "Markdown", "json": "JSON", "yaml": "YAML", "toml": "TOML", "sh": "shell",
         "sql": "SQL", "html": "HTML", "css": "CSS", "txt": "text", "js": "JavaScript"}
PLAIN = [
    ("What is a Python decorator?", "A decorator is a function that takes a function and returns a new one, "
     "used with @name to add behaviour such as logging or caching."),
    ("Hi there!", "Hello! I am Punie, a coding agent. Ask me about your project's files."),
    ("Good morning.", "Good morning! What would you like to do in the project?"),
    ("What is 7 times 6?", "42."),
    ("How much is 10 minus 3?", "7."),
    ("Explain recursion in one sentence.", "Recursion is when a function solves a problem by calling itself on "
     "smaller parts of it until a simple case is reached."),
    ("What is the capital of Italy?", "Rome."),
    ("Thank you!", "You're welcome."),
    ("That's great, thanks.", "Glad it helped."),
    ("What is git used for?", "Git is a version control system: it records changes to files and lets people "
     "work on the same code together."),
    ("Which is faster, a set lookup or a list lookup in Python?", "A set lookup: it is O(1) on average, a list "
     "lookup is O(n)."),
    ("How do I print in Python?", "Use print(), for example print(\"hello\")."),
    ("What is a unit test?", "A small automated test that checks one piece of code, such as a function, on its own."),
    ("Can you explain what an API is?", "An API is an interface that lets programs talk to each other through "
     "defined requests and responses."),
    ("What's the difference between git pull and git fetch?", "git fetch downloads new commits; git pull fetches "
     "and then merges them into your branch."),
    ("Tell me a fun fact about octopuses.", "An octopus has three hearts."),
    ("Who wrote Hamlet?", "William Shakespeare."),
    ("What language is this agent written in?", "Punie is written in Python."),
    ("Is Python compiled or interpreted?", "CPython compiles source to bytecode and interprets that bytecode."),
    ("What is a dictionary in Python?", "A mapping from keys to values, written {\"key\": \"value\"}."),
    ("How are you today?", "I'm doing well, thanks. What can I do for you?"),
    ("What is the boiling point of water?", "100 °C at sea level."),
    ("Say goodbye.", "Goodbye!"),
    ("Explain what a variable is.", "A variable is a name that refers to a value stored in memory."),
    ("Define a linked list briefly.", "A linked list is a sequence of nodes where each node points to the next."),
    ("What's 15 divided by 3?", "5."),
    ("Which year did the first moon landing happen?", "1969."),
    ("What is an environment variable?", "A named value set in a process's environment, read by programs, "
     "such as PATH or HOME."),
]
ACRONYMS = {"HTTP": "HyperText Transfer Protocol", "JSON": "JavaScript Object Notation",
            "CPU": "Central Processing Unit",
            "SQL": "Structured Query Language", "RAM": "Random Access Memory", "URL": "Uniform Resource Locator",
            "CSS": "Cascading Style Sheets", "HTML": "HyperText Markup Language", "GPU": "Graphics Processing Unit",
            "YAML": "YAML Ain't Markup Language", "TCP": "Transmission Control Protocol", "DNS": "Domain Name System",
            "SSH": "Secure Shell", "CLI": "Command-Line Interface", "IDE": "Integrated Development Environment",
            "CI": "Continuous Integration", "OOP": "Object-Oriented Programming", "REST": "Representational State "
            "Transfer", "UTF": "Unicode Transformation Format", "PDF": "Portable Document Format"}
ACRONYM_TEMPLATES = ["What is {x} short for?", "Expand the acronym {x}.", "{x} means what, exactly?",
                     "Spell out {x} for me."]
MATH_TEMPLATES = [("How much is {a} times {b}?", "*"), ("Compute {a} minus {b}.", "-"),
                  ("Add {a} and {b} for me.", "+"), ("What do you get when you multiply {a} by {b}?", "*")]
GREETINGS = [("Hey!", "Hi! What can I do in your project?"), ("Thanks a lot.", "You're welcome!"),
             ("Bye for now.", "Goodbye!"), ("Nice work.", "Thank you!"), ("Who made you?", "I am Punie, an "
             "open-source coding agent running on a local model."), ("Are you there?", "Yes, I'm here.")]
#: Values found in generated config files, asked about in "read X and tell me Y" prompts.
CONFIG_KEYS = [("default profile", "default_profile", ["dev", "demo", "local", "prod", "fast"]),
               ("port", "port", ["8000", "8080", "5000", "3000", "9090"]),
               ("version", "version", ["1.2.0", "0.4.1", "2.0.0", "3.1.4"]),
               ("name", "name", ["orchard", "punie-demo", "widgets", "atlas", "pebble"]),
               ("log level", "log_level", ["info", "debug", "warning"]),
               ("timeout", "timeout", ["30", "60", "5"]),
               ("python version", "python_version", ["3.11", "3.12", "3.10"])]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w/. -]", "", text.lower())).strip(" .")


def is_held_out(prompt: str, held_out: Iterable[str], near: float = NEAR) -> bool:
    """Whether ``prompt`` is one of ``held_out`` or nearly (normalised, difflib ratio >= ``near``)."""
    mine = _norm(prompt)
    for other in held_out:
        theirs = _norm(other)
        if mine == theirs:
            return True
        matcher = difflib.SequenceMatcher(None, mine, theirs)
        if matcher.real_quick_ratio() >= near and matcher.quick_ratio() >= near and matcher.ratio() >= near:
            return True
    return False


class _Gen:
    """One generator run: a seeded random source and the builders of each kind of row."""

    def __init__(self, rng: random.Random, system: str | None, tools: list[dict[str, Any]]):
        self.rng = rng
        self.system = system
        self.tools = tools
        self.calls = 0

    # -- values
    def dir(self) -> str:
        r = self.rng.random()
        if r < 0.55:
            return self.rng.choice(DIRS)
        if r < 0.93:
            return "/".join(self.rng.sample(DIRS, self.rng.choice([2, 2, 3])))
        return self.rng.choice(SPACED_DIRS)

    def file(self, ext: str | None = None) -> str:
        if ext is None and self.rng.random() < 0.2:
            return self.rng.choice(BARE_FILES)
        name = f"{self.rng.choice(STEMS)}.{ext or self.rng.choice(EXTS)}"
        if self.rng.random() < 0.05:
            name = name.replace(".", " v2.", 1)
        return name

    def path(self, ext: str | None = None) -> str:
        name = self.file(ext)
        return name if self.rng.random() < 0.4 else f"{self.dir()}/{name}"

    def quoted(self, text: str) -> str:
        if " " in text or self.rng.random() < 0.25:
            return self.rng.choice(['"{}"', "'{}'", "`{}`"]).format(text)
        return text

    # -- messages
    def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{self.calls}", "type": "function", "function": {"name": name, "arguments": args}}]}

    def result(self, name: str, text: str) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": f"call_{self.calls}", "name": name, "content": text}

    def row(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return {"messages": head + messages, "tools": self.tools}

    # -- contents
    def content(self, path: str) -> str:
        ext = path.rsplit(".", 1)[-1] if "." in Path(path).name else ""
        stem = Path(path).stem.replace(" ", "_")
        return {
            "py": f'"""The {stem} module."""\n\n\ndef {stem}():\n    return {self.rng.randint(1, 99)}\n',
            "md": f"# {stem.title()}\n\nNotes about {stem}.\n",
            "json": json.dumps({"name": stem, "version": f"1.{self.rng.randint(0, 9)}.0"}, indent=2) + "\n",
            "toml": f'[tool.{stem}]\nenabled = true\nlevel = {self.rng.randint(1, 5)}\n',
            "yaml": f"{stem}:\n  enabled: true\n  replicas: {self.rng.randint(1, 5)}\n",
            "sh": f"#!/bin/sh\nset -e\necho {stem}\n",
        }.get(ext, f"{stem} {self.rng.choice(['v1', 'draft', 'notes', 'data'])}\n")

    def listing(self, folder: str, k: int | None = None) -> list[str]:
        k = k or self.rng.randint(2, 5)
        names = sorted({self.file() for _ in range(k)})
        return [f"{folder}/{n}" if folder != "." else n for n in names]

    # -- rows
    def read(self) -> list[dict[str, Any]]:
        p = self.path()
        prompt = self.rng.choice(READ_TEMPLATES).format(p=self.quoted(p))
        user = {"role": "user", "content": prompt}
        text = self.content(p)
        first_line = text.strip().splitlines()[0]
        answer = f"{p} starts with: {first_line}" if len(text.splitlines()) > 1 else f"{p} says: {first_line}"
        call = self.call("read_file", {"path": p})
        return [self.row([user, call]),
                self.row([user, call, self.result("read_file", text), {"role": "assistant", "content": answer}])]

    def ask(self) -> list[dict[str, Any]]:
        label, key, values = self.rng.choice(CONFIG_KEYS)
        value = self.rng.choice(values)
        ext = self.rng.choice(["toml", "json", "yaml", "cfg"])
        p = self.rng.choice([f"{self.rng.choice(STEMS)}.{ext}", f"{self.dir()}/{self.rng.choice(STEMS)}.{ext}"])
        prompt = self.rng.choice(ASK_TEMPLATES).format(p=p, k=label)
        other = self.rng.choice([k for k in CONFIG_KEYS if k[1] != key])
        lines = {"toml": [f'{key} = "{value}"', f'{other[1]} = "{other[2][0]}"'],
                 "cfg": [f"{key} = {value}", f"{other[1]} = {other[2][0]}"],
                 "yaml": [f"{key}: {value}", f"{other[1]}: {other[2][0]}"]}.get(ext)
        text = ("\n".join(lines) + "\n") if lines else json.dumps({key: value, other[1]: other[2][0]}, indent=2)
        user = {"role": "user", "content": prompt}
        call = self.call("read_file", {"path": p})
        answer = f"The {label} is {value}."
        return [self.row([user, call]),
                self.row([user, call, self.result("read_file", text), {"role": "assistant", "content": answer}])]

    def list(self) -> list[dict[str, Any]]:
        if self.rng.random() < 0.12:
            d, prompt = ".", self.rng.choice(ROOT_LIST)
        else:
            d = self.dir()
            prompt = self.rng.choice(LIST_TEMPLATES).format(d=self.quoted(d))
        user = {"role": "user", "content": prompt}
        call = self.call("list_files", {"path": d})
        files = self.listing(d)
        answer = ("The project has: " if d == "." else f"{d} contains: ") + ", ".join(files) + "."
        return [self.row([user, call]),
                self.row([user, call, self.result("list_files", "\n".join(files)),
                          {"role": "assistant", "content": answer}])]

    def search(self) -> list[dict[str, Any]]:
        t = self.rng.choice(PATTERNS)
        args: dict[str, Any] = {"pattern": t}
        if self.rng.random() < 0.4:
            d = self.dir()
            args["path"] = d
            prompt = self.rng.choice(SEARCH_IN_TEMPLATES).format(t=self.quoted(t), d=d)
        else:
            prompt = self.rng.choice(SEARCH_TEMPLATES).format(t=self.quoted(t))
        user = {"role": "user", "content": prompt}
        call = self.call("search", args)
        hits = [f"{self.path('py')}:{self.rng.randint(1, 300)}: {t}" for _ in range(self.rng.randint(1, 3))]
        answer = f"{t} appears in " + ", ".join(h.split(":")[0] for h in hits) + "."
        return [self.row([user, call]),
                self.row([user, call, self.result("search", "\n".join(hits)),
                          {"role": "assistant", "content": answer}])]

    def write(self) -> list[dict[str, Any]]:
        p, c = self.path(), self.rng.choice(WRITE_TEXTS)
        prompt = self.rng.choice(WRITE_TEMPLATES).format(p=p, c=self.quoted(c))
        user = {"role": "user", "content": prompt}
        call = self.call("write_file", {"path": p, "content": c})
        result = f"wrote {len(c.encode())} bytes to {p}"
        return [self.row([user, call]),
                self.row([user, call, self.result("write_file", result),
                          {"role": "assistant", "content": f"Done: {p} now contains {c}."}])]

    def run(self) -> list[dict[str, Any]]:
        c = self.rng.choice(COMMANDS)
        prompt = self.rng.choice(RUN_TEMPLATES).format(c=self.quoted(c) if self.rng.random() < 0.3 else c)
        user = {"role": "user", "content": prompt}
        call = self.call("run_command", {"command": c})
        output = f"exit code 0\n{c.split()[0]}: ok"
        return [self.row([user, call]),
                self.row([user, call, self.result("run_command", output),
                          {"role": "assistant", "content": f"`{c}` finished with exit code 0."}])]

    def two_step(self) -> list[dict[str, Any]]:
        d = self.dir()
        ext = self.rng.choice(list(KINDS))
        kind = KINDS[ext]
        target = f"{d}/{self.rng.choice(STEMS)}.{ext}"
        others = [f for f in self.listing(d, 3) if not f.endswith("." + ext)]
        files = sorted({target, *others})
        prompt = self.rng.choice(TWO_STEP_TEMPLATES).format(d=d, k=kind)
        user = {"role": "user", "content": prompt}
        first = self.call("list_files", {"path": d})
        listed = self.result("list_files", "\n".join(files))
        second = self.call("read_file", {"path": target})
        text = self.content(target)
        done = {"role": "assistant", "content": f"{target} starts with: {text.strip().splitlines()[0]}"}
        return [self.row([user, first]), self.row([user, first, listed, second]),
                self.row([user, first, listed, second, self.result("read_file", text), done])]

    def plain(self) -> list[dict[str, Any]]:
        r = self.rng.random()
        if r < 0.45:
            question, answer = self.rng.choice(PLAIN + GREETINGS)
        elif r < 0.7:
            x = self.rng.choice(sorted(ACRONYMS))
            question, answer = self.rng.choice(ACRONYM_TEMPLATES).format(x=x), f"{x} stands for {ACRONYMS[x]}."
        else:
            template, op = self.rng.choice(MATH_TEMPLATES)
            a, b = self.rng.randint(3, 60), self.rng.randint(2, 12)
            value = {"*": a * b, "-": a - b, "+": a + b}[op]
            question, answer = template.format(a=a, b=b), f"{value}."
        return [self.row([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])]


#: Kinds of rows and their share of the examples.
MIX = (("read", 0.18), ("ask", 0.1), ("list", 0.18), ("search", 0.11), ("write", 0.09), ("run", 0.11),
       ("two_step", 0.08), ("plain", 0.15))


def generate_rows(count: int, *, seed: int = 0, system: str | None = None,
                  tools: list[dict[str, Any]] | None = None, held_out: Iterable[str] = ()) -> list[dict[str, Any]]:
    """About ``count`` rows (a request's rows stay together), none whose prompt is (near) a held-out one."""
    rng = random.Random(seed)
    gen = _Gen(rng, system, list(tools or []))
    held = list(held_out)
    kinds, weights = zip(*MIX, strict=True)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < count and attempts < count * 20:
        attempts += 1
        kind = rng.choices(kinds, weights)[0]
        group = getattr(gen, kind)()
        prompt = next(m["content"] for m in group[0]["messages"] if m["role"] == "user")
        key = json.dumps(group[-1]["messages"], sort_keys=True)
        if (key in seen and kind != "plain") or is_held_out(prompt, held):
            continue
        seen.add(key)
        rows.extend(group)
    return rows


def user_prompts(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The user prompts of rows (what must never be an eval prompt)."""
    return [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]


def generate_dataset(out_dir: str | Path, *, train: int = 1200, valid: int = 120, seed: int = 0,
                     suite: str | Path | None = None) -> dict[str, int]:
    """Write ``train.jsonl`` and ``valid.jsonl`` for the suite's system prompt and tools, holding out its
    prompts and the README's; return the row counts."""
    from punie.training.suite import load_suite

    loaded = load_suite(suite)
    held = [c.prompt for c in loaded.cases] + list(README_PROMPTS)
    rows = generate_rows(train + valid, seed=seed, system=loaded.system, tools=loaded.tools, held_out=held)
    # Valid rows are requests of their own (the split keeps a request's rows together).
    cut = len(rows) - valid
    while 0 < cut < len(rows) and rows[cut]["messages"][1] == rows[cut - 1]["messages"][1]:
        cut += 1
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:cut]), ("valid", rows[cut:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part),
                                            encoding="utf-8")
    return {"train": cut, "valid": len(rows) - cut}

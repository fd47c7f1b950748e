"""Record `punie up --dry-run --format json` of every shipped and example profile (issue 22's
"behaviour unchanged" check): ``python scripts/dryrun_snapshot.py OUT_DIR`` writes one JSON file per
profile, with the temp project dir and the interpreter normalised so two runs compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA = """
[profiles.m-url]
server.url = "http://127.0.0.1:9"

[profiles.m-restart]
model = "builtin:smollm2-135m-instruct"
server.port = 8123
server.restart = "on-failure"
server.max_restarts = 5
server.restart_backoff = 0.5
server.ready_timeout = 60
server.liveness_interval = 2
server.liveness_failures = 4

[profiles.v]
model = "builtin:smollm2-135m-instruct"
server.backend = "vllm"
server.port = 8124

[profiles.v-url]
server.backend = "vllm"
server.url = "http://127.0.0.1:9"

[profiles.v-restart]
extends = "v"
server.restart = "on-failure"
server.ready_timeout = 300

[profiles.v2]
extends = "v"

[groups.g]
profiles = ["v", "v2"]
"""


def _punie(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUNIE_") or k == "PUNIE_VLLM_PYTHON"}
    return subprocess.run([sys.executable, "-m", "punie", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def _normalise(text: str, project: Path) -> str:
    for real in {str(project.resolve()), str(project)}:
        text = text.replace(real, "<PROJECT>")
    return text.replace(sys.executable, "<PYTHON>")


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        listed = _punie(["profiles", "--format", "json"], project)
        names = [p["name"] for p in json.loads(listed.stdout)["profiles"]] if listed.returncode == 0 else []
        extra = project / "extra.toml"  # profiles beyond the shipped ones: vLLM, external servers, restart tables
        extra.write_text(EXTRA)
        if not names:
            print(listed.stdout, listed.stderr, file=sys.stderr)
            return 1
        targets = [("shipped", name, []) for name in names]
        for example in sorted((ROOT / "examples").glob("*.toml")):
            cfg = _punie(["--config", str(example), "profiles", "--format", "json"], project)
            for p in json.loads(cfg.stdout)["profiles"]:
                targets.append((example.stem, p["name"], ["--config", str(example)]))
        for name in ("m-url", "m-restart", "v-url"):
            targets.append(("extra", name, ["--config", str(extra)]))
        # the builtin model is mlx-quantized, which vLLM's check refuses: plan these without the check
        for name in ("v", "v-restart"):
            targets.append(("extra", name, ["--config", str(extra), "--no-check"]))
        targets.append(("extra", "group-g", ["--config", str(extra), "--no-check", "--group", "g"]))
        for origin, name, pre in targets:
            config, options = pre[:2], pre[2:]
            up = [*config, "up", *options, "--dry-run", "--format", "json", *([] if "--group" in pre else [name])]
            run = _punie(up, project)
            record = {"argv": ["punie", *up],
                      "returncode": run.returncode, "stdout": _normalise(run.stdout, project),
                      "stderr": _normalise(run.stderr, project)}
            (out / f"{origin}--{name}.json").write_text(json.dumps(record, indent=2) + "\n")
            print(origin, name, run.returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

"""A stand-in agent: run commands while `punie up` keeps its server, record what they printed, exit.

Run by `punie up` in the agent's place (so it starts only once the server is ready and its
canaries passed): ``python run_commands.py OUT_JSON COMMANDS_JSON``, COMMANDS_JSON a list of
{"name", "argv"}. Each command runs to its end with stdin closed; OUT_JSON gets
{name: {"rc", "stdout", "stderr"}} (written atomically, once all ran).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main() -> None:
    out, commands = sys.argv[1], json.loads(sys.argv[2])
    results = {}
    for command in commands:
        proc = subprocess.run(command["argv"], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=False)
        results[command["name"]] = {"rc": proc.returncode, "stdout": proc.stdout[-4000:],
                                    "stderr": proc.stderr[-8000:]}
    with open(out + ".tmp", "w") as fh:
        json.dump(results, fh)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()

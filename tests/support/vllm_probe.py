"""A stand-in agent for vLLM tests: what a real agent would ask, recorded, then exit.

Run by `punie up` in the agent's place (so it starts only once the server is
ready): ``python vllm_probe.py BASE_URL OUT_JSON PROMPT_IDS_JSON [--ask=CONFIG|PROFILE|PORT] MODEL_ID...``.
For each model id it asks ``/v1/completions`` for the top-5 logprobs of the first
token (ids as ``token_id:N``), lists ``/v1/models``, and records every process
descending from the vLLM server (found by the port in its command line), so the
test can check they are all gone after the stop.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from urllib.parse import urlsplit


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=120) as resp:
        return json.loads(resp.read())


def _procs() -> dict[int, tuple[int, str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry)] = (ppid, cmd)
    return out


def main() -> None:
    base_url, out, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    ask = sys.argv[4].removeprefix("--ask=") if sys.argv[4].startswith("--ask=") else None
    models = sys.argv[5:] if ask else sys.argv[4:]
    port = str(urlsplit(base_url).port)
    result: dict = {"logprobs": {}}
    for model in models:
        data = _post(base_url + "/completions", {
            "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5,
            "return_tokens_as_token_ids": True,
        })
        result["logprobs"][model] = data["choices"][0]["logprobs"]["top_logprobs"][0]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base_url + "/models", timeout=60) as resp:
        result["models"] = json.loads(resp.read())["data"]
    if ask:  # CONFIG|PROFILE|PORT: one real agent turn, `punie ask --profile PROFILE`
        import subprocess

        config, profile, ask_port = ask.split("|")
        proc = subprocess.run([sys.executable, "-m", "punie", "--config", config, "ask", "--profile", profile,
                               "--json", "List the files."], capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL, check=False,
                              env={**os.environ, "PUNIE_SERVER__PORT": ask_port})
        result["ask"] = {"rc": proc.returncode, "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}
    procs = _procs()
    servers = [pid for pid, (_, cmd) in procs.items()
               if "vllm.entrypoints.openai.api_server" in cmd and f"--port {port}" in cmd and "guard" not in cmd]
    tree = set(servers)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in procs.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    result["server_pids"] = servers
    result["server_tree"] = sorted(tree)
    with open(out + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(out + ".tmp", out)
    if os.environ.get("PROBE_HOLD") == "1":  # stay up: the test kills `punie up` itself
        import time

        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()

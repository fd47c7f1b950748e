"""Run under ``mlx.launch``: load a model with mlx_lm's ``sharded_load`` and answer one prompt (an oracle).

``python sharded_probe.py MODEL_DIR pipeline|tensor`` prints, on every rank, one JSON line
``{"rank": R, "size": N, "ok": true, "top": [[id, logprob], ...]}`` (the top-5 first-token
logprobs of a fixed prompt) or ``{"rank": R, "ok": false, "error": "..."}``: what mlx_lm itself
makes of the model and the sharding (tests/checks/test_sharding_mlx.py compares Punie's findings with it).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import mlx.core as mx
    from mlx_lm.utils import sharded_load

    model_dir, sharding = sys.argv[1], sys.argv[2]
    group = mx.distributed.init()
    rank, size = group.rank(), group.size()
    try:
        if sharding == "pipeline":
            model, tokenizer = sharded_load(model_dir, pipeline_group=group)
        else:
            model, tokenizer = sharded_load(model_dir, tensor_group=group)
        ids = list(tokenizer.encode("What is the capital of France?"))
        logits = model(mx.array(ids)[None])[0, -1, :].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        order = mx.argsort(-logprobs)[:5].tolist()
        top = [[int(i), float(logprobs[i].item())] for i in order]
        print(json.dumps({"rank": rank, "size": size, "ok": True, "top": top}), flush=True)
    except Exception as exc:  # the oracle's answer, not a failure of the probe
        print(json.dumps({"rank": rank, "size": size, "ok": False, "error": f"{type(exc).__name__}: {exc}"}),
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

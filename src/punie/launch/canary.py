"""Is the server answering with the adapter? Compare its first-token logprobs with the canary (pure).

The readiness probe of a plan with a canary is the canary's prompt sent to
``/v1/completions`` with ``max_tokens`` 1, temperature 0 and the top-k
logprobs asked for. The answer's top-k is compared with the two recorded
distributions (`punie.adapters.canary.Canary`):

- close to the adapter's      -> ``adapter-active``
- close to the base's         -> ``base`` (the server ignores the adapter: refuse to start the agent)
- close to neither            -> ``neither`` (warn with the distances: another quantization of
                                 the base, another engine version, another adapter)
- adapter and base too close  -> ``indistinct`` (this canary cannot tell them apart: warn)
- no logprobs in the answer   -> ``no-logprobs`` (cannot tell: warn)
- the model id is not served  -> ``not-served`` (vLLM without that LoRA: refuse, see `ExpectedCanary.not_served`)

The distance between two top-k lists is the largest logprob difference over
the tokens either list names, where a token missing from one list counts for
what is at least known: it is below that list's smallest logprob. So it is a
lower bound of the largest difference between the two full distributions and
exact when both lists name the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from punie.adapters.canary import Canary, TopToken

#: Largest distance (nats) at which the server's answer still matches a recorded distribution.
#: The same engine on the same weights agrees to ~1e-4 (prompt cache, batching, BLAS order);
#: vLLM (CPU, float32) serving the PEFT export answers within ~1e-6 nats of mlx_lm's recorded canary
#: on the tiny test model, its base id likewise of the recorded base. 0.05 leaves room for that, and
#: is far below what an adapter changes (the shipped tool-calling-v1 adapter moves the top token by
#: ~2 nats; tests/launch/test_canary_vllm.py's adapters 1.5 and 2.2).
MATCH_TOLERANCE = 0.05
#: Smallest distance between the adapter's and the base's distributions for the canary to be
#: able to tell them apart: twice the match tolerance, so the two match regions never overlap.
MIN_SEPARATION = 2 * MATCH_TOLERANCE

Verdict = Literal["adapter-active", "base", "neither", "indistinct", "no-logprobs", "not-served"]
#: How a top-k is keyed: by token id (mlx_lm.server, and vLLM asked for ``return_tokens_as_token_ids``)
#: or by decoded text (other OpenAI-style servers). A property of the answer, not of the backend.
Keying = Literal["id", "text"]


class ExpectedCanary(BaseModel):
    """What the readiness probe of a plan checks: the served adapter and its recorded canary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str = Field(description="The adapter directory the server should be applying.")
    canary: Canary
    model: str | None = Field(
        None, description="Model id sent with the probe: None for mlx_lm.server (its --adapter-path "
        "applies only without one); the LoRA's id on a vLLM server."
    )
    other_base: str | None = Field(
        None, description="Set when the canary was recorded on another base than the one served (say how): "
        "then no answer can prove the adapter absent, and a base-like answer is only a warning."
    )

    def request(self) -> tuple[str, dict[str, Any]]:
        """(path, body) of the probe, for `punie.launch.readiness.wait_ready`."""
        return probe_request(self.canary, model=self.model)

    def judge(self, data: Any) -> CanaryResult:
        """What the probe's answer says about the adapter."""
        result = replace(judge(self.canary, data, adapter=self.adapter), model=self.model)
        if self.other_base is None:
            return result
        verdict: Verdict = "neither" if result.verdict == "base" else result.verdict
        return replace(result, verdict=verdict, note=self.other_base)

    def not_served(self, detail: str) -> CanaryResult:
        """The server does not serve the probe's model id (``detail``: what it said): the adapter is not there."""
        return CanaryResult("not-served", self.adapter, model=self.model, detail=detail)


@dataclass(frozen=True)
class CanaryResult:
    """What the readiness probe proved (``verdict``), with the distances it was decided on."""

    verdict: Verdict
    adapter: str
    to_adapter: float | None = None
    to_base: float | None = None
    separation: float | None = None
    note: str | None = None  # why the comparison is weaker (recorded on another base)
    model: str | None = None  # the model id probed (a vLLM LoRA's id; None for mlx_lm.server)
    detail: str | None = None  # not-served: what the server said

    @property
    def refuse(self) -> bool:
        """True when the agent must not start: the server answers without the adapter."""
        return self.verdict in ("base", "not-served")

    @property
    def warn(self) -> bool:
        return self.verdict in ("neither", "indistinct", "no-logprobs")

    def message(self) -> str:
        """One line for the log and the status."""
        text = self._message()
        return f"{text} ({self.note})" if self.note else text

    def _message(self) -> str:
        d = _fmt
        on = f" on model id {self.model!r}" if self.model else ""
        if self.verdict == "not-served":
            return f"the server is answering without the adapter {self.adapter}: {self.detail}"
        if self.verdict == "adapter-active":
            return (f"adapter active: the canary matches {self.adapter}{on} (distance {d(self.to_adapter)}, "
                    f"base {d(self.to_base)})")
        if self.verdict == "base":
            return (f"the server is answering without the adapter {self.adapter}{on}: its first-token logprobs "
                    f"match the base model alone (distance {d(self.to_base)}; with the adapter they would be "
                    f"{d(self.to_adapter)} away)")
        if self.verdict == "neither":
            return (f"the canary of {self.adapter}{on} matches neither the adapter (distance {d(self.to_adapter)}) "
                    f"nor the base alone (distance {d(self.to_base)}), tolerance {MATCH_TOLERANCE:g}: another "
                    "quantization or version of the base, another engine, or another adapter?")
        if self.verdict == "indistinct":
            return (f"the canary of {self.adapter}{on} cannot tell the adapter from the base (they differ by "
                    f"{d(self.separation)} < {MIN_SEPARATION:g}): not verified")
        return f"the server returned no logprobs for the canary of {self.adapter}{on}: the adapter is not verified"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "adapter": self.adapter, "model": self.model,
                "distance_to_adapter": self.to_adapter,
                "distance_to_base": self.to_base, "separation": self.separation,
                "tolerance": MATCH_TOLERANCE, "note": self.note, "message": self.message()}


def _fmt(value: float | None) -> str:
    return "?" if value is None else ("inf" if math.isinf(value) else f"{value:.4f}")


def distance(expected: Mapping[str, float], observed: Mapping[str, float]) -> float:
    """Largest logprob difference over the tokens of both top-k maps (see the module docstring).

    ``inf`` when either map is empty.
    """
    if not expected or not observed:
        return math.inf
    floor_e, floor_o = min(expected.values()), min(observed.values())
    worst = 0.0
    for token, value in expected.items():
        other = observed.get(token)
        worst = max(worst, abs(value - other) if other is not None else max(0.0, value - floor_o))
    for token, value in observed.items():
        if token not in expected:
            worst = max(worst, max(0.0, value - floor_e))
    return worst


def keyed(tokens: Sequence[TopToken], keying: Keying) -> dict[str, float]:
    """A recorded top-k as the map an answer keyed by ``keying`` is compared with.

    mlx_lm.server (and vLLM asked for ``return_tokens_as_token_ids``) answers with token ids; other
    OpenAI-style servers with decoded texts, compared without the ambiguous ones (partial UTF-8).
    """
    if keying == "id":
        return {str(t.id): t.logprob for t in tokens}
    return {t.text: t.logprob for t in tokens if not _ambiguous(t.text)}


def classify(canary: Canary, observed: Mapping[str, float] | None, *, adapter: str,
             keying: Keying = "id") -> CanaryResult:
    """Decide what the server's top-k (``observed``, keyed as `keyed`) says about the adapter."""
    want, base = keyed(canary.adapter, keying), keyed(canary.base, keying)
    separation = distance(want, base)
    if not observed:
        return CanaryResult("no-logprobs", adapter, separation=separation)
    to_adapter, to_base = distance(want, observed), distance(base, observed)
    verdict: Verdict
    if separation < MIN_SEPARATION:
        verdict = "indistinct"
    elif to_adapter <= MATCH_TOLERANCE:
        verdict = "adapter-active"
    elif to_base <= MATCH_TOLERANCE:
        verdict = "base"
    else:
        verdict = "neither"
    return CanaryResult(verdict, adapter, to_adapter=to_adapter, to_base=to_base, separation=separation)


# --------------------------------------------------------------------------- the probe on the wire


def probe_request(canary: Canary, *, model: str | None = None) -> tuple[str, dict[str, Any]]:
    """(path under the OpenAI base URL, JSON body) of the canary probe.

    ``model`` None sends no model field (mlx_lm.server then uses ``--adapter-path``; any model
    name makes it serve the base alone). vLLM needs the LoRA's model id, and gets an integer
    ``logprobs`` (its completions API) where mlx_lm reads a bool ``logprobs`` and ``top_logprobs``.
    """
    body: dict[str, Any] = {"prompt": canary.prompt, "max_tokens": 1, "temperature": 0.0,
                            "logprobs": True, "top_logprobs": canary.top_k,
                            # vLLM: keys "token_id:N" instead of decoded texts, which are ambiguous
                            # for partial UTF-8 byte tokens (several decode to "" or "\ufffd").
                            "return_tokens_as_token_ids": True}
    if model is not None:
        body["model"] = model
        body["logprobs"] = canary.top_k
        body.pop("top_logprobs")
    return "/completions", body


def observed_top(data: Any) -> tuple[dict[str, float] | None, Keying]:
    """The first token's top logprobs in a completions answer, and which format it was in.

    mlx_lm.server: ``choices[0].logprobs.content[0].top_logprobs`` = [{"id", "token", "logprob"}]
    (keyed by id). OpenAI/vLLM completions: ``choices[0].logprobs.top_logprobs[0]`` = {text: logprob},
    or {"token_id:N": logprob} from vLLM asked for ids (keyed by id). None without logprobs.
    """
    try:
        logprobs = data["choices"][0].get("logprobs") or {}
    except (TypeError, KeyError, IndexError, AttributeError):
        return None, "id"
    if not isinstance(logprobs, dict):
        return None, "id"
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        top = content[0].get("top_logprobs") or []
        out = {str(t["id"]): float(t["logprob"]) for t in top
               if isinstance(t, dict) and "id" in t and isinstance(t.get("logprob"), int | float)}
        return (out or None), "id"
    tops = logprobs.get("top_logprobs")
    if isinstance(tops, list) and tops and isinstance(tops[0], dict):
        items = {str(k): float(v) for k, v in tops[0].items() if isinstance(v, int | float)}
        if items and all(k.startswith(_TOKEN_ID) for k in items):  # vLLM's return_tokens_as_token_ids
            return {k[len(_TOKEN_ID):]: v for k, v in items.items()}, "id"
        out = {k: v for k, v in items.items() if not _ambiguous(k)}
        return (out or None), "text"
    return None, "id"


_TOKEN_ID = "token_id:"


def _ambiguous(text: str) -> bool:
    """A decoded token text that several tokens share (partial UTF-8 bytes): not comparable by text."""
    return not text or "\ufffd" in text


def judge(canary: Canary, data: Any, *, adapter: str) -> CanaryResult:
    """Classify a completions answer (JSON) against the canary."""
    observed, keying = observed_top(data)
    return classify(canary, observed, adapter=adapter, keying=keying)

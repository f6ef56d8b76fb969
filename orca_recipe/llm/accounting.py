"""What a request cost: one `Completion` per sample, and a stage's `Usage`."""

from __future__ import annotations

from dataclasses import dataclass

from orca_recipe.llm.limits import estimate_prompt_tokens
from orca_recipe.llm.transport import Reply


@dataclass
class Completion:
    """One sample. For a sample that came out of an ``n=`` request, tokens and cost are its
    share of that request (so they sum to what was billed). A cache hit costs 0.0."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    cached: bool
    finish_reason: str | None

    def to_cache(self) -> dict:
        """What the request cache keeps of it (a hit is then free: no cost)."""
        return {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost": self.cost}

    @classmethod
    def from_cache(cls, v: dict) -> "Completion":
        return cls(text=v.get("text", ""), prompt_tokens=int(v.get("prompt_tokens") or 0),
                   completion_tokens=int(v.get("completion_tokens") or 0), cost=0.0, cached=True, finish_reason=v.get("finish_reason"))


@dataclass
class Usage:
    """Accounting for one stage. `requests` are paid API calls that returned a completion;
    `retries` failed attempts that were retried; `failures` requests given up on (LLMError);
    `cost` is None once any paid request had no known price."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0
    retries: int = 0
    failures: int = 0

    def add_cost(self, cost: float | None) -> None:
        if cost is None or self.cost is None:
            self.cost = None
        else:
            self.cost += cost

    def merge(self, other: "Usage") -> None:
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.retries += other.retries
        self.failures += other.failures
        self.add_cost(other.cost)


def split_reply(reply: Reply, messages: list[dict], price: tuple[float, float] | None) -> tuple[list[Completion], int, int, float | None]:
    """The reply as one `Completion` per choice, the request's tokens and cost split over them
    (so they sum back to the total); tokens the server did not report are estimated."""
    texts = reply.texts
    pt = reply.prompt_tokens if reply.prompt_tokens is not None else estimate_prompt_tokens(messages)
    ct = reply.completion_tokens if reply.completion_tokens is not None else sum(len(t) // 4 + 1 for t in texts)
    cost = pt * price[0] + ct * price[1] if price is not None else None
    k = len(texts)
    pts = [pt // k + (1 if i < pt % k else 0) for i in range(k)]
    weights = [len(t) + 1 for t in texts]
    total_w = sum(weights)
    cts = [ct * w // total_w for w in weights]
    cts[0] += ct - sum(cts)
    out = []
    for i in range(k):
        share = None
        if cost is not None:
            share = cost * ((pts[i] + cts[i]) / (pt + ct)) if (pt + ct) else cost / k
        out.append(Completion(text=texts[i], prompt_tokens=pts[i], completion_tokens=cts[i], cost=share,
                              cached=False, finish_reason=reply.finish_reasons[i]))
    return out, pt, ct, cost

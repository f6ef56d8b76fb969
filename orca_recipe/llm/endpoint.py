"""A model endpoint as the door sees it: where to send, how hard, and what it costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from orca_recipe.prices import batch_price, known_price

if TYPE_CHECKING:
    from orca_recipe.recipe.schema import ModelEndpoint

MAX_BACKOFF_S = 300.0  # default max_backoff_s: the longest wait before a retry

# Providers whose wire format is OpenAI's chat completions: with an api_base, the door talks to
# them itself (one pooled HTTP client), not through litellm.
OPENAI_COMPATIBLE = frozenset({"hosted_vllm", "openai", "custom_openai", "openai_like"})


@dataclass(frozen=True)
class Endpoint:
    """A resolved model endpoint (the runner builds it from a recipe `ModelEndpoint`)."""

    name: str                  # recipe key, e.g. "teacher"
    litellm_model: str         # e.g. "openai/gpt-4-turbo", "hosted_vllm/smollm2-135m-instruct"
    identity: str              # cache identity: model string @ api_base, or "local:<weights content>:<dtype>"
    api_base: str | None = None
    replicas: tuple[str, ...] = ()   # more api_bases serving the same model (the door spreads requests)
    api_key_env: str | None = None   # the NAME of the env var; the key is read at call time
    concurrency: int = 8
    rpm: int | None = None
    tpm: int | None = None
    price: tuple[float, float] | None = None  # USD per token (input, output); None: unknown
    timeout_s: float = 120     # a deadline for the whole attempt: connect, wait, and the body to its last byte
    max_retries: int = 6
    max_backoff_s: float = MAX_BACKOFF_S  # a Retry-After beyond this fails the request instead of sleeping
    supports_n: bool = True
    via_litellm: bool = False  # the recipe's `client: litellm`: never the door's own client
    batch: bool = False        # send requests as provider batch jobs (OpenAI Batch, Anthropic Message Batches)
    batch_price: tuple[float, float] | None = None
    batch_poll_s: float = 30.0
    batch_window: str = "24h"

    @property
    def provider(self) -> str:
        """The litellm provider prefix ("openai", "hosted_vllm", "anthropic", ...), "" without one."""
        return self.litellm_model.split("/", 1)[0] if "/" in self.litellm_model else ""

    @property
    def served_model(self) -> str:
        """The model name the server knows (the litellm string without its provider prefix)."""
        return self.litellm_model.split("/", 1)[1] if "/" in self.litellm_model else self.litellm_model

    @property
    def native(self) -> bool:
        """Whether the door's own OpenAI-compatible client serves this endpoint (else litellm)."""
        return bool(self.api_base) and self.provider in OPENAI_COMPATIBLE and not self.via_litellm

    @property
    def bases(self) -> tuple[str, ...]:
        """Every server of this endpoint: the api_base, then the replicas."""
        return ((self.api_base,) if self.api_base else ()) + self.replicas

    @property
    def is_loopback(self) -> bool:
        return all(is_loopback(b) for b in self.bases) if self.bases else False


    @classmethod
    def from_recipe(cls, name: str, m: "ModelEndpoint", *, api_base: str | None = None, litellm_model: str | None = None,
                    identity: str | None = None) -> "Endpoint":
        """From a recipe `ModelEndpoint`. For ``local:`` models the runner passes the served
        `litellm_model`, the server's `api_base` and an `identity` that does not depend on the port.
        A hosted model's identity includes its api_base: another server under the same model
        name is another model. The price is the recipe's, else litellm's price map's."""
        model = litellm_model or m.model
        if not model:
            raise ValueError(f"models.{name}: a local model needs litellm_model= (the served name) from the runner")
        price = None
        if m.price is not None:
            price = (m.price.input_per_mtok / 1e6, m.price.output_per_mtok / 1e6)
        elif m.local is None:
            price = known_price(model)
        batch = bool(getattr(m, "batch", False))
        return cls(
            name=name,
            litellm_model=model,
            identity=identity or (f"{model}@{m.api_base}" if m.api_base else model),
            api_base=api_base if api_base is not None else m.api_base,
            replicas=tuple(m.replicas) if api_base is None else (),
            api_key_env=m.api_key_env,
            concurrency=m.concurrency,
            rpm=m.rpm,
            tpm=m.tpm,
            price=price,
            timeout_s=float(m.timeout_s),
            max_retries=m.max_retries,
            max_backoff_s=float(m.max_backoff_s),
            supports_n=m.supports_n,
            via_litellm=m.client == "litellm",
            batch=batch,
            batch_price=batch_price(model if m.price is None else None, price) if batch else None,
            batch_poll_s=float(getattr(m, "batch_poll_s", 30.0)),
        )


def is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")

"""Prices per token: the recipe's own, else litellm's bundled price map (read as JSON).

Reading the JSON file litellm ships is milliseconds; importing litellm is seconds and, without
``LITELLM_LOCAL_MODEL_COST_MAP``, a network call. `plan` and the door both price from here.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from orca_recipe.bounded import maybe_json

# OpenAI's and Anthropic's batch APIs both bill half the synchronous price; used when the price
# map has no ``*_batches`` entry for a model (or the recipe declares its own price).
BATCH_DISCOUNT = 0.5


@lru_cache(maxsize=1)
def litellm_price_map() -> dict[str, Any]:
    """litellm's bundled ``model_prices_and_context_window_backup.json`` ({} without litellm)."""
    spec = find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(list(spec.submodule_search_locations)[0]) / "model_prices_and_context_window_backup.json"
    prices = maybe_json(path, "price map")
    return prices if isinstance(prices, dict) else {}


def _entry(model: str) -> dict | None:
    prices = litellm_price_map()
    for name in (model, model.split("/", 1)[-1]):
        entry = prices.get(name)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return entry
    return None


def known_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token from litellm's map, for a litellm model string."""
    e = _entry(model)
    return (float(e["input_cost_per_token"]), float(e.get("output_cost_per_token", 0.0))) if e else None


def batch_price(model: str | None, regular: tuple[float, float] | None) -> tuple[float, float] | None:
    """The batch-API price: the map's ``*_batches`` entries, else `regular` × BATCH_DISCOUNT."""
    e = _entry(model) if model else None
    if e and "input_cost_per_token_batches" in e:
        return float(e["input_cost_per_token_batches"]), float(e.get("output_cost_per_token_batches", 0.0))
    if regular is None:
        return None
    return regular[0] * BATCH_DISCOUNT, regular[1] * BATCH_DISCOUNT

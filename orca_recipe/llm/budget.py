"""A spending cap that holds: every paid request is checked against it before it is sent.

The ledger (RUN_DIR/ledger.jsonl) records what each answered request cost, once per request
cache key, so a resumed run counts nothing twice and a rerun with a higher cap carries on
(answered requests come from the cache, free). Before a request goes out its worst case --
prompt tokens plus max_tokens, at the endpoint's price (batch: the batch price), times n --
is reserved; if the spend so far plus what is in flight plus this would pass the cap, the
request is not sent and the run stops with the spend and what is left (exit 2).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from orca_recipe.errors import UserError


class BudgetExceeded(UserError):
    """The next request would pass the run's cost cap."""


class Budget:
    def __init__(self, limit: float | None, ledger: Path):
        self.limit = limit
        self.path = ledger
        self.paid: dict[str, float] = {}
        self.reserved = 0.0
        self.refused = 0
        self._lock = threading.Lock()
        if ledger.is_file() and ledger.stat().st_size < 256 << 20:
            for line in ledger.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    key, cost = str(row["key"]), float(row["cost"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a kill: that request is in the cache, its cost unknown here
                if cost >= 0:
                    self.paid.setdefault(key, cost)

    @property
    def spent(self) -> float:
        return sum(self.paid.values())

    def reserve(self, estimate: float) -> float:
        """Hold `estimate` dollars for a request about to be sent, or raise BudgetExceeded."""
        with self._lock:
            if self.limit is not None and self.spent + self.reserved + estimate > self.limit:
                self.refused += 1
                raise BudgetExceeded(
                    f"the budget of ${self.limit:,.4f} would be passed: ${self.spent:,.4f} spent (ledger {self.path}), "
                    f"${self.reserved:,.4f} in flight, the next request up to ${estimate:,.4f}; nothing more is sent. "
                    "What was answered is in the request cache: rerun with a higher --max-cost (or budget_usd) to carry on, "
                    "paying nothing twice")
            self.reserved += estimate
            return estimate

    def settle(self, held: float, costs: dict[str, float | None]) -> None:
        """Release a reservation and record what the request's samples (cache keys) cost."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - held)
            new = {k: float(c) for k, c in costs.items() if c is not None and c >= 0 and k not in self.paid}
            if not new:
                return
            self.paid.update(new)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"key": k, "cost": c}) + "\n" for k, c in new.items()))
                f.flush()

"""A provider batch job as the run folder keeps it: which cache keys each of its requests
answers and where it got to (submitting, submitted, done), so a run killed while the job is
out polls it next time instead of paying again."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from orca_recipe.bounded import maybe_json
from orca_recipe.store import atomic_write_text


@dataclass
class Pending:
    """One request waiting for its batch: the cache keys its samples go to, and its body."""

    keys: list[str]
    messages: list[dict]
    params: dict[str, Any]
    future: asyncio.Future
    rounds: int = 0
    last_error: str = ""


@dataclass
class Job:
    """A batch job as written to the run folder (enough to resume it after a kill)."""

    name: str
    provider: str
    requests: dict[str, list[str]]      # custom_id -> the cache keys of its samples
    endpoint: str = ""                  # the recipe's model key that sent it (its api_base and key poll it)
    batch_id: str | None = None
    file_id: str | None = None
    state: str = "submitting"           # submitting -> submitted -> done
    created: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{self.name}.json", json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> "Job | None":
        fields = maybe_json(path, "run file")
        try:
            return cls(**fields) if isinstance(fields, dict) else None
        except TypeError:
            return None


def job_results(text: str, job: Job) -> Iterator[tuple[str, dict[str, Any]]]:
    """(custom_id, line) for each readable JSON line of a results file that belongs to `job`."""
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("custom_id") in job.requests:
            yield item["custom_id"], item

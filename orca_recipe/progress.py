"""The live progress line of a stage: rows done, rate, time left, tokens, requests, cache hits."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "", style="cyan")


class _UsageColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        u = task.fields.get("usage")
        if u is None or not (u.requests or u.cache_hits):
            return Text("")
        cost = "" if u.cost is None else f" ${u.cost:.4f}"
        return Text(f"{u.prompt_tokens + u.completion_tokens:,} tok{cost} · {u.requests} req · {u.cache_hits} cached", style="dim")


def make_progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
        TimeRemainingColumn(), _UsageColumn(), console=console, transient=False,
    )

"""Execute a Plan: skip what is done, resume what is not, write datasets and manifests.

A stage is done when its folder holds a manifest with `complete: true` and the planned
fingerprint. Anything else runs again; its finished LLM requests come back from the
request cache, so a crash costs time, never money twice.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console

from orca_recipe.content import content_id
from orca_recipe.errors import UserError
from orca_recipe.llm.budget import Budget, BudgetExceeded
from orca_recipe.llm.pool import ServerPool
from orca_recipe.progress import make_progress
from orca_recipe.project import default_cache, finished_elsewhere, link_tree, project_root
from orca_recipe.recipe.compile import Plan, StageRun
from orca_recipe.recipe.fork import effective, to_yaml
from orca_recipe.serving import StageServing, next_llm_stage, until_training
from orca_recipe.stage_dirs import claim, fingerprint_of_folder, restore_superseded, set_aside
from orca_recipe.stages.base import StageContext, StageResult
from orca_recipe.store import atomic_write_text, read_jsonl, read_manifest, write_jsonl, write_manifest


def stage_module(kind: str) -> Any:
    """The module that runs a stage kind; imported on demand so `plan` stays light. Its
    `run(ctx)` does the work; an optional `needs_llm(ctx)` says when no model is needed."""
    import importlib

    module = {"sft": "train", "train_preference": "train"}.get(kind, kind)
    return importlib.import_module(f"orca_recipe.stages.{module}")


def write_tables(out_dir: Path, result: StageResult) -> dict[str, str]:
    """data.jsonl, and rejects.jsonl / failures.jsonl where there are any (an empty JSON Lines
    file does not load with `datasets`: StopIteration); returns {table: file name}."""
    write_jsonl(out_dir / "data.jsonl", result.rows)
    files = {"data": "data.jsonl"}
    for part, rows in (("rejects", result.rejects), ("failures", result.failures)):
        path = out_dir / f"{part}.jsonl"
        if rows:
            write_jsonl(path, rows)
            files[part] = path.name
        else:
            path.unlink(missing_ok=True)
    return files


def stage_function(kind: str) -> Callable[[StageContext], Any]:
    return stage_module(kind).run


# --------------------------------------------------------------------------- the run


@dataclass
class StageOutcome:
    name: str
    state: str  # ran | skipped | reused (from another run of the project)
    seconds: float
    rows: int
    requests: int = 0
    cache_hits: int = 0


@dataclass
class Runner:
    plan: Plan
    console: Console = field(default_factory=Console)
    cache_path: Path | None = None
    quiet: bool = False
    max_cost: float | None = None  # overrides the recipe's budget_usd
    project: Path | None = None  # where other runs' finished stages are found (default: the run directory's parent)

    def __post_init__(self) -> None:
        self.run_dir = self.plan.run_dir
        self.pool = ServerPool(self.run_dir, self.console)
        self.serving = StageServing(self.plan, self.pool)
        self._cache: Any = None
        limit = self.max_cost if self.max_cost is not None else self.plan.recipe.budget_usd
        self.budget = Budget(limit, self.run_dir / "ledger.jsonl")
        self._ids: dict[Path, tuple[tuple[int, int, int], str]] = {}  # data file -> (stat stamp, content id)

    # ---- selection -------------------------------------------------------------
    def select(self, until: str | None, only: str | None) -> list[StageRun]:
        if only:
            return [self.plan.stage(only)]
        if until:
            last = self.plan.stage(until)
            return self.plan.stages[: self.plan.stages.index(last) + 1]
        return list(self.plan.stages)

    def is_done(self, stage: StageRun) -> bool:
        """Complete for this fingerprint, on the inputs as they are now, with no request the
        endpoint failed (a later run asks those again; answered ones come from the cache)."""
        m = read_manifest(self.run_dir / stage.name)
        return bool(self.has_output(stage, m) and not m.get("llm_failures") and m.get("input_data", {}) == self.input_data(stage))

    def has_output(self, stage: StageRun, m: dict | None = None) -> bool:
        """Finished for this fingerprint (maybe with failures): its rows can feed the next stage.
        `m`: its manifest, when the caller has read it already."""
        m = m if m is not None else read_manifest(self.run_dir / stage.name)
        return bool(m and m.get("complete") and m.get("fingerprint") == stage.fingerprint and (self.run_dir / stage.name / "data.jsonl").is_file())

    def input_data(self, stage: StageRun) -> dict[str, str]:
        """Content ids of the stage's input datasets: an upstream stage that re-ran and changed
        its rows (say, it got answers that had failed) makes this stage run again."""
        return {i: self._content_id(self.run_dir / i / "data.jsonl") for i in stage.inputs}

    def _content_id(self, path: Path) -> str:
        """content_id, computed once per version of the file (the run loop asks per remaining
        stage before every stage: without this, hashing was quadratic in the stages)."""
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return content_id(path)
        hit = self._ids.get(path)
        if hit is None or hit[0] != stamp:
            hit = self._ids[path] = (stamp, content_id(path))
        return hit[1]

    def _open_cache(self) -> Any:
        """The request cache, opened (and checked) once: a damaged one stops the run before any stage."""
        if self._cache is None:
            from orca_recipe.llm.cache import RequestCache

            self._cache = RequestCache(self.cache_path or default_cache(self.run_dir, self.project))
        return self._cache

    # ---- execution -------------------------------------------------------------
    def run(self, until: str | None = None, only: str | None = None) -> list[StageOutcome]:
        stages = self.select(until, only)
        if any(s.agents for s in stages):
            self._open_cache()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "recipe.yaml", to_yaml(effective(self.plan.recipe, relative_to=self.run_dir)))
        atomic_write_text(
            self.run_dir / "plan.json",
            json.dumps({"recipe": self.plan.recipe.name,
                        "stages": [{"name": s.name, "kind": s.kind, "fingerprint": s.fingerprint, "calls": s.calls} for s in self.plan.stages]}, indent=2),
        )
        outcomes = []
        with _sigterm_as_exit():
            try:
                for i, stage in enumerate(stages):
                    todo = [s for s in stages[i:] if not self.is_done(s)]
                    self.serving.release_servers(next_llm_stage(todo) if self.pool.on_cpu else until_training(todo))
                    try:
                        outcomes.append(self.run_stage(stage))
                    except BudgetExceeded as e:
                        left = [s.name for s in stages[i:] if not self.is_done(s)]
                        raise BudgetExceeded(f"{e.args[0]}. Stopped in {stage.name}; not finished: {', '.join(left)}") from None
                    self.stop_if_empty(stage, outcomes[-1], stages[i + 1:])
                from orca_recipe.report import write_report

                write_report(self.run_dir)  # report.md, report.html and the plot, after every run
            finally:
                self.pool.stop_all()
                if self._cache is not None:
                    if self._cache.damaged:
                        self.console.print(f"[yellow]warning:[/] {self._cache.damaged} cached value(s) in {self._cache.path} were not "
                                           "well-formed completions: treated as misses and asked again")
                    self._cache.close()
        return outcomes

    def run_stage(self, stage: StageRun) -> StageOutcome:
        out_dir = self.run_dir / stage.name
        restore_superseded(self.run_dir, stage)
        if self.is_done(stage):
            m = read_manifest(out_dir) or {}
            if not self.quiet:
                self.console.print(f"[green]✓[/] {stage.name}: done ({m.get('rows', '?')} rows), fingerprint {stage.fingerprint[:8]} unchanged — skipped")
            return StageOutcome(stage.name, "skipped", 0.0, int(m.get("rows", 0)))
        if self.reuse(stage):
            m = read_manifest(out_dir) or {}
            if not self.quiet:
                self.console.print(f"[green]✓[/] {stage.name}: reused ({m.get('rows', '?')} rows) from {m['reused_from']}, "
                                   f"fingerprint {stage.fingerprint[:8]} — nothing paid")
            return StageOutcome(stage.name, "reused", 0.0, int(m.get("rows", 0)))
        for inp in stage.inputs:
            if not self.has_output(self.plan.stage(inp)):
                raise UserError(f"stage '{stage.name}' needs '{inp}', which is not done; run without --only, or with --until {stage.name}")
        inputs = {inp: read_jsonl(self.run_dir / inp / "data.jsonl") for inp in stage.inputs}
        input_data = self.input_data(stage)
        claim(out_dir, stage, input_data)

        from orca_recipe.llm.door import Usage

        usage = Usage()
        ctx = StageContext(stage=stage, inputs=inputs, out_dir=out_dir, usage=usage)
        started = time.time()
        t0 = time.monotonic()
        with make_progress(self.console) as progress:
            task = progress.add_task(stage.name, total=None, usage=usage)
            ctx.set_total = lambda n: progress.update(task, total=n)  # type: ignore[misc]
            ctx.advance = lambda n=1: progress.advance(task, n)  # type: ignore[misc]
            if stage.agents and getattr(stage_module(stage.kind), "needs_llm", lambda ctx: True)(ctx):
                self._open_cache()
                self.serving.attach(ctx, self._cache, self.budget)  # may start a vLLM server: timed apart from the work
            startup = time.monotonic() - t0
            result: StageResult = asyncio.run(self._run_async(ctx))
            progress.update(task, usage=usage)
        seconds = time.monotonic() - t0
        files = write_tables(out_dir, result)
        write_manifest(out_dir, {
            "stage": stage.name, "kind": stage.kind, "fingerprint": stage.fingerprint, "complete": True,
            "inputs": {i: self.plan.stage(i).fingerprint for i in stage.inputs}, "input_data": input_data,
            "rows": len(result.rows), "rejects": len(result.rejects), "failures": len(result.failures),
            "llm_failures": sum(1 for f in result.failures if str(f.get("reason", "")).startswith("llm:")),
            "started": started, "seconds": round(seconds, 3), "startup_seconds": round(startup, 3),
            "usage": usage.__dict__, "report": result.report,
            "files": files,  # what loads with datasets.load_dataset("json", data_files=...): empty tables are not written
        })
        if not self.quiet:
            extra = f", {len(result.rejects)} rejected, {len(result.failures)} failed" if (result.rejects or result.failures) else ""
            self.console.print(f"[green]✓[/] {stage.name}: {len(result.rows)} rows{extra} in {seconds:.1f} s")
        return StageOutcome(stage.name, "ran", seconds, len(result.rows), usage.requests, usage.cache_hits)

    def stop_if_empty(self, stage: StageRun, outcome: StageOutcome, later: list[StageRun]) -> None:
        """A stage that produced no rows stops the run there (exit 2), with why its rows went,
        when a later stage reads only empty datasets because of it: running on would fail
        minutes later, or score nothing as green."""
        if outcome.rows or stage.kind in ("sft", "train_preference", "eval"):
            return

        def rows_of(name: str) -> int | None:  # None: not run yet (it may still bring rows)
            m = read_manifest(self.run_dir / name)
            return int(m.get("rows") or 0) if m and m.get("complete") else None

        data_kinds = {s.name: s.kind for s in self.plan.stages}
        readers = [s.name for s in later if stage.name in s.inputs
                   and all(rows_of(i) == 0 for i in s.inputs if data_kinds.get(i) not in ("sft", "train_preference"))]
        if not readers:
            return
        out_dir = self.run_dir / stage.name
        reasons: dict[str, int] = {}
        for name in ("rejects.jsonl", "failures.jsonl"):
            path = out_dir / name
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        why = str(json.loads(line).get("reason", "?")).split(" (")[0][:120]
                    except (ValueError, AttributeError):
                        continue
                    reasons[why] = reasons.get(why, 0) + 1
        top = "; ".join(f"{n}x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3]) or "no rows came in"
        raise UserError(f"{stage.name} produced 0 rows, and {', '.join(readers)} need{'s' if len(readers) == 1 else ''} them: {top} "
                        f"(see {out_dir / 'rejects.jsonl'} and failures.jsonl); stopped here")

    def reuse(self, stage: StageRun) -> bool:
        """Take this stage's output from another run of the project that finished it for the
        same fingerprint on the same input datasets (`project.py`); True when it did."""
        if not all(self.has_output(self.plan.stage(i)) for i in stage.inputs):
            return False
        found = finished_elsewhere(project_root(self.run_dir, self.project), self.run_dir, stage.name, stage.fingerprint, self.input_data(stage))
        if found is None:
            return False
        out_dir = self.run_dir / stage.name
        if out_dir.exists():
            if fingerprint_of_folder(out_dir) == stage.fingerprint:
                shutil.rmtree(out_dir)  # an unfinished attempt at what is finished elsewhere
            else:
                set_aside(out_dir)
        try:
            link_tree(found, out_dir)
        except OSError:
            shutil.rmtree(out_dir, ignore_errors=True)  # the other run moved it meanwhile: run the stage here
            return False
        m = read_manifest(out_dir) or {}
        write_manifest(out_dir, {**m, "reused_from": str(found)})
        return self.is_done(stage)

    async def _run_async(self, ctx: StageContext) -> StageResult:
        fn = stage_function(ctx.stage.kind)
        if ctx.llm is None:
            return await fn(ctx)
        try:
            for endpoint in {ctx.endpoint_for(a) for a in ctx.stage.agents}:
                await ctx.llm.preflight(endpoint)
            return await fn(ctx)
        finally:
            await ctx.llm.aclose()



TERMINATED = False  # set once SIGTERM asked the run to stop


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so local servers are stopped and nothing is orphaned."""

    def handler(signum: int, frame: Any) -> None:
        global TERMINATED
        if TERMINATED:
            return  # a second SIGTERM while unwinding: the first one is already stopping the run
        TERMINATED = True
        sys.stderr.write("terminated (SIGTERM): finished work is kept; run again to resume\n")
        raise SystemExit(143)  # unwinds like Ctrl-C (servers stopped, caches closed); 128 + SIGTERM

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)



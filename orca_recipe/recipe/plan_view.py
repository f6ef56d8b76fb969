"""Rendering a Plan for people: the stage table, estimates, example prompts, trainer YAMLs."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from orca_recipe.recipe.compile import Plan
from orca_recipe.recipe.preview import calls_per_model, display_path, estimate, example_prompts
from orca_recipe.store import atomic_write_text

NARROW = 120  # below this many columns the tables drop to a compact layout


def _fmt(n: int | None, bound: bool = False) -> str:
    if n is None:
        return "?"
    return ("≤" if bound else "") + f"{n:,}"


def render_plan(console: Console, plan: Plan, *, show_prompts: bool = True) -> None:
    r = plan.recipe
    examples, source = example_prompts(plan)
    est = estimate(plan, examples)
    narrow = console.width < NARROW  # an 80-column terminal: fewer columns, whole names, a legend
    table = Table(title=f"plan: {r.name} → {display_path(str(plan.run_dir))}", title_justify="left", padding=(0, 1) if not narrow else (0, 0))
    cols = ("#", "stage", "calls", "rows", "tokens in/out", "$", "fp") if narrow else \
        ("#", "stage", "inputs", "agents", "LLM calls", "rows out", "tokens in/out", "cost $", "fingerprint")
    for col in cols:
        table.add_column(col, justify="right" if col in ("#", "LLM calls", "rows out", "cost $", "calls", "rows", "$") else "left",
                         no_wrap=col in ("stage", "fp", "fingerprint", "tokens in/out"), overflow="fold")
    total_cost: float | None = 0.0
    tin = tout = 0
    for i, s in enumerate(plan.stages, 1):
        e = est.get(s.name)
        tokens = f"{e.input_tokens:,}/{e.output_tokens:,}" if e else ""
        cost = "" if e is None else ("?" if e.cost is None else f"{e.cost:,.2f}")
        if e:
            tin, tout = tin + e.input_tokens, tout + e.output_tokens
            total_cost = None if (total_cost is None or e.cost is None) else total_cost + e.cost
        if narrow:
            table.add_row(str(i), s.name, _fmt(s.calls, s.calls_bound) if s.calls else "", _fmt(s.rows), tokens, cost, s.fingerprint[:7])
        else:
            table.add_row(
                str(i), s.name, ", ".join(s.inputs), ", ".join(s.agents),
                _fmt(s.calls, s.calls_bound) if s.calls else "", _fmt(s.rows), tokens, cost, s.fingerprint[:8],
            )
    console.print(table)
    if narrow:
        console.print("[dim]calls: LLM calls (≤ an upper bound) · rows: rows out · $: cost · fp: fingerprint; "
                      "inputs and agents show at 120 columns[/]")
    cost_text = "unknown (a model has no price)" if total_cost is None else f"${total_cost:,.2f}"
    console.print(
        f"total: {plan.total_calls:,} LLM calls (≤ where marked), ~{tin:,} input / ≤{tout:,} output tokens, cost ≤ {cost_text}"
    )
    if r.budget_usd is not None:
        if total_cost is not None and total_cost > r.budget_usd:
            console.print(f"[yellow]warning:[/] the estimate (≤ ${total_cost:,.2f}) is over budget_usd ${r.budget_usd:,.2f}: "
                          "`run` will stop before the spend would pass it")
        else:
            console.print(f"budget: ${r.budget_usd:,.2f} (run stops before the spend would pass it)")
    calls = calls_per_model(plan)
    for key, m in r.models.items():
        if m.replicas and calls.get(key):
            k = 1 + len(m.replicas)
            console.print(f"replicas: {key}'s ~{calls[key]:,} calls spread over {k} servers ({m.concurrency} in flight "
                          f"each, {m.concurrency * k} in all): ~{calls[key] // k:,} per server, so its generation "
                          f"time is ~1/{k} of one server's (same latency per call)")
    batched = sorted(k for k, m in r.models.items() if m.batch)
    if batched:
        console.print(f"batch: {', '.join(batched)} priced at the batch rate (half the usual; answers within 24 h)")
    if show_prompts:
        console.print(f"\nexample prompts ({source}):")
        for agent, (role, text) in examples.items():
            console.print(Panel(text, title=f"{agent} (as {role}) → {r.agents[agent].model}", title_align="left", expand=False), markup=False)


def render_gpu_needs(console: Console, plan: Plan) -> None:
    """One line per key that needs GPUs, and whether this machine has them (`validate` refuses
    what it lacks; `plan` only shows it, so a GPU recipe can be planned anywhere)."""
    from orca_recipe.llm.hardware import gpu_count
    from orca_recipe.recipe.machine import gpu_needs, memory_needs

    needs = gpu_needs(plan.recipe)
    if not needs:
        return
    have = gpu_count()
    console.print(f"GPUs needed per node (this machine has {have}):")
    for n in needs:
        mark = "" if n.gpus <= have else "  [yellow]← not here[/]"
        console.print(f"  {'.'.join(n.key)}: {n.gpus} · {n.what}{mark}")
    memory = memory_needs(plan)
    if memory:
        console.print("GPU memory (estimate; `validate --gpus N --gpu-memory GIB` refuses what cannot fit):")
        for m in memory:
            console.print(f"  {m.what}: {m.estimate.describe()}", markup=False)


def write_trainer_configs(plan: Plan, out_dir: Path) -> list[Path]:
    """Write each training stage's rendered Axolotl YAML to `out_dir/STAGE.yaml`."""
    written = []
    for s in plan.stages:
        if s.trainer_config is not None:
            path = out_dir / f"{s.name}.axolotl.yaml"
            atomic_write_text(path, yaml.safe_dump(s.trainer_config, sort_keys=False))
            written.append(path)
    return written


def render_reuse(console: Console, plan: Plan, project: Path) -> None:
    """Which stages `run` will not pay for: finished here for their fingerprint, or in another run
    of the project (reused when their input datasets match too, as they do when the stages
    before them are the same)."""
    from orca_recipe.project import finished_elsewhere
    from orca_recipe.store import read_manifest

    here: list[str] = []
    elsewhere: dict[str, list[str]] = {}
    for s in plan.stages:
        m = read_manifest(plan.run_dir / s.name) if (plan.run_dir / s.name).is_dir() else None
        if m and m.get("complete") and m.get("fingerprint") == s.fingerprint:
            here.append(s.name)
            continue
        found = finished_elsewhere(project, plan.run_dir, s.name, s.fingerprint, None)
        if found is not None:
            elsewhere.setdefault(display_path(str(found.parent)), []).append(s.name)
    if here:
        console.print(f"done in this run directory: {', '.join(here)}")
    for where, names in elsewhere.items():
        console.print(f"reused from {where} (same fingerprint): {', '.join(names)}")
    if not here and not elsewhere:
        console.print(f"[dim]no stage finished for these fingerprints in {display_path(str(project))}: `run` computes every stage[/]")

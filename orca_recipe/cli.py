"""The `orca-recipe` command: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orca_recipe.bounded import read_text
from orca_recipe.errors import UserError

# pretty_exceptions_show_locals=False: a traceback of an unexpected error must never print the
# locals of a frame that holds an API key.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="One YAML recipe for the whole Orca-Math pipeline.")
out = Console()
err = Console(stderr=True)

SetOpt = typer.Option([], "--set", "-s", help="Override a key: a.b.c=value (value parsed as YAML). Repeatable.")
RecipeArg = typer.Argument(..., help="Recipe YAML file.")
ProjectOpt = typer.Option(None, "--project", help="The folder of run directories whose finished stages this run may reuse (default: the run directory's parent).")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("orca-recipe")
        except PackageNotFoundError:
            from orca_recipe import __version__ as v
        out.print(f"orca-recipe {v}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """One YAML recipe for the whole Orca-Math pipeline."""


@app.command()
def validate(
    recipe: Path = RecipeArg,
    set_: list[str] = SetOpt,
    check_axolotl: bool = typer.Option(False, "--check-axolotl", help="Also check the rendered Axolotl configs with Axolotl's schema (slow: imports Axolotl)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=0, help="Check for a machine with this many GPUs per node (default: this machine's)."),
    gpu_memory: Optional[float] = typer.Option(
        None, "--gpu-memory", min=1, help="GiB per GPU of the machine to check for: refuse a training stage or server whose estimate does not fit."),
    ready: bool = typer.Option(False, "--ready", help="Also check that this machine can run it now: key variables set, model folders present, "
                                                      "an install that can use its GPUs (what `run` checks first)."),
) -> None:
    """Check a recipe (schema, references, prompt templates, the GPUs it needs); exit 0 if valid, 2 if not."""
    from orca_recipe.llm.hardware import gpu_count
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.recipe.machine import check_machine

    plan = compile_file(recipe, set_)
    check_machine(plan.recipe, plan.loaded, gpu_count() if gpus is None else gpus)
    if gpu_memory is not None:
        from orca_recipe.recipe.machine import check_memory

        check_memory(plan, gpu_memory)
    if ready:
        from orca_recipe.recipe.ready import check_ready

        check_ready(plan.recipe, plan.loaded, {a for s in plan.stages for a in s.agents}, gpu_count())
    for w in plan.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    if check_axolotl:
        from orca_recipe.recipe.axolotl_check import check_plan

        out.print(f"Axolotl accepts {check_plan(plan)} rendered config(s)")
    out.print(f"[green]ok[/] {recipe}: {len(plan.stages)} stages, {plan.total_calls:,} LLM calls planned")


@app.command()
def plan(
    recipe: Path = RecipeArg,
    set_: list[str] = SetOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the rendered Axolotl YAMLs (default RUN_DIR/plan)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory the plan is for (default runs/NAME)."),
    prompts: bool = typer.Option(True, "--prompts/--no-prompts", help="Show one rendered example prompt per agent."),
    check_axolotl: bool = typer.Option(False, "--check-axolotl/--no-check-axolotl", help="Also check the rendered configs with Axolotl's schema (slow: imports Axolotl)."),
    project: Optional[Path] = ProjectOpt,
) -> None:
    """Show the stages, call counts, token/cost estimate and example prompts, and what is finished already; spends nothing."""
    from orca_recipe.project import project_root
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.recipe.plan_view import render_gpu_needs, render_plan, render_reuse, write_trainer_configs

    p = compile_file(recipe, set_, run_dir)
    render_plan(out, p, show_prompts=prompts)
    render_reuse(out, p, project_root(p.run_dir, project))
    render_gpu_needs(out, p)
    written = write_trainer_configs(p, out_dir or p.run_dir / "plan")
    for path in written:
        out.print(f"wrote {path}")
    if check_axolotl and p.recipe.training is not None:
        from orca_recipe.recipe.axolotl_check import check_plan
        from orca_recipe.train.check import axolotl_available

        if axolotl_available(p.recipe.training.launcher):
            out.print(f"Axolotl accepts {check_plan(p)} rendered config(s)")
        else:
            out.print("[dim]Axolotl not installed here: rendered configs not checked against its schema[/]")
    elif p.recipe.training is not None and written:
        out.print("[dim]keys checked against Axolotl 0.19.0's list; `--check-axolotl` runs its full schema (imports Axolotl, ~10 s)[/]")
    for w in p.warnings:
        err.print(f"[yellow]warning:[/] {w}")


@app.command()
def show(
    recipe: Path = RecipeArg,
    set_: list[str] = SetOpt,
    defaults: bool = typer.Option(True, "--defaults/--no-defaults", help="Fill in every default value."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file, its paths relative to its folder (stdout: absolute paths)."),
) -> None:
    """Print the fully merged recipe (bases, overrides and defaults applied) as YAML that validates on its own."""
    from orca_recipe.recipe.fork import effective, only_keys_of, to_yaml
    from orca_recipe.recipe.load import load_recipe

    r, loaded = load_recipe(recipe, set_)
    data = effective(r, relative_to=out_file.parent if out_file else None)
    text = to_yaml(data if defaults else only_keys_of(data, loaded.data))
    if out_file is None:
        sys.stdout.write(text)
        return
    from orca_recipe.rundir import check_writable_dir
    from orca_recipe.store import atomic_write_text

    if out_file.is_dir():
        raise UserError("--out names a folder; it takes the YAML file to write", where=str(out_file))
    check_writable_dir(out_file.parent, "--out's folder")
    atomic_write_text(out_file, text)
    out.print(f"wrote {out_file}")


@app.command()
def fork(
    base: Path = typer.Argument(..., help="The recipe to fork."),
    new: Path = typer.Argument(..., help="The new recipe file to write."),
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite NEW if it exists."),
) -> None:
    """Write NEW as a minimal child of BASE: `extends` plus only the --set overrides."""
    from orca_recipe.recipe.fork import fork_text

    if not base.exists():
        raise UserError("base recipe not found", where=str(base))
    if new.exists() and not force:
        raise UserError("already exists; pass --force to overwrite", where=str(new))
    new.parent.mkdir(parents=True, exist_ok=True)
    text = fork_text(base, new, set_)
    new.write_text(text)
    out.print(f"wrote {new}")
    sys.stdout.write(text)


@app.command()
def diff(a: Path = typer.Argument(...), b: Path = typer.Argument(...), set_: list[str] = SetOpt,
         exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when the recipes differ, 0 when they do not (as git diff --exit-code).")) -> None:
    """Show the effective differences between two recipes after merging (exit 0 either way, unless --exit-code)."""
    from orca_recipe.recipe.fork import diff as diff_data
    from orca_recipe.recipe.fork import effective
    from orca_recipe.recipe.load import load_recipe

    ra, _ = load_recipe(a)
    rb, _ = load_recipe(b, set_)
    rows = diff_data(effective(ra, drop_none=True), effective(rb, drop_none=True))
    if not rows:
        out.print("no differences")
        return
    table = Table("key", str(a), str(b))
    for key, va, vb in rows:
        table.add_row(key, repr(va) if va != "<unset>" else "[dim]<unset>[/]", repr(vb) if vb != "<unset>" else "[dim]<unset>[/]")
    out.print(table)
    if exit_code:
        raise typer.Exit(1)


@app.command()
def run(
    recipe: Path = RecipeArg,
    set_: list[str] = SetOpt,
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage (a name from `orca-recipe plan`: seeds, ask_me_anything, "
                                                             "evolve, solve, filter, eval_base, sft, eval_sft, practice_N, judge_N, preferences_N, train_N, eval_N)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (its inputs must be done)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/NAME)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Request cache file (default PROJECT/requests.sqlite, shared by the project's runs; "
                                                               "RUN_DIR/requests.sqlite where a run has its own)."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0, help="Budget in dollars for this run directory (over the recipe's budget_usd)."),
    project: Optional[Path] = ProjectOpt,
) -> None:
    """Run the recipe: skip stages whose fingerprint is unchanged, take those another run of the project finished, resume the rest from the cache."""
    from orca_recipe.llm.hardware import gpu_count
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.recipe.machine import check_machine
    from orca_recipe.recipe.ready import check_ready
    from orca_recipe.rundir import check_cache_file, check_writable_dir, hold
    from orca_recipe.runner import Runner

    for flag, value in (("--until", until), ("--only", only)):
        if value is not None and not value.strip():
            raise UserError(f"{flag} needs a stage name", where=flag)
    p = compile_file(recipe, set_, run_dir)
    for flag, value in (("--until", until), ("--only", only)):
        if value is not None:
            p.stage(value)  # an unknown name: one error listing the stages, before anything runs
    check_machine(p.recipe, p.loaded, gpu_count())
    check_ready(p.recipe, p.loaded, {a for s in p.stages for a in s.agents}, gpu_count())  # before anything is paid
    check_writable_dir(p.run_dir, "--run-dir" if run_dir else "the run directory")
    from orca_recipe.project import default_cache

    check_cache_file(cache if cache is not None else default_cache(p.run_dir, project))
    for w in p.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    with hold(p.run_dir):
        runner = Runner(p, console=out, cache_path=cache, max_cost=max_cost, project=project)
        outcomes = runner.run(until=until, only=only)
    ran = [o for o in outcomes if o.state == "ran"]
    reused = sum(1 for o in outcomes if o.state == "reused")
    requests = sum(o.requests for o in outcomes)
    hits = sum(o.cache_hits for o in outcomes)
    out.print(
        f"{len(ran)} stage(s) ran, {len(outcomes) - len(ran) - reused} skipped, {reused} reused from other runs; "
        f"{requests} LLM requests made, {hits} answered from cache; run directory {p.run_dir}"
    )
    if (p.run_dir / "report.md").is_file() and any(o.name.startswith("eval_") for o in outcomes):
        from rich.markdown import Markdown

        out.print(Markdown(read_text(p.run_dir / "report.md", "run file")))


@app.command()
def preview(
    recipe: Path = RecipeArg,
    set_: list[str] = SetOpt,
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds to run the generation half on."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="The full run's directory (default runs/NAME); the preview goes in RUN_DIR/preview."),
) -> None:
    """Run the generation half on a few seeds with the recipe's real models; show what each agent wrote and what it cost.

    Its requests go into the full run's request cache, so `run` does not pay for them again."""
    from orca_recipe.project import default_cache
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.recipe.ready import check_ready
    from orca_recipe.report import as_json
    from orca_recipe.report_html import write_html
    from orca_recipe.rundir import check_writable_dir, hold
    from orca_recipe.runner import Runner
    from orca_recipe.store import read_jsonl, read_manifest

    full = compile_file(recipe, set_, run_dir)
    small = [*set_, f"seeds.limit={min(seeds, full.seed_rows or seeds)}"]
    for section, key in (("ask_me_anything", "limit"), ("evolve", "limit")):
        if getattr(full.recipe, section) is not None:
            small.append(f"{section}.{key}={seeds}")
    p = compile_file(recipe, small, full.run_dir / "preview")
    check_ready(p.recipe, p.loaded, {a for s in p.stages for a in s.agents}, 0)
    check_writable_dir(p.run_dir, "the preview directory")
    last = "filter" if any(s.name == "filter" for s in p.stages) else p.stages[-1].name
    with hold(p.run_dir):
        Runner(p, console=out, cache_path=default_cache(full.run_dir)).run(until=last)
    spent = 0.0
    for s in p.stages[: [x.name for x in p.stages].index(last) + 1]:
        m = read_manifest(p.run_dir / s.name) or {}
        u = m.get("usage") or {}
        spent += u.get("cost") or 0.0
        rows = read_jsonl(p.run_dir / s.name / "data.jsonl") if (p.run_dir / s.name / "data.jsonl").is_file() else []
        out.rule(f"{s.name}: {len(rows)} rows, {u.get('requests', 0)} requests, ${u.get('cost') or 0:.4f}")
        for r in rows[:2]:
            text = r.get("solution") or r.get("question") or ""
            out.print(f"[bold]{r.get('id')}[/]: {text[:400]}", markup=True, highlight=False)
    page = write_html(p.run_dir, as_json(p.run_dir))
    out.print(f"preview: ${spent:.4f} spent; rows and reasons in {page}; `orca-recipe run {recipe}` reuses these answers from "
              f"{default_cache(full.run_dir)}")


@app.command()
def clean(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/tiny."),
    yes: bool = typer.Option(False, "--yes", help="Remove them (default: only list)."),
) -> None:
    """List (or with --yes remove) the stage outputs of earlier settings kept in RUN_DIR/.superseded."""
    import shutil

    from orca_recipe.stage_dirs import superseded

    found = superseded(run_dir)
    if not found:
        out.print(f"{run_dir}: nothing superseded")
        return
    for folder, size in found:
        out.print(f"{'removed' if yes else 'kept'} {folder.name}  {size / 2**20:,.1f} MiB")
        if yes:
            shutil.rmtree(folder)
    total = sum(size for _, size in found) / 2**20
    out.print(f"{len(found)} superseded output(s), {total:,.1f} MiB" + ("" if yes else "; `--yes` removes them"))


@app.command()
def status(run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/tiny.")) -> None:
    """Show a run's stages: state, rows, rejects, failures, requests, tokens, cost, time."""
    from orca_recipe.stage_dirs import status_table

    narrow = out.width < 120
    out.print(status_table(run_dir, narrow))
    if narrow:
        out.print("[dim]rej: rejected · fail: failed · req: LLM requests · hit: answered from the cache · $: cost · s: seconds[/]")


class ReportFormat(str, Enum):
    markdown = "markdown"
    json = "json"


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/tiny."),
    fmt: ReportFormat = typer.Option(ReportFormat.markdown, "--format", help="markdown: write report.md and show it; json: print the report as JSON on stdout only (for jq)."),
) -> None:
    """Print the run's report: pass@1 per checkpoint with n and 95% intervals, paired comparisons, stage timings."""
    if fmt is ReportFormat.json:
        import json

        from orca_recipe.report import as_json

        sys.stdout.write(json.dumps(as_json(run_dir), indent=2) + "\n")  # plain stdout: no rich markup or wrapping
        return
    from rich.markdown import Markdown

    from orca_recipe.report import write_report

    path = write_report(run_dir)
    out.print(Markdown(read_text(path, "run file")))
    out.print(f"report: {path}")


@app.command()
def publish(
    run_dir: Path = typer.Argument(..., help="A run directory, e.g. runs/tiny."),
    repo: str = typer.Option(..., "--repo", help="The dataset repo, ORG/NAME; checkpoints go to ORG/NAME-STAGE."),
    models: bool = typer.Option(False, "--models", help="Also push each trained checkpoint as a model repo."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the folder that would be pushed and list it; no network, no token."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write that folder (default RUN_DIR/publish with --dry-run, else a temporary folder)."),
    token_env: str = typer.Option("HF_TOKEN", "--token-env", help="The NAME of the variable that holds the Hub token (never printed)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="The Hub's URL (default $HF_ENDPOINT, else https://huggingface.co)."),
    private: bool = typer.Option(False, "--private", help="Create the repos private."),
    license_: Optional[str] = typer.Option(None, "--license", help="The seed data's licence, when the data does not record it (e.g. cc-by-4.0)."),
) -> None:
    """Push the run's datasets to the Hub as one dataset repo (a config per stage, a card from the recipe and manifests)."""
    import os
    import tempfile

    url = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    os.environ["HF_ENDPOINT"] = url  # before huggingface_hub is imported: its own side requests go there too, not to huggingface.co

    from orca_recipe.publish import hub_token, prepare, push

    token = None if dry_run else hub_token(token_env)
    with tempfile.TemporaryDirectory(prefix="orca-publish-") as tmp:
        folder = out_dir or (run_dir / "publish" if dry_run else Path(tmp))
        uploads, notes = prepare(run_dir, repo, folder, models=models, licence=license_)
        for note in notes:
            err.print(f"[yellow]note:[/] {note}")
        for u in uploads:
            out.print(f"{'would push' if dry_run else 'pushing'} {u.repo_type} {u.repo_id}: {len(u.files)} files, {u.size / 1e6:.1f} MB")
            for rel, path in u.files:
                out.print(f"  {rel}  ({path.stat().st_size:,} bytes)", highlight=False)
        if dry_run:
            out.print(f"dry run: nothing pushed; the folder is {folder}")
            return
        for pushed in push(uploads, token=token, token_env=token_env, endpoint=url, private=private, message=f"orca-recipe publish {run_dir.name}"):
            out.print(f"[green]pushed[/] {pushed}")


def main() -> None:
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # no task noise when a run is interrupted
    try:
        app(standalone_mode=True)
    except UserError as e:
        err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished work is kept; run again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()

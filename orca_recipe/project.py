"""Finished stages found across the runs of one project, so that a fork never pays twice.

A project is the folder that holds its run directories (`runs/` by default, `--project` to
name another): any folder up to two levels below it with a `plan.json` is a run. A stage is
addressed by its fingerprint (the hash of what it runs) and the content ids of its input
datasets; a run that needs a stage another run of the project has finished, with the same
fingerprint on the same inputs, takes that output instead of computing it again (as dbt's
deferred state and curator's global cache do). The copy is made of hard links where the file
system allows it: instant, and no second copy of a trained model on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from orca_recipe.store import read_manifest

SUPERSEDED = ".superseded"  # RUN_DIR/.superseded/STAGE-FINGERPRINT: outputs of earlier settings
MAX_RUNS = 1000  # a project folder with more run directories is searched this far only


def run_dirs(project: Path, exclude: Path) -> Iterator[Path]:
    """The project's run directories (a `plan.json` inside), up to two levels deep, but `exclude`."""
    seen = 0
    own = exclude.resolve()
    for d in _subdirs(project):
        for cand in (d, *_subdirs(d)):
            if seen >= MAX_RUNS:
                return
            if (cand / "plan.json").is_file() and cand.resolve() != own:
                seen += 1
                yield cand


def _subdirs(d: Path) -> list[Path]:
    """Folders right below `d`, sorted: not links, not hidden (.superseded); [] if unreadable."""
    try:
        return sorted(s for s in d.iterdir() if s.is_dir() and not s.is_symlink() and not s.name.startswith("."))
    except OSError:
        return []


def finished_elsewhere(project: Path, run_dir: Path, stage: str, fingerprint: str, input_data: dict[str, str] | None) -> Path | None:
    """A complete output of `stage` for `fingerprint` in another run of the project, with no
    failed request to ask again and, when `input_data` is given, made from the same input
    datasets; None if there is none."""
    for other in run_dirs(project, run_dir):
        for folder in (other / stage, other / SUPERSEDED / f"{stage}-{fingerprint}"):
            m = read_manifest(folder) if folder.is_dir() else None
            if not m or not m.get("complete") or m.get("fingerprint") != fingerprint or m.get("llm_failures"):
                continue
            if input_data is not None and m.get("input_data", {}) != input_data:
                continue
            if (folder / "data.jsonl").is_file():
                return folder
    return None


def link_tree(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` (which must not exist) as hard links, falling back to copies across
    file systems; symbolic links are copied as links, never followed."""
    tmp = dst.with_name(f".{dst.name}.reusing")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, symlinks=True, copy_function=_link_or_copy)
    os.replace(tmp, dst)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def project_root(run_dir: Path, project: Path | None = None) -> Path:
    """The project a run belongs to: `--project`, else the folder holding its run directory."""
    return project or run_dir.parent


def default_cache(run_dir: Path, project: Path | None = None) -> Path:
    """The request cache a run uses without `--cache`: the project's (PROJECT/requests.sqlite),
    so that a fork finds every request its base answered, even in a stage whose fingerprint
    changed; a run directory that has a cache of its own (made before the project cache)
    keeps it, so nothing it paid for is asked again."""
    own = run_dir / "requests.sqlite"
    return own if own.exists() else project_root(run_dir, project) / "requests.sqlite"

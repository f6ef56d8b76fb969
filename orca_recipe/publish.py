"""Publish a run to the Hugging Face Hub: one dataset repo with a config per finished stage,
and optionally each trained checkpoint as a model repo.

The folder to push is always written first (under `--out`, or a temporary folder), so a
`--dry-run` shows exactly what a push would send. Only huggingface_hub's public API talks to
the Hub (create_repo, create_commit); its errors become one UserError with the token scrubbed.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from orca_recipe.bounded import read_text
from orca_recipe.card import TRAINING_KINDS, dataset_card, model_card
from orca_recipe.errors import UserError
from orca_recipe.licence import Licence, find_licence, resolve_data_path
from orca_recipe.store import read_jsonl

RUN_FILES = ("recipe.yaml", "report.md", "pass_at_1.png")


@dataclass
class Upload:
    """One repo to push: its id and type, and (path in repo, local file) pairs."""

    repo_id: str
    repo_type: str  # "dataset" | "model"
    files: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for _, p in self.files)


def check_repo_id(repo: str) -> str:
    """ORG/NAME, as the Hub accepts it: we need the namespace to name the model repos beside it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"--repo must be ORG/NAME (a namespace and a name), got '{repo}'")
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UserError(f"--repo '{repo}' is not a valid Hub repo id: {e}") from None
    return repo


def _finished(run_dir: Path) -> tuple[list[dict], list[str]]:
    """(finished stages with their manifests, notes on the planned stages left out)."""
    from orca_recipe.stage_dirs import run_status

    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (no such folder)")
    stages, notes = [], []
    for r in run_status(run_dir):  # a UserError when there is no plan.json
        name = r["stage"]
        if r["state"] != "done":
            notes.append(f"{name}: {r['state']}, not published")
        elif not (run_dir / name / "data.jsonl").is_file():
            notes.append(f"{name}: finished but its data.jsonl is missing, not published")
        else:
            stages.append({"name": name, "kind": r["manifest"].get("kind"), "manifest": r["manifest"]})
    if not stages:
        raise UserError(f"{run_dir} has no finished stage to publish (run it first: orca-recipe run RECIPE)")
    return stages, notes


def _licence_file(source: str | None) -> Path | None:
    """The licence text beside a data file's licence note (its LICENSE, else the note itself)."""
    if not source or not Path(source).is_file():
        return None
    folder = Path(source).parent
    return next((folder / n for n in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING") if (folder / n).is_file()), Path(source))


def _portable_manifest(manifest: dict, run_dir: Path) -> str:
    """The manifest with this machine's run folder written as '.', so no local path is published."""
    from orca_recipe.home import cache_home

    origin = manifest.get("reused_from")  # a stage taken from another run of the project: its paths are that run's
    manifest = {k: v for k, v in manifest.items() if k != "reused_from"}
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    origin_run = Path(origin).parent if isinstance(origin, str) else None
    if origin_run is not None and origin_run.name == ".superseded":
        origin_run = origin_run.parent
    others = ((str(origin_run), "."),) if origin_run is not None else ()
    for prefix, shown in (*others, (str(run_dir.resolve()), "."), (str(run_dir.absolute()), "."), (str(cache_home()), "$ORCA_RECIPE_HOME"),
                          (str(Path.home()), "~")):
        text = text.replace(json.dumps(prefix)[1:-1], shown)
    return text


def _licences(run_dir: Path, recipe: dict, override: str | None) -> dict[str, tuple[str, Licence]]:
    from orca_recipe.licence import from_text

    out = {}
    for role in ("seeds", "eval"):
        path = (recipe.get(role) or {}).get("path")
        lic = from_text(override, None) if override and role == "seeds" else find_licence(resolve_data_path(path, run_dir))
        out[role] = (path, lic)
    return out


def prepare(run_dir: Path, repo: str, out: Path, *, models: bool = False, licence: str | None = None) -> tuple[list[Upload], list[str]]:
    """Write the dataset folder (card, data, manifests) and the model cards under `out`;
    return what to push and notes on what is left out."""
    from orca_recipe.report import checkpoints, paired

    check_repo_id(repo)
    stages, notes = _finished(run_dir)
    recipe = yaml.safe_load(read_text(run_dir / "recipe.yaml", "recipe")) if (run_dir / "recipe.yaml").is_file() else {}
    licences = _licences(run_dir, recipe or {}, licence)
    evals = [{"stage": s["name"], **s["manifest"]["report"]} for s in stages if s["kind"] == "eval" and s["manifest"].get("report")]
    scored = checkpoints(run_dir, evals)

    if out.exists():
        shutil.rmtree(out)
    ds = out / "dataset"
    upload = Upload(repo, "dataset")
    for s in stages:
        src = run_dir / s["name"]
        # a preference-training stage's rows are ids only (its data is the preferences stage's): no config of its own
        s["path"] = f"{s['name']}/data.jsonl" if s["manifest"].get("rows") and s["kind"] != "train_preference" else None
        s["rejects"] = read_jsonl(src / "rejects.jsonl") if (src / "rejects.jsonl").is_file() else []
        s["failures"] = read_jsonl(src / "failures.jsonl") if (src / "failures.jsonl").is_file() else []
        (ds / s["name"]).mkdir(parents=True)
        (ds / s["name"] / "manifest.json").write_text(_portable_manifest(s["manifest"], run_dir))
        if s["path"]:
            shutil.copyfile(src / "data.jsonl", ds / s["path"])
        for part in ("rejects", "failures"):
            if s[part]:
                shutil.copyfile(src / f"{part}.jsonl", ds / s["name"] / f"{part}.jsonl")
    extra = [name for name in RUN_FILES if (run_dir / name).is_file()]
    for name in extra:
        shutil.copyfile(run_dir / name, ds / name)

    uploads: list[Upload] = []
    model_repos: dict[str, str] = {}
    if models:
        uploads, model_repos = _model_uploads(run_dir, repo, out, stages, recipe or {}, scored, licences["seeds"][1], notes)
    licence_files = _licence_files(licences, ds)
    pairs = paired(run_dir, evals)["pairs"] if len(evals) > 1 else []
    (ds / "README.md").write_text(dataset_card(repo, recipe or {}, stages, licences, scored, extra, model_repos, pairs, licence_files))
    upload.files = [(p.relative_to(ds).as_posix(), p) for p in sorted(ds.rglob("*")) if p.is_file()]
    return [upload, *uploads], notes


def _model_uploads(run_dir: Path, repo: str, out: Path, stages: list[dict], recipe: dict, scored: list[dict], seeds_licence: Licence,
                   notes: list[str]) -> tuple[list[Upload], dict[str, str]]:
    """One model repo per trained checkpoint (its card and its folder, resume checkpoints left
    out); a stage without a model folder is a note, not an upload."""
    uploads: list[Upload] = []
    model_repos: dict[str, str] = {}
    for s in stages:
        folder = run_dir / s["name"] / "output"
        if s["kind"] not in TRAINING_KINDS:
            continue
        if not (folder / "config.json").is_file():
            notes.append(f"{s['name']}: no model folder ({folder}/config.json missing), checkpoint not published")
            continue
        model_repo = check_repo_id(f"{repo}-{s['name'].replace('_', '-')}")
        model_repos[s["name"]] = model_repo
        card_dir = out / "models" / s["name"]
        card_dir.mkdir(parents=True)
        (card_dir / "README.md").write_text(model_card(model_repo, s, repo, recipe, scored, seeds_licence))
        files = [("README.md", card_dir / "README.md")]
        files += [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*"))
                  if p.is_file() and not p.relative_to(folder).parts[0].startswith("checkpoint-") and p.name != "README.md"]
        uploads.append(Upload(model_repo, "model", files))
    return uploads, model_repos


def _licence_files(licences: dict[str, tuple[str, Licence]], ds: Path) -> dict[str, str]:
    """The data's own licence texts copied into the dataset folder (GSM8K's MIT notice):
    {role: file name}, one file per distinct text."""
    licence_files: dict[str, str] = {}
    for role, (_path, lic) in licences.items():
        text = _licence_file(lic.source)
        if text is not None:
            name = next((n for r, n in licence_files.items() if _licence_file(licences[r][1].source) == text), None) or \
                ("LICENSE" if "LICENSE" not in licence_files.values() else f"LICENSE-{role}")
            shutil.copyfile(text, ds / name)
            licence_files[role] = name
    return licence_files


@contextmanager
def hub_errors(endpoint: str, token: str, token_env: str) -> Iterator[None]:
    """Any failure talking to the Hub as one UserError that never holds the token."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    def clean(text: str) -> str:
        text = text.replace(token, "***") if token else text
        return text.strip().splitlines()[0] if text.strip() else text

    try:
        yield
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        why = {401: f"the Hub refused the token in ${token_env} (401 Unauthorized); check it is valid",
               403: f"the token in ${token_env} may not write there (403 Forbidden); it needs write access to the namespace"}.get(
            status, f"the Hub answered {status}: {clean(str(e))}")
        raise UserError(f"publish to {endpoint} failed: {clean(why)}") from None
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: publishing needs the network; run with HF_HUB_OFFLINE=0") from None
    except OSError as e:  # httpx's connection errors are not OSErrors; caught below
        raise UserError(f"cannot reach the Hub at {endpoint}: {clean(str(e)) or type(e).__name__}") from None
    except ValueError as e:  # e.g. the Hub's validate-yaml rejected the card
        raise UserError(f"the Hub at {endpoint} rejected the upload: {clean(str(e))}") from None
    except Exception as e:
        # The HTTP client's own errors (connection refused, DNS, timeouts): httpx under
        # huggingface_hub 1.x, httpx2 under 2.x; neither is an OSError.
        if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise UserError(f"cannot reach the Hub at {endpoint}: {clean(str(e)) or type(e).__name__}") from None
        raise


def hub_token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise UserError(f"no Hugging Face token: set ${token_env} to a token with write access (or name another variable with --token-env)")
    return token


def push(uploads: list[Upload], *, token: str, token_env: str, endpoint: str, private: bool, message: str) -> list[str]:
    """Create each repo (if missing) and commit its files in one commit; return the repo URLs."""
    import huggingface_hub
    from huggingface_hub import CommitOperationAdd, HfApi

    if huggingface_hub.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: publishing needs the network; run with HF_HUB_OFFLINE=0")
    api = HfApi(endpoint=endpoint, token=token)
    urls = []
    with hub_errors(endpoint, token, token_env):
        for u in uploads:
            url = api.create_repo(u.repo_id, repo_type=u.repo_type, exist_ok=True, private=private or None)
            ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in u.files]
            api.create_commit(u.repo_id, ops, repo_type=u.repo_type, commit_message=message)
            urls.append(str(url))
    return urls

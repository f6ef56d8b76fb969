"""Dataset and model cards for a published run, written from its recipe and manifests.

The front matter is what the Hub reads (one config per stage, the licence); the body is what
a person reads before using the data: where each stage's rows came from, how many were kept,
rejected or failed and why, which models wrote them, what it cost, and under which licence.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from orca_recipe.licence import Licence

# Which recipe keys name the agents a stage kind talks to.
AGENT_KEYS = {
    "ask_me_anything": [("ask_me_anything", "agent")],
    "evolve": [("evolve", "suggester"), ("evolve", "editor"), ("evolve", "verifier")],
    "solve": [("solve", "agent")],
    "practice": [("practice", "agent")],
    "judge": [("judge", "agent")],
    "eval": [("eval", "agent")],
}
WHAT = {
    "seeds": "seed problems read from the recipe's seed data", "ask_me_anything": "new problems from Ask-Me-Anything expansion",
    "evolve": "problems rewritten by the Suggester/Editor agents", "solve": "problems with the teacher's (or gold) solution",
    "filter": "solved problems after dedup and decontamination", "sft": "the SFT training set", "practice": "the student's sampled solutions",
    "judge": "the student's solutions with the judge's verdict", "preferences": "preference rows (KTO or DPO)",
    "train_preference": "the preference training set", "eval": "the eval set with the checkpoint's answer and whether it was right",
}
TRAINING_KINDS = ("sft", "train_preference")


def model_label(models: dict[str, Any], key: str) -> str:
    """A model as the recipe names it: the litellm string, or the local/embedded weights."""
    m = models.get(key) or {}
    local = m.get("local") or {}
    if local.get("embedded"):
        return f"local: {local['embedded']} (embedded)"
    if local.get("path"):
        return f"local: {Path(local['path']).name}"
    return str(m.get("model") or key)


def agents_used(recipe: dict[str, Any], kind: str) -> list[str]:
    out = []
    for section, field in AGENT_KEYS.get(kind, []):
        name = (recipe.get(section) or {}).get(field)
        if name and not (kind == "judge" and (recipe.get("judge") or {}).get("mode") == "exact"):
            out.append(name)
    return out


def _reasons(rows: list[dict], top: int = 5) -> str:
    counts = Counter(str(r.get("reason", "?"))[:80].replace("|", "/").replace("\n", " ") for r in rows)
    shown = "; ".join(f"{reason} ×{n}" for reason, n in counts.most_common(top))
    return shown + (f"; {len(counts) - top} more reasons" if len(counts) > top else "")


def _cost(stages: list[dict]) -> str:
    costs = [(s["manifest"].get("usage") or {}) for s in stages]
    unknown = [s["name"] for s, u in zip(stages, costs) if u.get("requests") and u.get("cost") is None]
    total = sum(u.get("cost") or 0.0 for u in costs)
    if unknown:
        return f"${total:.4f} where priced; unknown for {', '.join(unknown)} (no price for their model)"
    return f"${total:.4f}"


def dataset_card(repo_id: str, recipe: dict[str, Any], stages: list[dict], licences: dict[str, tuple[str, Licence]],
                 checkpoints: list[dict], extra_files: list[str], model_repos: dict[str, str], pairs: list[dict] | None = None,
                 licence_files: dict[str, str] | None = None) -> str:
    """The README.md of the dataset repo.

    `stages`: {"name", "kind", "manifest", "path" (path in the repo, None when it has no rows),
    "rejects", "failures" (their rows)}; `licences`: {"seeds" | "eval": (recipe path, Licence)}.
    """
    # eval sets are test problems with gold: published as `test`, so nobody trains on them by accident
    configs = [{"config_name": s["name"], "data_files": [{"split": "test" if s["kind"] == "eval" else "train", "path": s["path"]}]}
               for s in stages if s["path"]]
    data = DatasetCardData(
        license=licences["seeds"][1].hub_id, pretty_name=f"orca-recipe run: {recipe.get('name', repo_id)}",
        tags=["orca-recipe", "orca-math", "synthetic", "math"], configs=configs, language=["en"],
    )
    lines = (_intro(repo_id, recipe, stages) + _lineage(stages) + _stage_table(stages) + _models(recipe, stages, model_repos)
             + _evaluation(checkpoints, pairs or []) + _licence(licences, stages, licence_files or {}))
    if extra_files:
        lines += ["## Files", "", "Besides the configs: " + ", ".join(f"`{f}`" for f in extra_files) + ".", ""]
    lines += ["## Citation", "", "The pipeline is Orca-Math's:", "", CITATION, ""]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def _intro(repo_id: str, recipe: dict[str, Any], stages: list[dict]) -> list[str]:
    with_rows = [s["name"] for s in stages if s["path"]]
    example = next((n for n in ("filter", "solve") if n in with_rows), with_rows[0] if with_rows else stages[0]["name"])
    return [f"# {repo_id}", "",
            f"Every dataset of one [orca-recipe](https://arxiv.org/abs/2402.14830) run of the recipe `{recipe.get('name', '?')}`"
            + (f": {recipe['description']}" if recipe.get("description") else "."),
            "One config per pipeline stage; each is that stage's `data.jsonl`, unchanged.", "",
            "```python", "from datasets import load_dataset", "",
            f"rows = load_dataset(\"{repo_id}\", \"{example}\", split=\"train\")", "```", ""]


def _lineage(stages: list[dict]) -> list[str]:
    lines = ["## Lineage", "", "Which stage's rows feed which (a training stage feeds a model, not rows):", "", "```mermaid", "graph LR"]
    for s in stages:
        for inp in s["manifest"].get("inputs") or {}:
            lines.append(f"  {inp} --> {s['name']}")
    lines += ["```", ""]
    for s in stages:
        inputs = ", ".join(f"`{i}`" for i in (s["manifest"].get("inputs") or {})) or "the recipe's data files"
        lines.append(f"- `{s['name']}` ({s['kind']}): {WHAT.get(s['kind'], s['kind'])}; from {inputs}")
    return lines + [""]


def _stage_table(stages: list[dict]) -> list[str]:
    lines = ["## Stages", "",
             "Rows are kept rows; rejected rows were dropped on purpose, failed ones could not be produced (both with a reason, "
             "in the stage's `rejects.jsonl` / `failures.jsonl` here).", "",
             "| config | kind | rows | rejected | failed | LLM requests | tokens | cost $ | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in stages:
        m = s["manifest"]
        u = m.get("usage") or {}
        tokens = (u.get("prompt_tokens") or 0) + (u.get("completion_tokens") or 0)
        cost = "" if not u.get("requests") else ("?" if u.get("cost") is None else f"{u['cost']:.4f}")
        label = f"`{s['name']}`" if s["path"] else f"{s['name']} (no rows: no config)"
        lines.append(f"| {label} | {s['kind']} | {m.get('rows', 0)} | {m.get('rejects', 0)} | {m.get('failures', 0)} | "
                     f"{u.get('requests', 0)} | {tokens:,} | {cost} | {m.get('seconds', 0):.1f} |")
    lines += ["", f"Total cost: {_cost(stages)}. Total stage time: {sum(s['manifest'].get('seconds') or 0 for s in stages):.0f} s.", ""]
    why = [(s, kind, rows) for s in stages for kind, rows in (("rejected", s["rejects"]), ("failed", s["failures"])) if rows]
    if why:
        lines += ["### Why rows were rejected or failed", ""]
        lines += [f"- `{s['name']}` {kind}: {_reasons(rows)}" for s, kind, rows in why]
        lines.append("")
    return lines


def _models(recipe: dict[str, Any], stages: list[dict], model_repos: dict[str, str]) -> list[str]:
    models = recipe.get("models") or {}
    agents = recipe.get("agents") or {}
    kinds = {s["name"]: s["kind"] for s in stages}
    lines = ["## Models", "", "| stage | agent | model |", "|---|---|---|"]
    for s in stages:
        for agent in agents_used(recipe, s["kind"]):
            key = (agents.get(agent) or {}).get("model", "?")
            trained = [i for i in (s["manifest"].get("inputs") or {}) if kinds.get(i) in TRAINING_KINDS]
            student = key == (recipe.get("training") or {}).get("student")
            served = f"the checkpoint of `{trained[0]}`" if student and trained else model_label(models, key)
            lines.append(f"| {s['name']} | {agent} | {served} |")
    training = recipe.get("training") or {}
    for s in stages:
        if s["kind"] in TRAINING_KINDS:
            student = model_label(models, training.get("student", "?"))
            repo = f" → [{model_repos[s['name']]}](https://huggingface.co/{model_repos[s['name']]})" if s["name"] in model_repos else ""
            lines.append(f"| {s['name']} | (Axolotl training) | from {student}{repo} |")
    return lines + [""]


def _evaluation(checkpoints: list[dict], pairs: list[dict]) -> list[str]:
    lines: list[str] = []
    if checkpoints:
        lines += ["## Evaluation", "", "Greedy pass@1 on the eval set, with a 95% Wilson interval.", "",
                  "| stage | checkpoint | n | correct | pass@1 | 95% CI |", "|---|---|---:|---:|---:|---|"]
        for c in checkpoints:
            lo, hi = c["ci95"]
            lines.append(f"| {c['stage']} | {c['model']} | {c['n']} | {c['correct']} | {c['pass_at_1']:.1%} | {lo:.1%} – {hi:.1%} |")
        lines.append("")
    planned = [q for q in pairs if q.get("planned")]
    if planned:
        lines += ["Planned paired comparisons on the same problems (one-sided exact McNemar, Holm-adjusted over the family):", "",
                  "| A → B | n | only A / only B | B − A (pp) | 95% CI (pp) | Holm p |", "|---|---:|---:|---:|---|---:|"]
        for q in planned:
            lo, hi = q["ci95"]
            lines.append(f"| {q['a']} → {q['b']} | {q['n']} | {q['only_a']} / {q['only_b']} | {100 * q['diff']:+.1f} | "
                         f"{100 * lo:+.1f} … {100 * hi:+.1f} | {q['p_holm']:.4f} |")
        lines.append("")
    return lines


def _licence(licences: dict[str, tuple[str, Licence]], stages: list[dict], licence_files: dict[str, str]) -> list[str]:
    lines = ["## Licence", ""]
    for role, (path, lic) in licences.items():
        if role == "eval" and not any(s["kind"] == "eval" for s in stages):
            continue
        shipped = licence_files.get(role)
        where = f" (the file `{shipped}` in this repository)" if shipped else (f" (from `{Path(lic.source).name}` beside `{path}`)" if lic.source else "")
        what = "Seed data" if role == "seeds" else "Eval set (the eval stages' problems and gold answers)"
        lines.append(f"- {what} `{path or '?'}`: {lic.text.rstrip('.')}{where}.")
    return lines + ["- Rows the models wrote are also subject to the terms of the models listed above.", ""]


CITATION = """```bibtex
@misc{mitra2024orcamath,
  title = {Orca-Math: Unlocking the potential of SLMs in Grade School Math},
  author = {Arindam Mitra and Hamed Khanpour and Corby Rosset and Ahmed Awadallah},
  year = {2024}, eprint = {2402.14830}, archivePrefix = {arXiv}, primaryClass = {cs.CL}
}
```"""

EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _base_model_id(models: dict[str, Any], key: str) -> str | None:
    """The Hub id of the base student for `base_model:`: the embedded model's, or a local folder's name."""
    local = (models.get(key) or {}).get("local") or {}
    if local.get("embedded"):
        return EMBEDDED_HUB_IDS.get(local["embedded"])
    return None


def model_card(repo_id: str, stage: dict, dataset_repo: str, recipe: dict[str, Any], evals: list[dict], licence: Licence) -> str:
    """The README.md of a checkpoint's model repo: what it was trained from and on, and how it scored."""
    m = stage["manifest"]
    rep = m.get("report") or {}
    models = recipe.get("models") or {}
    student = model_label(models, (recipe.get("training") or {}).get("student", "?"))
    base = _base_model_id(models, (recipe.get("training") or {}).get("student", "?"))
    data = ModelCardData(license=licence.hub_id, datasets=[dataset_repo], tags=["orca-recipe", "orca-math", "axolotl"],
                         library_name="transformers", pipeline_tag="text-generation", base_model=base)
    inputs = ", ".join(f"`{i}`" for i in (m.get("inputs") or {}))
    lines = [f"# {repo_id}", "",
             f"The `{stage['name']}` checkpoint ({stage['kind']}) of the orca-recipe run of `{recipe.get('name', '?')}`: "
             f"trained with Axolotl from {student} and {inputs}, on {rep.get('train_rows', m.get('rows'))} rows "
             f"({rep.get('steps', '?')} steps). The training rows are config `{stage['name']}` of "
             f"[{dataset_repo}](https://huggingface.co/datasets/{dataset_repo}).", ""]
    mine = [e for e in evals if e["model"] == stage["name"]]
    if mine:
        lines += ["| eval stage | n | pass@1 | 95% CI |", "|---|---:|---:|---|"]
        lines += [f"| {e['stage']} | {e['n']} | {e['pass_at_1']:.1%} | {e['ci95'][0]:.1%} – {e['ci95'][1]:.1%} |" for e in mine]
        lines.append("")
    lines += [f"Training data licence: {licence.text.rstrip('.')}; the base model's own licence applies too.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content

"""Judge verdict parsing and the KTO/DPO pairing rules, on hand-made cases."""

from __future__ import annotations

from pathlib import Path

from orca_recipe.stages.eval import wilson
from orca_recipe.stages.judge import parse_verdict
from orca_recipe.stages.preferences import dpo_pairs, kto_rows


def s(pid, i, correct, text=None):
    return {"id": f"{pid}#s{i}", "problem_id": pid, "question": f"Q{pid}", "response": text or f"{pid}-answer-{i}", "correct": correct}


TEACHER = {"p1": {"solution": "teacher p1 #### 5"}, "p2": {"solution": "teacher p2 #### 7"}, "p3": {"solution": "teacher p3 #### 9"}}
GROUPS = {
    "p1": [s("p1", 0, True), s("p1", 1, False), s("p1", 2, False), s("p1", 3, True)],  # mixed
    "p2": [s("p2", i, False) for i in range(4)],  # never right
    "p3": [s("p3", i, True) for i in range(4)],  # always right
}


def prompt_of(q):
    return f"<prompt {q}>"


def test_parse_verdict():
    assert parse_verdict("Error Analysis: both say 5. They match.\nFinal Verdict: Correct") is True
    assert parse_verdict("Error Analysis: 5 vs 6.\nFinal Verdict: **Incorrect**") is False
    assert parse_verdict("final verdict incorrect") is False
    assert parse_verdict("Correct!") is None  # no verdict line: retry, then a failure row


def test_dpo_pairs_follow_the_paper():
    pairs = dpo_pairs(GROUPS, TEACHER, prompt_of, max_per_problem=None, teacher_fallback=True)
    by = {}
    for p in pairs:
        by.setdefault(p["problem_id"], []).append(p)
    # p1: each incorrect sample paired with a correct student sample, round robin
    assert [(p["rejected_id"], p["chosen_id"]) for p in by["p1"]] == [("p1#s1", "p1#s0"), ("p1#s2", "p1#s3")]
    # p2: the student never got it right -> the teacher's solution is chosen for every wrong sample
    assert len(by["p2"]) == 4 and {p["chosen_source"] for p in by["p2"]} == {"teacher"}
    assert by["p2"][0]["chosen"] == [{"role": "assistant", "content": "teacher p2 #### 7"}]
    assert by["p2"][0]["prompt"] == [{"role": "user", "content": "<prompt Qp2>"}]
    # p3: always right -> nothing to prefer against
    assert "p3" not in by
    assert len(dpo_pairs(GROUPS, TEACHER, prompt_of, max_per_problem=1, teacher_fallback=True)) == 2
    assert "p2" not in {p["problem_id"] for p in dpo_pairs(GROUPS, TEACHER, prompt_of, max_per_problem=None, teacher_fallback=False)}


def test_kto_rows_label_every_sample():
    rows = kto_rows(GROUPS, TEACHER, prompt_of, max_per_problem=None, teacher_fallback=True, drop_all_correct=False)
    assert len(rows) == 12 + 1  # every sample + the teacher row for p2
    assert sum(r["label"] for r in rows) == 2 + 1 + 4
    teacher = [r for r in rows if r["source"] == "teacher"]
    assert teacher == [{"id": "p2#teacher", "problem_id": "p2", "prompt": "<prompt Qp2>", "completion": "teacher p2 #### 7", "label": True,
                        "source": "teacher", "user": "<prompt Qp2>", "response": "teacher p2 #### 7"}]
    dropped = kto_rows(GROUPS, TEACHER, prompt_of, max_per_problem=2, teacher_fallback=False, drop_all_correct=True)
    assert {r["problem_id"] for r in dropped} == {"p1", "p2"} and len(dropped) == 4


def test_kto_rows_use_the_students_own_chat_template(embedded_model_dir):
    """KTO trains on the text the tokenizer's chat template makes, as SFT, serving and eval do:
    its system prompt and end-of-turn token included, not a hard-coded ChatML."""
    from transformers import AutoTokenizer

    from orca_recipe.stages.student import ChatFormat

    fmt = ChatFormat(str(embedded_model_dir))
    rows = kto_rows(GROUPS, TEACHER, prompt_of, max_per_problem=None, teacher_fallback=True, drop_all_correct=False, fmt=fmt)
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    for r in rows:
        conversation = [{"role": "user", "content": r["user"]}, {"role": "assistant", "content": r["response"]}]
        assert r["prompt"] == tok.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
        assert r["prompt"] + r["completion"] == tok.apply_chat_template(conversation, tokenize=False)
        assert r["completion"].startswith(r["response"]) and tok.eos_token in r["completion"]


def test_wilson_interval():
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and 0.06 < hi < 0.08
    lo, hi = wilson(25, 50)
    assert 0.36 < lo < 0.37 and 0.63 < hi < 0.64
    assert wilson(0, 0) == (0.0, 0.0)


def test_judge_compares_with_gold_and_asks_the_llm_only_where_exact_cannot_decide():
    from types import SimpleNamespace

    from orca_recipe.stages.judge import exact_verdict, needs_llm

    ref = {"id": "p", "solution": "teacher says 8 #### 8", "final_answer": "8", "gold": "7"}
    assert exact_verdict({"response_answer": "7"}, ref, "exact_then_llm") == ("7", True, True)  # gold wins over the teacher
    assert exact_verdict({"response_answer": "8"}, ref, "exact_then_llm") == ("7", False, False)
    assert exact_verdict({"response_answer": None}, ref, "exact_then_llm") == ("7", None, False)  # no number: wrong, no LLM
    assert exact_verdict({"response_answer": "x+1"}, ref, "exact_then_llm")[2] is None  # undecidable: the LLM judges
    assert exact_verdict({"response_answer": "7"}, ref, "llm")[2] is None  # llm mode always asks
    assert exact_verdict({"response_answer": "7"}, {**ref, "gold": None}, "exact")[0] == "8"  # no gold: the teacher's answer

    def ctx(mode: str, answers: list[str | None]):
        samples = [{"problem_id": "p", "response_answer": a} for a in answers]
        return SimpleNamespace(section=SimpleNamespace(mode=mode), stage=SimpleNamespace(inputs=("practice_2", "filter")),
                               inputs={"practice_2": samples, "filter": [ref]})

    assert not needs_llm(ctx("exact_then_llm", ["7", "8", None]))  # no model server is started for this stage
    assert needs_llm(ctx("exact_then_llm", ["7", "x+1"])) and needs_llm(ctx("llm", ["7"])) and not needs_llm(ctx("exact", ["x"]))


def test_kto_losses_are_balanced_unless_the_recipe_sets_weights():
    from orca_recipe.stages.train import kto_weights

    rows = [{"label": True}] * 32 + [{"label": False}] * 122
    assert kto_weights(rows, {}) == {"kto_desirable_weight": 3.812}  # 3.812 x 32 = 122
    assert kto_weights(rows, {"kto_desirable_weight": 1.0}) == {}  # the recipe's own choice wins
    assert kto_weights(rows, {"kto_undesirable_weight": 0.5}) == {}
    assert kto_weights([{"label": True}] * 5 + [{"label": False}] * 3, {}) == {}  # already balanced
    assert kto_weights([{"label": False}] * 3, {}) == {}  # nothing desirable: nothing to weight


def test_training_rows_render_the_students_turn_from_the_compiled_stage(tmp_path):
    """SFT rows and DPO pairs are written under the student's prompt, which the training stages
    render but never call: it travels in their StageRun like a called agent's (no recipe)."""
    import asyncio

    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.stages import preferences
    from orca_recipe.stages.base import StageContext
    from orca_recipe.stages.train import sft_rows

    root = Path(__file__).resolve().parents[1]
    plan = compile_file(root / "recipes" / "tiny.yaml", run_dir=tmp_path)
    student = plan.prompts["student"].render(problem="Tom has 3 apples. How many?")
    solved = [{"id": "p", "question": "Tom has 3 apples. How many?", "solution": "3\n#### 3", "final_answer": "3"}]
    rows = sft_rows(StageContext(stage=plan.stage("sft"), inputs={"filter": solved}, out_dir=tmp_path / "sft"), solved)
    assert rows[0]["messages"][-2] == {"role": "user", "content": student} and rows[0]["messages"][-1]["content"] == "3\n#### 3"
    judged = [{"id": f"p#s{k}", "problem_id": "p", "question": solved[0]["question"], "response": f"#### {k + 2}", "correct": k == 1}
              for k in range(2)]
    ctx = StageContext(stage=plan.stage("preferences_2"), inputs={"judge_2": judged, "filter": solved}, out_dir=tmp_path / "p")
    pairs = asyncio.run(preferences.run(ctx)).rows
    assert plan.recipe.preferences.kind == "dpo" and len(pairs) == 1 and pairs[0]["prompt"] == [{"role": "user", "content": student}]

"""Answer extraction/equivalence, reply parsers and the dedup/decontamination filter."""

from __future__ import annotations

import asyncio
import json

from orca_recipe.answers import equivalent, extract_final, gsm8k_gold, to_number
from orca_recipe.stages.ask_me_anything import parse_questions
from orca_recipe.stages.evolve import parse_problem, parse_suggestions, parse_verdict
from orca_recipe.stages.filter import near_duplicates


def test_extract_final_prefers_markers():
    assert extract_final("3 + 4 = 7 apples\n#### 7") == ("7", "marker")
    assert extract_final("so \\boxed{\\frac{1}{2}} is it") == ("\\frac{1}{2}", "marker")
    assert extract_final("The answer is $1,250.") == ("$1,250", "marker")
    assert extract_final("She has 3 then 5 more, 8 total") == ("8", "last_number")
    assert extract_final("no numbers here") == (None, "none")
    assert extract_final("") == (None, "none")


def test_numbers_normalise_and_compare():
    assert to_number("$1,234.50") == to_number("1234.5")
    assert to_number("3/4") == to_number("0.75")
    assert to_number("18 dollars") == 18
    assert to_number("x+1") is None
    assert equivalent("72", "72.0") is True
    assert equivalent("$72", "72 clips") is True
    assert equivalent("71", "72") is False
    assert equivalent(None, "72") is None
    assert gsm8k_gold("48/2 = 24\n#### 72") == "72"


def test_parse_questions():
    text = "Statements: ...\n1. How many clips did she sell in May?\n2) What is 48 plus 24, in clips sold?\nnot a question"
    assert parse_questions(text) == ["How many clips did she sell in May?", "What is 48 plus 24, in clips sold?"]
    assert parse_questions("I cannot do that.") is None


def test_parse_editor_and_suggester_and_verifier():
    assert parse_problem("Problem: Tom has 5 apples and buys 3 bags of 4. How many now?\nSolution: 17") == "Tom has 5 apples and buys 3 bags of 4. How many now?"
    assert parse_problem("ok") is None
    assert parse_suggestions("1. Add a discount\n2. Add a second item") == "1. Add a discount\n2. Add a second item"
    assert parse_verdict("Verdict: Unsolvable") is False and parse_verdict("verdict: solvable") is True
    assert parse_verdict("hmm") is None


def test_near_duplicates_found_and_distinct_kept():
    base = "Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May how many did she sell"
    texts = [base, base + " altogether", "A train leaves at 3 pm travelling 60 miles per hour; how far has it gone by 6 pm?", base.replace("48", "48")]
    dup = near_duplicates(texts, 0.9)
    assert dup == {1: 0, 3: 0}


def test_filter_stage_reports_every_removal(tmp_path):
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.stages import filter as filt
    from orca_recipe.stages.base import StageContext

    from _cli import REPO

    q = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four."
    rows = [
        {"id": "a", "question": "Tom has 3 apples and buys 2 more. How many apples does he have now?"},
        {"id": "b", "question": "tom has 3 apples and buys 2 more.  How many apples does he have now?"},  # exact dup after normalising
        {"id": "c", "question": q + " How many are left?"},  # shares a 13-gram with the eval question
        {"id": "d", "question": "A shop sells pens at 2 dollars each. How much do 7 pens cost in dollars?"},
    ]
    contaminants = tmp_path / "eval.jsonl"  # the filter reads the file the compiler fingerprinted, and nothing else
    contaminants.write_text(json.dumps({"question": q, "answer": "#### 1"}) + "\n")
    plan = compile_file(REPO / "recipes" / "tiny.yaml", [f"filters.decontaminate.path={contaminants}"], run_dir=tmp_path)
    ctx = StageContext(stage=plan.stage("filter"), inputs={"solve": rows}, out_dir=tmp_path)
    result = asyncio.run(filt.run(ctx))
    assert [r["id"] for r in result.rows] == ["a", "d"]
    assert {r["id"]: r["reason"].split(":")[0] for r in result.rejects} == {"b": "exact_duplicate", "c": "contaminated"}
    assert result.report["exact_duplicates"] == 1 and result.report["contaminated"] == 1 and result.report["kept"] == 2

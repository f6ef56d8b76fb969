"""Hostile and broken input, as classes: every path the product reads can be of any file kind
and size, every recipe any YAML shape, every prompt any Jinja, every data file any JSON. Each
case ends in a valid plan or in one UserError (the CLI's exit 2) -- never another exception,
never a hang (each case runs under an alarm). Seeded, so a failure names its case."""

from __future__ import annotations

import os
import random
import signal
import socket
import string
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from _cli import REPO, run_cli

from orca_recipe.errors import UserError
from orca_recipe.problems import load_problems
from orca_recipe.prompts import Prompt, check_template, load_prompt
from orca_recipe.recipe.compile import compile_file

CASE_SECONDS = 10


@contextmanager
def time_limit(seconds: int, case: str):
    def fail(*_):
        raise TimeoutError(f"case {case!r} took over {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def outcome(fn, case: str) -> str:
    """'ok' or 'user error'; anything else fails the test with the case named."""
    with time_limit(CASE_SECONDS, case):
        try:
            fn()
            return "ok"
        except UserError as e:
            assert str(e).strip() and "Traceback" not in str(e), case
            return "user error"


def special_paths(tmp: Path) -> dict[str, Path]:
    """One path of every kind that is not a plain readable file."""
    out = {"missing": tmp / "missing.yaml", "directory": tmp / "a-dir", "fifo": tmp / "fifo", "dev_zero": Path("/dev/zero"),
           "dev_null": Path("/dev/null"), "symlink_loop": tmp / "loop", "dangling_symlink": tmp / "dangling",
           "socket": tmp / "sock", "huge_sparse": tmp / "huge.yaml", "binary": tmp / "binary.yaml", "latin1": tmp / "latin1.yaml",
           "empty": tmp / "empty.yaml"}
    out["directory"].mkdir()
    os.mkfifo(out["fifo"])
    os.symlink(tmp / "loop", out["symlink_loop"])
    os.symlink(tmp / "nowhere", out["dangling_symlink"])
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(out["socket"]))
    with open(out["huge_sparse"], "wb") as f:  # 8 GiB, no disk used
        f.truncate(8 << 30)
    out["binary"].write_bytes(bytes(range(256)) * 64)
    out["latin1"].write_bytes("name: caf\xe9\n".encode("latin-1"))
    out["empty"].write_text("")
    return out


def test_every_file_kind_as_a_recipe_a_base_a_prompt_and_a_data_file(tmp_path):
    paths = special_paths(tmp_path)
    tiny = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    for name, path in paths.items():
        # the recipe itself
        assert outcome(lambda: compile_file(path), f"recipe={name}") == "user error", name
        # an extends: base, a prompt file, a seeds file, an eval file, a chat template
        for key, where in (("extends", ("extends",)), ("prompt", ("agents", "student", "prompt")), ("seeds", ("seeds", "path")),
                           ("eval", ("eval", "path")), ("holdout", ("seeds", "holdout")),
                           ("template", ("models", "smol", "local", "chat_template"))):
            data = yaml.safe_load(yaml.safe_dump(tiny))
            for a in data["agents"].values():
                a["prompt"] = str(REPO / "prompts" / Path(a["prompt"]).name)
            for k in ("seeds", "eval"):
                data[k]["path"] = str(REPO / "data" / "gsm8k" / Path(data[k]["path"]).name)
            data["seeds"]["holdout"] = str(REPO / "data" / "gsm8k" / "dev.jsonl")
            data["filters"]["decontaminate"]["path"] = str(REPO / "data" / "gsm8k" / "test.jsonl")
            node = data
            for k in where[:-1]:
                node = node[k]
            node[where[-1]] = str(path)
            recipe = tmp_path / f"r-{name}-{key}.yaml"
            recipe.write_text(yaml.safe_dump(data))
            got = outcome(lambda: compile_file(recipe), f"{key}={name}")
            if not (name in ("missing", "dangling_symlink") and key in ("seeds", "eval")):  # a data file to come: a warning
                assert got == "user error", (name, key)
        # as a data file read at run time
        got = outcome(lambda: load_problems(str(path), "auto", "question", "answer", "gsm8k", limit=None, shuffle=False, seed=0,
                                            prefix="s", key="seeds.path"), f"data={name}")
        assert got == "user error", name
        got = outcome(lambda: load_prompt(str(path), None, key="agents.x.prompt", where=None), f"prompt={name}")
        assert got == "user error", name


def _random_yaml(rng: random.Random, depth: int = 0) -> str:
    """A random YAML-ish text: valid and broken shapes, anchors and aliases, odd scalars."""
    pieces = ["name: x\n", "models: {a: {model: openai/x}}\n", "&a [1, *a]\n", "a: &a [x, x]\nb: [*a, *a, *a]\n", "- - - -\n",
              "key: value: nested\n", "\t- tab\n", "? complex\n: key\n", "<<: *nope\n", "!!python/object:os.system {}\n",
              "x: !!binary AAAA\n", "{" * rng.randint(1, 200) + "}" * rng.randint(0, 200) + "\n", "seeds: [" + "1," * 50 + "]\n",
              "'unterminated\n", "%YAML 9.9\n---\n", "---\n---\n", "\x00\x01\x02\n", "name: " + "\u202e" * 3 + "\n",
              "agents: ~\n", "solve: 12\n", "iterations: -1\n", "models: [1, 2]\n", "\ufeffname: bom\n"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))


def test_random_yaml_shapes_fuzz(tmp_path):
    rng = random.Random(20261201)
    seen = set()
    for i in range(300):
        text = _random_yaml(rng)
        path = tmp_path / f"fuzz-{i}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        seen.add(outcome(lambda: compile_file(path), f"yaml case {i}: {text[:80]!r}"))
    assert seen == {"user error"}  # none of these is a recipe


def _alias_bomb(levels: int, width: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [_alias_bomb(9, 9), _alias_bomb(30, 2), "a: &a [*a]\n", "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
                                  "a: " + "{b: " * 5_000 + "1" + "}" * 5_000 + "\n", "name: ok\x00\n", "name: \x1b[31mred\n"])
def test_yaml_that_would_hang_or_crash_is_one_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    proc = run_cli("validate", path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert len(proc.stderr.strip().splitlines()) <= 3


JINJA_HOSTILE = [
    "{{ problem * 1000000000 }}", "{{ (problem ~ problem) * 99999999 }}", "{{ [problem] * 100000000 }}", "{{ problem|center(999999999) }}",
    "{{ problem.ljust(999999999) }}", "{{ '%999999999s'|format(problem) }}", "{{ 9 ** 9 ** 9 }}", "{{ problem|indent(999999999) }}",
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "{% for i in range(99999) %}{{ problem * 20 }}{% endfor %}", "{{ problem.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}",
    "{{ ''.__class__.__subclasses__() }}", "{{ problem / 0 }}", "{{ problem|int // 0 }}", "{{ problem['x'] }}", "{{ undefined_name }}",
    "{% set x = [] %}{% for i in range(10) %}{% do x.append(i) %}{% endfor %}", "{{ problem|attr('__class__') }}",
    "{{ range(100000000) }}", "{{ problem.format(problem) }}", "{{ lipsum(999999999) }}",
]


@pytest.mark.parametrize("src", JINJA_HOSTILE)
def test_hostile_templates_are_one_error_never_a_hang(src):
    problem = "Tom has 3 apples. " * 50
    got = outcome(lambda: Prompt(src, "agents.x.template").render(problem=problem), src)
    assert got in ("ok", "user error")


@pytest.mark.parametrize("tag", ["{% include 'other.j2' %}", "{% import 'm.j2' as m %}", "{% from 'm.j2' import f %}",
                                 "{% extends 'base.j2' %}"])
def test_include_import_extends_are_refused_at_validate(tmp_path, tag):
    prompt = tmp_path / "student.j2"
    prompt.write_text(f"Solve: {{{{ problem }}}}\n{tag}\n")
    with pytest.raises(UserError, match=r"a prompt is one self-contained file"):
        check_template(load_prompt(str(prompt), None, key="agents.student.prompt", where=None), {"student"},
                       key="agents.student.prompt", where=None)


def _random_jsonl_line(rng: random.Random) -> str:
    pieces = ['{"question": "q", "answer": "#### 1"}', '{"question": NaN}', '{"question": Infinity, "answer": "#### 1"}',
              '{"question": "\\ud800", "answer": "#### 1"}', '[' * 500 + ']' * 500, '{"question": ' + '[' * 200 + ']' * 200 + '}',
              '"just a string"', '12', 'null', '{"question": {"nested": 1}}', '{"question": true}', '{"question": ""}',
              '{"answer": "#### 2"}', '{"question": "q", "answer": 1e999}', '{bad json', '\x00\x00', '{"question": "q"}' * 3,
              '{"question": "' + "x" * 10_000 + '", "answer": "#### 3"}', "\ufeff" + '{"question": "bom", "answer": "#### 4"}']
    return rng.choice(pieces)


def test_random_data_files_fuzz(tmp_path):
    rng = random.Random(7)
    for i in range(200):
        lines = [_random_jsonl_line(rng) for _ in range(rng.randint(1, 8))]
        path = tmp_path / f"d{i}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")

        def load():
            got = load_problems(str(path), "auto", "question", "answer", "gsm8k", limit=None, shuffle=True, seed=0, prefix="s",
                                key="seeds.path")
            assert len(got.rows) + len(got.rejects) + got.outside_steps + got.held_out == got.read  # every row accounted for
            for r in got.rows:
                r["question"].encode("utf-8")  # what is kept can be written

        outcome(load, f"data case {i}: {lines!r}"[:300])

"""Security checks not covered elsewhere.

- Prompts are Jinja run in a sandbox: the classic escapes (``''.__class__.__mro__``,
  ``cycler.__init__.__globals__``, ``|attr``, ``str.format``, mutating a list) are stopped
  with a clean `UserError` naming the template, never a traceback, whether the template is
  rendered directly or in the middle of a run.
- API keys: tests/test_run_fake.py checks the run directory and CLI output when the key is
  rejected at preflight (GET /models); tests/test_llm_door.py checks the door's messages when
  a server echoes the key back in a 401. Here the same echo happens on a chat request in the
  middle of a CLI run (the model list was open, the chat route was not): the key must reach
  neither the terminal nor any file of the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _cli import run_cli
from fake_openai import FakeOpenAI, fake_recipe, pipeline_reply
from orca_recipe.errors import UserError
from orca_recipe.prompts import Prompt

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__[-1].__subclasses__()[0].__init__.__globals__ }}",
    "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ problem.__class__.__init__.__globals__['sys'] }}",
    "{{ problem.upper.__self__ }}",
    "{{ problem.__len__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ problem|attr('__class__') }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ '{0.__class__.__mro__}'.format(problem) }}",
    "{{ '{x.__class__}'.format_map({'x': problem}) }}",
    "{{ '%s' % problem.__class__ }}",
    "{{ [].append(1) }}",
    "{% set d = {} %}{{ d.update(a=1) }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_prompt_render_blocks_sandbox_escapes(source):
    prompt = Prompt(source + " {{ problem }}", "prompts/evil.j2")
    with pytest.raises(UserError) as ei:
        prompt.render(problem="Sam has 3 apples.")
    e = ei.value
    msg = str(e)
    assert "prompts/evil.j2" in msg and ("sandbox" in msg or "undefined" in msg), msg
    # a clean message: the Jinja exception is not chained into what the CLI would print
    assert e.__cause__ is None and e.__suppress_context__
    assert "Traceback" not in msg and "subclasses" not in msg.replace(source, "")


def test_prompt_render_sandbox_range_limit_is_a_user_error():
    with pytest.raises(UserError) as ei:
        Prompt("{{ range(10**9)|list|length }} {{ problem }}", "prompts/big.j2").render(problem="p")
    assert "prompts/big.j2" in str(ei.value) and ei.value.__cause__ is None


def test_prompt_render_plain_templates_still_work():
    p = Prompt("Solve: {{ problem|trim }}{% for i in range(n) %} {{ i }}{% endfor %} {{ '{0}'.format(n) }}", "t.j2")
    assert p.render(problem=" 2+2 ", n=2) == "Solve: 2+2 0 1 2"


def _recipe(tmp: Path, api_base: str, *, solver: Path | None = None, key_env: str | None = None) -> Path:
    sections = {"agents": {"solver": {"prompt": str(solver)}}} if solver else {}
    return fake_recipe(tmp / "r.yaml", api_base, name="sec",
                       endpoint={"max_retries": 1} | ({"api_key_env": key_env} if key_env else {}),
                       seeds={"limit": 3}, ask_me_anything=None, evolve=None, solve={"inputs": ["seeds"]},
                       filters={"dedup": None, "decontaminate": None}, **sections)


def test_sandbox_escape_in_the_middle_of_a_run_is_one_clean_error(tmp_path):
    evil = tmp_path / "solver.j2"
    evil.write_text("{{ problem }}\n{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    with FakeOpenAI(responder=pipeline_reply) as srv:
        proc = run_cli("run", _recipe(tmp_path, srv.api_base, solver=evil), "--run-dir", tmp_path / "run")
        assert srv.total_requests == 0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error:") and "sandbox" in proc.stderr and "solver.j2" in proc.stderr


KEY = "sk-test-PLANTED-chat401-5a4b3c"


def test_key_echoed_by_a_chat_401_mid_run_reaches_no_output_or_file(tmp_path):
    # GET /models is open (preflight passes); the first chat request is refused with a 401 that
    # quotes the Authorization header back, as careless servers do
    with FakeOpenAI(responder=pipeline_reply, fault="401", fail_first=1, echo_key=True) as srv:
        run_dir = tmp_path / "run"
        proc = run_cli("run", _recipe(tmp_path, srv.api_base, key_env="ORCA_SEC_KEY"), "--run-dir", run_dir,
                       env={"ORCA_SEC_KEY": KEY})
        assert f"Bearer {KEY}" in srv.auth_headers  # the key was sent, so the 401 body held it
        assert srv.faults_served["401"] >= 1
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "rejected" in proc.stderr and "ORCA_SEC_KEY" in proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert KEY not in text and "PLANTED" not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "requests.sqlite" for p in files)
    for p in files:
        assert b"PLANTED" not in p.read_bytes(), p


def test_an_unexpected_error_where_a_key_is_in_scope_never_prints_the_key():
    """typer can print every frame's locals in its pretty tracebacks (it did by default in
    older releases); ours must not, whichever typer is installed."""
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from orca_recipe import cli\n"
        "@cli.app.command('boom')\n"
        "def boom():\n"
        "    api_key = os.environ['ORCA_TEST_SECRET']\n"
        "    headers = {'Authorization': 'Bearer ' + api_key}\n"
        "    raise RuntimeError('something nobody planned for')\n"
        "sys.argv = ['orca-recipe', 'boom']\n"
        "cli.main()\n"
    )
    secret = "sk-test-5f0c1a9e77d24b8b"
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, ORCA_TEST_SECRET=secret, COLUMNS="200"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "something nobody planned for" in proc.stderr + proc.stdout  # the error itself is shown
    assert secret not in proc.stderr + proc.stdout

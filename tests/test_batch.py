"""Provider batch APIs (`batch: true`) against a loopback fake of the files and batches endpoints:
status transitions, expiry, partial failure, a SIGKILL between submit and download, and the
batch price in `plan`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli import REPO, run_cli
from fake_batches import FakeBatches, wait_until
from fake_openai import fake_recipe, pipeline_reply
from orca_recipe.llm.cache import RequestCache
from orca_recipe.llm.door import LLM, Endpoint, LLMError, Usage

PRICE = (0.15e-6, 0.6e-6)  # gpt-4o-mini, per token
BATCH_PRICE = (0.075e-6, 0.3e-6)


def msgs(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def batch_llm(tmp_path: Path, base: str, provider: str = "openai", **kw) -> LLM:
    ep = Endpoint(name="t", litellm_model=f"{provider}/gpt-4o-mini", identity="t", api_base=base, price=PRICE,
                  batch=True, batch_price=BATCH_PRICE, batch_poll_s=0.02, max_retries=kw.pop("max_retries", 3), **kw)
    return LLM({"t": ep}, RequestCache(tmp_path / "cache.sqlite"), batch_dir=tmp_path / "batches")


async def ask_all(llm: LLM, texts: list[str], usage: Usage, n: int = 1):
    if n == 1:
        return await asyncio.gather(*(llm.complete("t", msgs(t), {"temperature": 0}, usage=usage) for t in texts),
                                    return_exceptions=True)
    return await asyncio.gather(*(llm.complete_n("t", msgs(t), {"temperature": 0.7}, n, usage=usage) for t in texts))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_requests_go_out_as_one_batch_and_land_in_the_cache(tmp_path, provider):
    texts = [f"problem {i}" for i in range(25)]
    with FakeBatches() as fb:
        base = fb.api_base if provider == "openai" else fb.anthropic_base
        llm = batch_llm(tmp_path, base, provider)
        u = Usage()
        out = asyncio.run(ask_all(llm, texts, u))
        assert [c.text for c in out] == [pipeline_reply(t, 0, 0) for t in texts]
        assert fb.batches_created == 1 and fb.requests_billed == 25
        assert u.requests == 25 and u.failures == 0 and not any(c.cached for c in out)
        assert u.cost == pytest.approx(25 * (10 * BATCH_PRICE[0] + 5 * BATCH_PRICE[1]))  # the batch rate
        jobs = [json.loads(p.read_text()) for p in (tmp_path / "batches").glob("*.json")]
        assert [j["state"] for j in jobs] == ["done"] and len(jobs[0]["requests"]) == 25

        again = Usage()
        out2 = asyncio.run(ask_all(batch_llm(tmp_path, base, provider), texts, again))
        assert [c.text for c in out2] == [c.text for c in out]
        assert again.cache_hits == 25 and again.requests == 0 and fb.batches_created == 1


def test_n_samples_ride_in_one_batch_request(tmp_path):
    with FakeBatches() as fb:
        u = Usage()
        out = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base), ["a", "b", "c"], u, n=4))
        assert [[c.text for c in cs] for cs in out] == [[pipeline_reply(t, 0, i) for i in range(4)] for t in "abc"]
        assert fb.batches_created == 1 and fb.requests_billed == 3 and u.requests == 3


def test_expired_and_partly_failed_batches_send_only_what_is_missing(tmp_path):
    texts = [f"q{i}" for i in range(12)]
    with FakeBatches(expire_first=1, fail_once=True) as fb:
        u = Usage()
        out = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base), texts, u))
        assert [c.text for c in out] == [pipeline_reply(t, 0, 0) for t in texts]
        # batch 1 expires with half answered (and a third of those errored); the rest goes again
        assert fb.batches_created >= 2
        assert fb.requests_billed == 12  # nothing answered was asked for again
        sizes = [len(b["requests"]) for b in fb.batches.values()]
        assert sizes[0] == 12 and all(s < 12 for s in sizes[1:])
        assert u.requests == 12 and u.failures == 0


def test_a_request_no_batch_answers_fails_after_max_retries_rounds(tmp_path):
    with FakeBatches(never={"x1"}) as fb:  # every batch holding x1 expires without answering it
        u = Usage()
        out = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base, max_retries=1), ["x0", "x1"], u))
        assert out[0].text == pipeline_reply("x0", 0, 0)
        assert isinstance(out[1], LLMError) and "expired" in out[1].reason and out[1].attempts == 2
        assert fb.batches_created == 2 and u.failures == 1


def batch_recipe(tmp_path: Path, api_base: str, **endpoint) -> Path:
    return fake_recipe(tmp_path / "batch.yaml", api_base, name="batched",
                       endpoint={"model": "openai/gpt-4o-mini", "batch": True, "batch_poll_s": 0.1, **endpoint},
                       seeds={"limit": 12}, evolve={"limit": 12})


def test_generation_half_survives_a_kill_between_submit_and_download(tmp_path):
    """The whole generation half through the CLI on `batch: true`; the run is SIGKILLed while
    its first batch is out, and the rerun polls that batch instead of submitting it again."""
    with FakeBatches(hold=True) as fb:
        recipe = batch_recipe(tmp_path, fb.api_base)
        run_dir = tmp_path / "run"
        args = [sys.executable, "-m", "orca_recipe.cli", "run", str(recipe), "--run-dir", str(run_dir), "--until", "solve"]
        proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, NO_COLOR="1"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: fb.batches_created == 1 and fb.polls >= 3, timeout=60)
            jobs = list((run_dir / "batches").glob("*.json"))
            assert len(jobs) == 1 and json.loads(jobs[0].read_text())["state"] == "submitted"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        first = next(iter(fb.batches.values()))
        assert fb.requests_billed == 0  # killed before the download: nothing answered yet

        fb.release()
        done = run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve", timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        assert [b["id"] for b in fb.batches.values()][0] == first["id"]
        assert all(b["requests"] for b in fb.batches.values())
        # the first batch was polled to its end by the rerun, never submitted again
        first_ids = {r["custom_id"] for r in first["requests"]}
        later_ids = [r["custom_id"] for b in list(fb.batches.values())[1:] for r in b["requests"]]
        assert not first_ids & set(later_ids)
        assert fb.requests_billed == sum(len(b["requests"]) for b in fb.batches.values())
        for stage in ("ask_me_anything", "evolve", "solve"):
            m = json.loads((run_dir / stage / "manifest.json").read_text())
            assert m["llm_failures"] == 0, stage
        assert json.loads((run_dir / "solve" / "manifest.json").read_text())["rows"] > 0
        assert all(json.loads(p.read_text())["state"] == "done" for p in (run_dir / "batches").glob("*.json"))

        billed = fb.requests_billed
        third = run_cli("run", recipe, "--run-dir", run_dir, "--until", "solve", timeout=120)
        assert third.returncode == 0 and fb.requests_billed == billed  # all from the cache


def test_plan_prices_batch_calls_at_the_batch_rate(tmp_path):
    from orca_recipe.recipe.compile import compile_file
    from orca_recipe.recipe.preview import estimate, example_prompts

    def total(batch: bool) -> float:
        recipe = batch_recipe(tmp_path / ("b" if batch else "s"), "http://127.0.0.1:9/v1", batch=batch)
        plan = compile_file(recipe, [], None)
        return sum(e.cost for e in estimate(plan, example_prompts(plan)[0]).values())

    regular, batched = total(False), total(True)
    assert regular > 0 and batched == pytest.approx(regular / 2, rel=1e-6)  # gpt-4o-mini's batch price is half
    shown = run_cli("plan", batch_recipe(tmp_path / "c", "http://127.0.0.1:9/v1"), "--no-prompts")
    assert shown.returncode == 0 and "smol priced at the batch rate" in shown.stdout


def test_batch_needs_a_provider_with_a_batch_api(tmp_path):
    recipe = batch_recipe(tmp_path, "http://127.0.0.1:9/v1", model="hosted_vllm/foo")
    out = run_cli("validate", recipe)
    assert out.returncode == 2 and "batch: true needs a model of a provider with a batch API" in out.stderr


def test_a_job_whose_polls_fail_is_never_sent_again_but_collected_next_run(tmp_path):
    """The batches API stops answering while a job is out: its requests fail for this run
    (nothing re-submitted, nothing paid twice) and the next run collects the same job."""
    with FakeBatches(hold=True) as fb:
        llm = batch_llm(tmp_path, fb.api_base, max_backoff_s=0.05)  # the API's retries, quickly

        async def go():
            task = asyncio.ensure_future(ask_all(llm, ["p0", "p1"], Usage()))
            await asyncio.to_thread(wait_until, lambda: fb.polls >= 2)
            fb.broken = True  # every call from now on: HTTP 503
            return await task

        out = asyncio.run(go())
        assert all(isinstance(o, LLMError) and "still out" in o.reason for o in out)
        assert fb.batches_created == 1
        fb.broken, fb.hold = False, False
        again = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base), ["p0", "p1"], Usage()))
        assert [c.text for c in again] == [pipeline_reply(t, 0, 0) for t in ("p0", "p1")]
        assert fb.batches_created == 1 and fb.requests_billed == 2


def _leave_a_job_out(tmp_path: Path, fb: FakeBatches) -> None:
    """A first run whose polls fail while its job is out: the job stays `submitted` on disk."""
    llm = batch_llm(tmp_path, fb.api_base, max_backoff_s=0.05)

    async def go():
        task = asyncio.ensure_future(ask_all(llm, ["p0", "p1"], Usage()))
        await asyncio.to_thread(wait_until, lambda: fb.polls >= 2)
        fb.broken_polls = True
        return await task

    assert all(isinstance(o, LLMError) and "still out" in o.reason for o in asyncio.run(go()))
    assert fb.batches_created == 1 and [json.loads(p.read_text())["state"] for p in (tmp_path / "batches").glob("*.json")] == ["submitted"]


def test_a_transient_poll_failure_on_resume_never_resends_a_paid_request(tmp_path):
    """The rerun polls the job the last run left out and the poll fails again (503), while
    submitting would work: the job is kept, its requests fail for this run, nothing is sent
    twice; once the API answers, the same job is collected and billed once."""
    with FakeBatches(hold=True) as fb:
        _leave_a_job_out(tmp_path, fb)
        again = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base, max_backoff_s=0.05), ["p0", "p1"], Usage()))
        assert all(isinstance(o, LLMError) and "still out" in o.reason for o in again)
        assert fb.batches_created == 1  # not re-submitted
        assert [json.loads(p.read_text())["state"] for p in (tmp_path / "batches").glob("*.json")] == ["submitted"]
        fb.broken_polls, fb.hold = False, False
        done = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base), ["p0", "p1"], Usage()))
        assert [c.text for c in done] == [pipeline_reply(t, 0, 0) for t in ("p0", "p1")]
        assert fb.batches_created == 1 and fb.requests_billed == 2


def test_a_job_the_provider_no_longer_knows_is_sent_again(tmp_path):
    """Only a provider's 'no such batch' (404) abandons a job: then its requests go in a new one."""
    with FakeBatches(hold=True) as fb:
        _leave_a_job_out(tmp_path, fb)
        fb.broken_polls, fb.hold, fb.forget = False, False, set(fb.batches)
        done = asyncio.run(ask_all(batch_llm(tmp_path, fb.api_base), ["p0", "p1"], Usage()))
        assert all(not isinstance(c, Exception) and "####" in c.text for c in done)
        states = sorted(json.loads(p.read_text())["state"].split(":")[0] for p in (tmp_path / "batches").glob("*.json"))
        assert states[0] == "abandoned" and fb.batches_created == 2

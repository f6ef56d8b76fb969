"""The LLM door against a fault-injecting fake OpenAI server: cache, retries, limits, secrets."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import traceback
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402,F401  (the `llm` extra; scripts/setup.sh installs it)

from orca_recipe.errors import UserError  # noqa: E402
from orca_recipe.llm.cache import RequestCache  # noqa: E402
from orca_recipe.llm.door import (  # noqa: E402
    LLM, Endpoint, EndpointError, LLMError, Usage,
)
from orca_recipe.llm.limits import Bucket  # noqa: E402
from orca_recipe.recipe.schema import ModelEndpoint  # noqa: E402

from fake_openai import FakeOpenAI, reply_text  # noqa: E402

KEY = "sk-test-PLANTED-123"
KEY_ENV = "ORCA_TEST_DOOR_KEY"


def msgs(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def make_llm(tmp_path: Path, srv: FakeOpenAI | None = None, *, api_base: str | None = None,
             cache: RequestCache | None = None, **kw) -> LLM:
    ep_kw = dict(name="m", litellm_model="hosted_vllm/fake", identity="fake-model",
                 api_base=api_base or (srv.api_base if srv else None), timeout_s=2.0, max_retries=3)
    ep_kw.update(kw)
    ep = Endpoint(**ep_kw)
    return LLM({"m": ep}, cache or RequestCache(tmp_path / "cache.sqlite"), backoff_base_s=0.01,
               preflight_timeout_s=1.0)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the cache ------------------------------------------------------------------------------
def test_cache_hit_makes_no_request(tmp_path):
    with FakeOpenAI() as srv:
        u1, u2 = Usage(), Usage()
        llm = make_llm(tmp_path, srv)
        c1 = asyncio.run(llm.complete("m", msgs("2+2?"), {"temperature": 0}, usage=u1))
        assert c1.text == reply_text("2+2?", 0, 0) and not c1.cached
        assert srv.total_requests == 1 and u1.requests == 1 and u1.prompt_tokens > 0
        llm.cache.close()
        # a fresh process: new LLM, same cache file; the port of the server is not part of the key
        llm2 = make_llm(tmp_path, srv)
        c2 = asyncio.run(llm2.complete("m", msgs("2+2?"), {"temperature": 0, "top_p": None}, usage=u2))
        assert c2.cached and c2.text == c1.text and c2.cost == 0.0
        assert srv.total_requests == 1
        assert u2 == Usage(cache_hits=1)
        # a different sampling setting is a different request
        asyncio.run(llm2.complete("m", msgs("2+2?"), {"temperature": 0.5}, usage=u2))
        assert srv.total_requests == 2


def test_duplicate_requests_in_flight_are_paid_once(tmp_path):
    with FakeOpenAI(latency=0.2) as srv:
        llm = make_llm(tmp_path, srv)
        u = Usage()

        async def go():
            return await asyncio.gather(*(llm.complete("m", msgs("same"), {}, usage=u) for _ in range(5)))

        out = asyncio.run(go())
        assert len({c.text for c in out}) == 1
        assert srv.total_requests == 1 and u.requests == 1 and u.cache_hits == 4


def test_cache_key_is_canonical():
    k = RequestCache.key
    assert k("a", msgs("x"), {"temperature": 0, "top_p": 1}, 0) == k("a", msgs("x"), {"top_p": 1, "temperature": 0}, 0)
    assert k("a", msgs("x"), {}, 0) != k("a", msgs("x"), {}, 1)
    assert k("a", msgs("x"), {}, 0) != k("b", msgs("x"), {}, 0)
    assert k("a", msgs("x"), {}, 0) != k("a", msgs("y"), {}, 0)


# ---- faults ---------------------------------------------------------------------------------
# Each fault through both clients: the door's own (hosted_vllm/ with an api_base) and litellm's
# (the recipe's `client: litellm`); one client is enough for the slow one.
FAULT_CASES = [(f, c) for f in ["429", "500", "503", "reset", "truncated", "nonjson", "empty", "hang"]
               for c in ["native", "litellm"] if not (f == "hang" and c == "litellm")]


@pytest.mark.parametrize("fault,client", FAULT_CASES)
def test_each_fault_is_retried(tmp_path, fault, client):
    with FakeOpenAI(fault=fault, fail_first=2, retry_after=0, hang_s=5) as srv:
        llm = make_llm(tmp_path, srv, litellm_model="openai/fake" if client == "litellm" else "hosted_vllm/fake",
                       via_litellm=client == "litellm", timeout_s=2.0)  # the first call also builds the SDK client
        assert llm.endpoints["m"].native == (client == "native")
        u = Usage()
        c = asyncio.run(llm.complete("m", msgs(f"q {fault}"), {"max_tokens": 16}, usage=u))
        assert c.text == reply_text(f"q {fault}", 0, 0)
        assert u.requests == 1 and u.failures == 0
        assert srv.attempts_for(f"q {fault}") == 3
        assert u.retries == 2  # every attempt is the door's own: no client library re-sends unasked
        assert srv.ok_requests == 1


def test_retry_after_is_honoured(tmp_path):
    with FakeOpenAI(fault="429", fail_first=1, retry_after=1) as srv:
        llm = make_llm(tmp_path, srv)
        t = time.monotonic()
        c = asyncio.run(llm.complete("m", msgs("slow down"), {}))
        dt = time.monotonic() - t
        assert c.text == reply_text("slow down", 0, 0)
        assert 0.95 <= dt < 3.0, dt  # backoff base is 0.01 s: the wait came from Retry-After


def test_a_retry_after_beyond_max_backoff_fails_instead_of_sleeping(tmp_path):
    with FakeOpenAI(fault="429", fail_first=1, retry_after=86400) as srv:
        llm = make_llm(tmp_path, srv, max_backoff_s=5)
        u = Usage()
        t = time.monotonic()
        with pytest.raises(LLMError) as ei:
            asyncio.run(llm.complete("m", msgs("come back tomorrow"), {}, usage=u))
        assert time.monotonic() - t < 3 and "86400 s, beyond max_backoff_s=5" in ei.value.reason
        assert srv.total_requests == 1 and u.failures == 1 and len(llm.cache) == 0
        # nothing lost: a later call (the endpoint healthy again) asks again and is answered
        assert asyncio.run(llm.complete("m", msgs("come back tomorrow"), {})).text == reply_text("come back tomorrow", 0, 0)


def test_timeout_is_a_deadline_for_the_whole_reply_not_each_byte(tmp_path):
    """A body that trickles in a byte every 0.3 s never trips a per-read timeout; the
    attempt's deadline does, and the request ends within attempts x timeout + backoff."""
    with FakeOpenAI(fault="trickle", fail_first=10**6, trickle_s=0.3) as srv:
        llm = make_llm(tmp_path, srv, timeout_s=1.0, max_retries=2, max_backoff_s=0.5)
        u = Usage()
        t = time.monotonic()
        with pytest.raises(LLMError) as ei:
            asyncio.run(llm.complete("m", msgs("drip"), {}, usage=u))
        dt = time.monotonic() - t
        assert dt < 3 * 1.0 + 2 * 0.5 + 1.5, dt  # 3 attempts of 1 s, 2 waits of at most 0.5 s, slack
        assert "timeout_s=1" in ei.value.reason and ei.value.attempts == 3 and srv.total_requests == 3
        assert u.retries == 2 and u.failures == 1


def test_the_litellm_path_has_a_whole_reply_deadline_too(tmp_path):
    """litellm's own `timeout` bounds each read: a trickling reply must still end at timeout_s."""
    with FakeOpenAI(fault="trickle", fail_first=10**6, trickle_s=0.3) as srv:
        llm = make_llm(tmp_path, srv, timeout_s=1.0, max_retries=1, max_backoff_s=0.5, via_litellm=True)
        t = time.monotonic()
        with pytest.raises(LLMError) as ei:
            asyncio.run(llm.complete("m", msgs("drip"), {}))
        assert time.monotonic() - t < 30  # ended by the deadline (a trickle of 10**6 bytes at 0.3 s each would take days)
        assert "no whole reply within timeout_s=1" in ei.value.reason


def test_permanent_failure_is_llm_error(tmp_path):
    with FakeOpenAI(fault="500", fail_first=10**6) as srv:
        llm = make_llm(tmp_path, srv, max_retries=2)
        u = Usage()
        with pytest.raises(LLMError) as ei:
            asyncio.run(llm.complete("m", msgs("never"), {}, usage=u))
        assert "HTTP 500" in ei.value.reason and len(ei.value.reason) <= 300
        assert ei.value.attempts == 3 and srv.total_requests == 3
        assert u.failures == 1 and u.retries == 2 and u.requests == 0
        assert len(llm.cache) == 0
        # not fatal: the endpoint still serves other requests
        srv.fault = None
        assert asyncio.run(llm.complete("m", msgs("fine"), {})).text == reply_text("fine", 0, 0)


def test_bad_request_fails_at_once(tmp_path):
    with FakeOpenAI(fault="400", fail_first=10**6) as srv:
        llm = make_llm(tmp_path, srv)
        u = Usage()
        with pytest.raises(LLMError) as ei:
            asyncio.run(llm.complete("m", msgs("too long"), {}, usage=u))
        assert "context length" in ei.value.reason
        assert srv.total_requests == 1 and u.retries == 0 and u.failures == 1


# ---- fatal endpoint errors ------------------------------------------------------------------
def test_401_is_endpoint_error_once(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAI(require_key="sk-the-right-one") as srv:
        llm = make_llm(tmp_path, srv, api_key_env=KEY_ENV)
        with pytest.raises(EndpointError) as ei:
            asyncio.run(llm.complete("m", msgs("hi"), {}))
        assert isinstance(ei.value, UserError)
        assert ei.value.key == "models.m" and KEY_ENV in str(ei.value) and "rejected" in str(ei.value)
        assert srv.total_requests == 1
        # every later request of the endpoint fails at once, without touching the server

        async def many():
            return await asyncio.gather(*(llm.complete("m", msgs(f"q{i}"), {}) for i in range(50)),
                                        return_exceptions=True)

        outs = asyncio.run(many())
        assert all(isinstance(o, EndpointError) for o in outs)
        assert srv.total_requests == 1


def test_model_not_found_is_endpoint_error(tmp_path):
    with FakeOpenAI(models=["other-model"]) as srv:
        llm = make_llm(tmp_path, srv)
        with pytest.raises(EndpointError, match="not found"):
            asyncio.run(llm.complete("m", msgs("hi"), {}))
        with pytest.raises(EndpointError, match="not served"):
            asyncio.run(make_llm(tmp_path, srv, cache=llm.cache).preflight("m"))


def test_preflight_missing_key_env(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAI() as srv:
        llm = make_llm(tmp_path, srv, api_key_env=KEY_ENV)
        with pytest.raises(EndpointError) as ei:
            asyncio.run(llm.preflight("m"))
        assert KEY_ENV in str(ei.value) and str(ei.value).startswith("models.m: ")
        assert srv.model_list_requests == 0
        with pytest.raises(EndpointError):
            asyncio.run(llm.complete("m", msgs("hi"), {}))
        assert srv.total_requests == 0


def test_preflight_hosted_provider_needs_its_key(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    llm = make_llm(tmp_path, litellm_model="anthropic/claude-3-5-sonnet-20241022", identity="anthropic/claude")
    with pytest.raises(EndpointError, match="ANTHROPIC_API_KEY"):
        asyncio.run(llm.preflight("m"))
    llm2 = make_llm(tmp_path, cache=llm.cache, litellm_model="no-such-model-xyz", identity="x")
    with pytest.raises(EndpointError, match="unknown model"):
        asyncio.run(llm2.preflight("m"))


def test_preflight_unreachable(tmp_path):
    llm = make_llm(tmp_path, api_base=f"http://127.0.0.1:{dead_port()}/v1", max_retries=1)
    t = time.monotonic()
    with pytest.raises(EndpointError) as ei:
        asyncio.run(llm.preflight("m"))
    assert "cannot reach" in str(ei.value) and time.monotonic() - t < 3
    # the first request of an endpoint that is not there: EndpointError too, after its retries
    llm2 = make_llm(tmp_path, cache=llm.cache, api_base=f"http://127.0.0.1:{dead_port()}/v1", max_retries=1)
    with pytest.raises(EndpointError, match="connection refused"):
        asyncio.run(llm2.complete("m", msgs("hi"), {}))


def test_preflight_ok_and_auth(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAI(require_key=KEY) as srv:
        asyncio.run(make_llm(tmp_path, srv, api_key_env=KEY_ENV).preflight("m"))
        assert srv.model_list_requests == 1
    with FakeOpenAI(require_key="sk-other") as srv:
        with pytest.raises(EndpointError, match="rejected"):
            asyncio.run(make_llm(tmp_path, srv, api_key_env=KEY_ENV).preflight("m"))


# ---- n samples ------------------------------------------------------------------------------
@pytest.mark.parametrize("ignore_n", [False, True])
def test_complete_n(tmp_path, ignore_n):
    with FakeOpenAI(ignore_n=ignore_n) as srv:
        llm = make_llm(tmp_path, srv)
        u = Usage()
        sampling = {"temperature": 0.7, "top_p": 0.95, "seed": 10}
        out = asyncio.run(llm.complete_n("m", msgs("sample me"), sampling, 4, usage=u))
        assert len(out) == 4 and len({c.text for c in out}) == 4
        assert all(not c.cached for c in out)
        if ignore_n:
            # one n=4 request answered with one choice, then separate calls seeded 11, 12, 13
            assert srv.total_requests == 4
            assert [c.text for c in out] == [reply_text("sample me", 10 + i, 0) for i in range(4)]
        else:
            assert srv.total_requests == 1 and srv.bodies[0]["n"] == 4 and srv.bodies[0]["seed"] == 10
            assert [c.text for c in out] == [reply_text("sample me", 10, i) for i in range(4)]
        assert u.requests == srv.total_requests
        assert sum(c.completion_tokens for c in out) == u.completion_tokens
        assert sum(c.prompt_tokens for c in out) == u.prompt_tokens
        before = srv.total_requests
        again = asyncio.run(llm.complete_n("m", msgs("sample me"), sampling, 4, usage=u))
        assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again)
        one = asyncio.run(llm.complete("m", msgs("sample me"), sampling, sample_index=2))
        assert one.cached and one.text == out[2].text
        assert srv.total_requests == before and u.cache_hits == 4
        if ignore_n:  # the door remembers: next time straight to separate calls
            asyncio.run(llm.complete_n("m", msgs("other"), sampling, 3))
            assert srv.total_requests == before + 3 and all("n" not in b for b in srv.bodies[before:])


def test_complete_n_separate_calls(tmp_path):
    with FakeOpenAI() as srv:
        llm = make_llm(tmp_path, srv, supports_n=False)
        out = asyncio.run(llm.complete_n("m", msgs("p"), {"temperature": 1.0}, 3))
        assert sorted(b["seed"] for b in srv.bodies) == [0, 1, 2] and all("n" not in b for b in srv.bodies)
        assert [c.text for c in out] == [reply_text("p", i, 0) for i in range(3)]
    with FakeOpenAI() as srv:  # some samples cached: only the missing ones are fetched, separately
        llm = make_llm(tmp_path, srv, cache=llm.cache)
        asyncio.run(llm.complete("m", msgs("q"), {}, sample_index=1))
        out = asyncio.run(llm.complete_n("m", msgs("q"), {}, 4))
        assert srv.total_requests == 4 and [c.cached for c in out] == [False, True, False, False]
        assert len({c.text for c in out}) == 4


# ---- limits ---------------------------------------------------------------------------------
def test_concurrency_limit(tmp_path):
    with FakeOpenAI(latency=0.05) as srv:
        llm = make_llm(tmp_path, srv, concurrency=3)

        async def go():
            return await asyncio.gather(*(llm.complete("m", msgs(f"c{i}"), {}) for i in range(24)))

        asyncio.run(go())
        assert srv.total_requests == 24 and srv.max_in_flight == 3


def test_256_concurrent_requests_no_database_locked(tmp_path):
    with FakeOpenAI() as srv:
        cache = RequestCache(tmp_path / "cache.sqlite")
        llm = make_llm(tmp_path, srv, cache=cache, concurrency=256)
        u = Usage()

        async def go():
            return await asyncio.gather(*(llm.complete("m", msgs(f"p{i}"), {}, usage=u) for i in range(256)))

        out = asyncio.run(go())
        assert len(out) == 256 and len(cache) == 256 and u.requests == 256
        # a second connection (another process, say) reading and writing the same file meanwhile
        other = RequestCache(tmp_path / "cache.sqlite")
        errors: list[BaseException] = []

        def writer(c: RequestCache, tag: str):
            try:
                for i in range(200):
                    c.put(f"{tag}{i}", {"text": str(i)})
                    c.get(f"{tag}{i // 2}")
            except BaseException as e:  # pragma: no cover - the failure we test against
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(c, f"{c_i}-{t}-"))
                   for c_i, c in enumerate((cache, other)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(cache) == 256 + 6 * 200
        assert cache.get_many(["0-0-5", "nope"]) == {"0-0-5": {"text": "5"}}
        other.close()


def test_rate_bucket():
    async def go():
        b = Bucket(600)  # 10 per second, bursts of 100
        t = time.monotonic()
        for _ in range(100):
            await b.acquire(1)
        assert time.monotonic() - t < 0.2
        for _ in range(5):
            await b.acquire(1)
        dt = time.monotonic() - t
        assert 0.4 <= dt < 1.0, dt
        b.adjust(-5)  # refund
        t = time.monotonic()
        await b.acquire(5)
        assert time.monotonic() - t < 0.1

    asyncio.run(go())


def test_rpm_limit_paces_requests(tmp_path):
    with FakeOpenAI() as srv:
        llm = make_llm(tmp_path, srv, rpm=600, tpm=10**7)  # burst 100, then 10/s

        async def go():
            await asyncio.gather(*(llm.complete("m", msgs(f"r{i}"), {}) for i in range(105)))

        t = time.monotonic()
        asyncio.run(go())
        assert time.monotonic() - t >= 0.4


# ---- cost -----------------------------------------------------------------------------------
def test_cost(tmp_path):
    with FakeOpenAI() as srv:
        known = make_llm(tmp_path, srv, litellm_model="openai/gpt-4-turbo", identity="openai/gpt-4-turbo")
        u = Usage()
        c = asyncio.run(known.complete("m", msgs("cost?"), {}, usage=u))
        assert c.cost and c.cost > 0 and u.cost == pytest.approx(c.cost)

        unknown = make_llm(tmp_path, srv, cache=known.cache)
        u = Usage()
        c = asyncio.run(unknown.complete("m", msgs("cost?"), {}, usage=u))
        assert c.cost is None and u.cost is None and u.completion_tokens > 0

        priced = make_llm(tmp_path, srv, cache=known.cache, identity="priced", price=(1e-6, 2e-6))
        u = Usage()
        c = asyncio.run(priced.complete("m", msgs("cost?"), {}, usage=u))
        assert c.cost == pytest.approx(c.prompt_tokens * 1e-6 + c.completion_tokens * 2e-6)


def test_from_recipe():
    m = ModelEndpoint(model="openai/gpt-4-turbo", api_key_env="OPENAI_API_KEY", concurrency=16,
                      price={"input_per_mtok": 10, "output_per_mtok": 30}, supports_n=False)
    ep = Endpoint.from_recipe("teacher", m)
    assert ep.identity == ep.litellm_model == "openai/gpt-4-turbo" and ep.api_key_env == "OPENAI_API_KEY"
    assert ep.price == pytest.approx((1e-5, 3e-5)) and ep.concurrency == 16 and not ep.supports_n
    local = ModelEndpoint(local={"embedded": "smollm2-135m-instruct"})
    with pytest.raises(ValueError):
        Endpoint.from_recipe("student", local)
    ep = Endpoint.from_recipe("student", local, api_base="http://127.0.0.1:9/v1",
                              litellm_model="hosted_vllm/smollm2-135m-instruct", identity="local:smollm2@abc")
    assert ep.identity == "local:smollm2@abc" and ep.api_base.endswith(":9/v1")
    assert ep.native and ep.served_model == "smollm2-135m-instruct"  # our own server: the door's own client


def test_from_recipe_picks_the_client_the_price_and_the_servers():
    hosted = Endpoint.from_recipe("t", ModelEndpoint(model="openai/gpt-4o-mini"))
    assert not hosted.native and hosted.price == pytest.approx((0.15e-6, 0.6e-6))  # litellm's map, read as JSON
    vllm = Endpoint.from_recipe("t", ModelEndpoint(model="hosted_vllm/q", api_base="http://a:1/v1",
                                                   replicas=["http://b:1/v1"]))
    assert vllm.native and vllm.bases == ("http://a:1/v1", "http://b:1/v1") and vllm.price is None
    forced = Endpoint.from_recipe("t", ModelEndpoint(model="hosted_vllm/q", api_base="http://a:1/v1", client="litellm"))
    assert not forced.native
    other = Endpoint.from_recipe("t", ModelEndpoint(model="anthropic/claude-sonnet-4-5", api_base="http://a:1"))
    assert not other.native  # not OpenAI's wire format: litellm
    batch = Endpoint.from_recipe("t", ModelEndpoint(model="openai/gpt-4o-mini", batch=True, batch_poll_s=5))
    assert batch.batch and batch.batch_poll_s == 5 and batch.batch_price == pytest.approx((0.075e-6, 0.3e-6))
    priced = Endpoint.from_recipe("t", ModelEndpoint(model="anthropic/x", batch=True,
                                                     price={"input_per_mtok": 2, "output_per_mtok": 8}))
    assert priced.batch_price == pytest.approx((1e-6, 4e-6))  # the recipe's price, halved


# ---- secrets --------------------------------------------------------------------------------
def test_api_key_never_leaks(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(KEY_ENV, KEY)
    texts: list[str] = []
    with FakeOpenAI(require_key=KEY) as srv:
        llm = make_llm(tmp_path, srv, api_key_env=KEY_ENV)
        u = Usage()
        asyncio.run(llm.preflight("m"))
        c = asyncio.run(llm.complete("m", msgs("secret?"), {}, usage=u))
        cs = asyncio.run(llm.complete_n("m", msgs("secret n"), {}, 2, usage=u))
        assert srv.auth_headers[-1] == f"Bearer {KEY}"  # the key was used...
        texts += [repr(llm), repr(llm.endpoints["m"]), repr(u), repr(c), repr(cs), str(llm.endpoints)]
    # ...and a server that echoes it back in an error message
    with FakeOpenAI(require_key="sk-other-key-0000", echo_key=True) as srv:
        llm2 = make_llm(tmp_path, srv, cache=llm.cache, api_key_env=KEY_ENV, identity="other")
        for call in (lambda: llm2.complete("m", msgs("x"), {}), lambda: llm2.preflight("m")):
            llm2._fatal.clear()  # forget the first verdict, to see the second message too
            with pytest.raises(EndpointError) as ei:
                asyncio.run(call())
            texts += [str(ei.value), repr(ei.value), "".join(traceback.format_exception(ei.value))]
        assert "Bearer ***" in texts[-6]  # the server's echo of the header, scrubbed
        srv.require_key = None
        srv.fault, srv.fail_first = "500", 10**6
        with pytest.raises(LLMError) as ei:
            asyncio.run(make_llm(tmp_path, srv, cache=llm.cache, api_key_env=KEY_ENV, identity="o2",
                                 max_retries=1).complete("m", msgs("y"), {}))
        texts += [str(ei.value), repr(ei.value), ei.value.reason, "".join(traceback.format_exception(ei.value))]
    llm.cache.close()
    out, err = capfd.readouterr()
    texts += [out, err]
    for t in texts:
        assert KEY not in t and "PLANTED" not in t
    for f in tmp_path.iterdir():
        if f.name.startswith("cache.sqlite"):
            assert b"PLANTED" not in f.read_bytes(), f.name


# ---- process-level guarantees ---------------------------------------------------------------
def test_put_survives_sigkill(tmp_path):
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from orca_recipe.llm.cache import RequestCache\n"
        "c = RequestCache(sys.argv[1])\n"
        "c.put('k1', {'text': 'paid for'})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    path = tmp_path / "kill.sqlite"
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == -9
    with RequestCache(path) as c:
        assert c.get("k1") == {"text": "paid for"} and len(c) == 1


def test_door_import_does_not_import_litellm():
    import subprocess
    import sys

    code = "import sys, orca_recipe.llm.door, orca_recipe.llm.cache; assert 'litellm' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---- replicas -----------------------------------------------------------------------------------
def test_requests_spread_over_replicas_by_free_slots(tmp_path):
    with FakeOpenAI(latency=0.05) as a, FakeOpenAI(latency=0.05) as b:
        llm = make_llm(tmp_path, a, replicas=(b.api_base,), concurrency=4)
        asyncio.run(llm.preflight("m"))

        async def go():
            return await asyncio.gather(*(llm.complete("m", msgs(f"r{i}"), {}) for i in range(60)))

        out = asyncio.run(go())
        assert [c.text for c in out] == [reply_text(f"r{i}", 0, 0) for i in range(60)]
        assert a.total_requests + b.total_requests == 60
        assert min(a.total_requests, b.total_requests) >= 20  # both busy, not one after the other
        assert a.max_in_flight <= 4 and b.max_in_flight <= 4 and max(a.max_in_flight, b.max_in_flight) >= 3


def test_a_dead_replica_fails_preflight_and_a_dying_one_is_routed_around(tmp_path):
    with FakeOpenAI() as a:
        dead = f"http://127.0.0.1:{dead_port()}/v1"
        llm = make_llm(tmp_path, a, replicas=(dead,), concurrency=2, max_retries=3)
        with pytest.raises(EndpointError, match="cannot reach"):
            asyncio.run(llm.preflight("m"))
        # after a healthy start, a replica that goes away costs a retry, not the request
        llm = make_llm(tmp_path, a, cache=llm.cache, replicas=(dead,), concurrency=2, max_retries=3)
        u = Usage()

        async def go():
            return await asyncio.gather(*(llm.complete("m", msgs(f"d{i}"), {}, usage=u) for i in range(10)))

        out = asyncio.run(go())
        assert [c.text for c in out] == [reply_text(f"d{i}", 0, 0) for i in range(10)]
        assert u.failures == 0 and 1 <= u.retries <= 4 and a.ok_requests == 10


# ---- a local server starts on the first request the cache cannot answer ------------------------
def test_a_server_starts_on_the_first_miss_once_and_never_for_a_cached_stage(tmp_path):
    """What a local vLLM start costs (30-70 s on a CPU) is paid only when a request needs it:
    a stage the cache answers whole never starts it, and many misses at once start it once."""
    with FakeOpenAI() as srv:
        cache = RequestCache(tmp_path / "cache.sqlite")
        warm = make_llm(tmp_path, srv, cache=cache)
        asyncio.run(warm.complete("m", msgs("cached"), {"temperature": 0}))
        asyncio.run(warm.complete_n("m", msgs("cached n"), {"temperature": 0.7}, 3))
        sent = srv.total_requests
        starts: list[float] = []

        async def start() -> str:
            starts.append(time.monotonic())
            await asyncio.sleep(0.2)  # a start takes a while: the misses arriving meanwhile wait for it
            return srv.api_base

        def lazy() -> LLM:
            ep = Endpoint(name="m", litellm_model="hosted_vllm/fake", identity="fake-model", api_base="", timeout_s=2.0, max_retries=3)
            return LLM({"m": ep}, cache, backoff_base_s=0.01, preflight_timeout_s=1.0, starts={"m": start})

        async def cached_stage(llm: LLM) -> list:
            await llm.preflight("m")  # nothing to check yet: the start checks the server
            return [await llm.complete("m", msgs("cached"), {"temperature": 0}),
                    *(await llm.complete_n("m", msgs("cached n"), {"temperature": 0.7}, 3))]

        got = asyncio.run(cached_stage(lazy()))
        assert all(c.cached for c in got) and starts == [] and srv.total_requests == sent

        async def missing_stage(llm: LLM) -> list:
            singles = [llm.complete("m", msgs(f"new {i}"), {"temperature": 0}) for i in range(12)]
            many = [llm.complete_n("m", msgs(f"new n {i}"), {"temperature": 0.7}, 2) for i in range(4)]
            return await asyncio.gather(*singles, *many)

        llm = lazy()
        out = asyncio.run(missing_stage(llm))
        assert len(starts) == 1 and srv.total_requests == sent + 12 + 4  # one start; each new request sent once
        assert [c.text for c in out[:12]] == [reply_text(f"new {i}", 0, 0) for i in range(12)]
        assert llm.endpoints["m"].api_base == srv.api_base
        asyncio.run(llm.complete("m", msgs("after"), {"temperature": 0}))  # a later loop: already up, no second start
        assert len(starts) == 1
        cache.close()


def test_a_failed_start_fails_the_stage_once_with_its_message(tmp_path):
    """A server that cannot start is one UserError for every request waiting on it, not a
    start per request and not a per-row failure that hides it."""
    from orca_recipe.llm.local import LocalServerError

    calls = []

    async def start() -> str:
        calls.append(1)
        raise LocalServerError("the vLLM server for 'smol' exited with code 1 while starting")

    ep = Endpoint(name="m", litellm_model="hosted_vllm/fake", identity="fake-model", api_base="", timeout_s=2.0)
    llm = LLM({"m": ep}, RequestCache(tmp_path / "cache.sqlite"), starts={"m": start})

    async def stage() -> list:
        return await asyncio.gather(*(llm.complete("m", msgs(f"q {i}")) for i in range(8)), return_exceptions=True)

    errors = asyncio.run(stage())
    assert len(calls) == 1 and all(isinstance(e, LocalServerError) for e in errors)
    llm.cache.close()


@pytest.mark.parametrize("fault", ["huge", "gzip_bomb", "redirect"])
def test_a_reply_no_client_should_swallow_fails_that_request_once_in_bounded_memory(tmp_path, fault):
    """A body without end, a gzip body inflating to 64 MiB, a redirect elsewhere: one failed
    request each (not retried: the same request gets the same reply), a reason that says what
    came back, nothing cached, and the client's memory bounded by MAX_REPLY_BYTES, not by the server."""
    import resource

    from orca_recipe.llm.transport import MAX_REPLY_BYTES

    with FakeOpenAI(fault=fault, fail_first=10**6) as srv:
        llm = make_llm(tmp_path, srv, timeout_s=60.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        usage = Usage()
        with pytest.raises(LLMError) as info:
            asyncio.run(llm.complete("m", msgs("2+2?"), {"temperature": 0}, usage=usage))
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        reason = str(info.value)
        assert ("redirect" in reason and "api_base" in reason) if fault == "redirect" else "MiB" in reason
        assert srv.total_requests == 1 and usage.failures == 1 and usage.requests == 0
        assert grown < 4 * MAX_REPLY_BYTES  # the 1 GiB stream was never held
        assert llm.cache.get(llm.cache.key("fake-model", msgs("2+2?"), {"temperature": 0}, 0)) is None
        llm.cache.close()

"""Provider batch APIs: the same requests at half the price, answered within 24 hours.

A model with ``batch: true`` does not send its requests one by one. The door queues them; once
no new request has come for `SETTLE_S` (a stage has asked for everything it can ask for now),
they go out as one batch job:

- OpenAI: upload a JSONL file (``POST /files``, purpose ``batch``), ``POST /batches``, poll
  ``GET /batches/{id}``, then download the output and error files.
- Anthropic: ``POST /v1/messages/batches`` with the requests inline, poll, read ``results_url``.

Before polling, the job is written to ``<run>/batches/<job>.json`` (its provider id and which
cache keys each request answers). A run killed while a job is out finds the file on the next
run and polls that job instead of paying again; its answers land in the request cache like any
other completion. Requests a job did not answer (expired, errored, cancelled) are sent again in
the next job, up to the model's ``max_retries`` rounds; after that each is an `LLMError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from orca_recipe.llm.accounting import split_reply
from orca_recipe.llm.batch_jobs import Job, Pending, job_results
from orca_recipe.llm.cache import RequestCache
from orca_recipe.llm.endpoint import Endpoint
from orca_recipe.llm.errors import AUTH, FAIL, NOTFOUND, QUOTA, RETRY, Failure, LLMError, http_failure
from orca_recipe.llm.transport import MAX_REPLY_BYTES, Reply, bounded_body, read_choices, token_count

SETTLE_S = 0.5             # a queue that got nothing new for this long is sent
MAX_REQUESTS = 50_000      # OpenAI's limit per batch (Anthropic's is 100,000)
DEADLINE_S = 25 * 3600     # the 24 h completion window and an hour's grace: a poll never waits forever
API_TRIES = 5              # tries for each call to the files / batches API itself
DOWNLOAD_TIMEOUT_S = 900   # a results file of 50,000 replies is hundreds of MB: its own deadline, not a request's
MAX_RESULTS_BYTES = 2**30  # ... and its size at most: 50,000 replies of ~20 KB
DEFAULT_BASE = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class BatchClient:
    """Queues one endpoint's requests and sends them as batch jobs (one per endpoint and loop)."""

    def __init__(self, ep: Endpoint, cache: RequestCache, jobs_dir: Path, *, api_key: Callable[[], str | None],
                 settle_s: float = SETTLE_S):
        import aiohttp

        self.ep, self.cache, self.jobs_dir, self.api_key, self.settle_s = ep, cache, jobs_dir, api_key, settle_s
        self.provider = ep.provider
        self.base = (ep.api_base or DEFAULT_BASE[self.provider]).rstrip("/")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ep.timeout_s), trust_env=not ep.is_loopback)
        self.queue: list[Pending] = []
        self.still_out: dict[str, str] = {}  # cache key -> why: in a job out there that could not be read this run
        self.stamp = 0.0
        self.worker: asyncio.Task | None = None

    async def aclose(self) -> None:
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        await self.session.close()

    # ---- the caller's side -------------------------------------------------------------------
    async def request(self, keys: list[str], messages: list[dict], params: dict[str, Any]) -> list[dict]:
        """Queue a request whose samples go to `keys` (``n = len(keys)``); wait for its batch.
        Returns the samples as cache values (text, finish_reason, tokens, cost)."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(Pending(keys, messages, params, fut))
        self.stamp = time.monotonic()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await fut

    async def _work(self) -> None:
        """Send what is queued, once the queue has settled; until it is empty."""
        try:
            await self._resume_jobs()
            while self.queue:
                while time.monotonic() - self.stamp < self.settle_s and len(self.queue) < MAX_REQUESTS:
                    await asyncio.sleep(self.settle_s / 5)
                todo, self.queue = self.queue[:MAX_REQUESTS], self.queue[MAX_REQUESTS:]
                try:
                    await self._round(todo)
                finally:
                    self.queue = [p for p in todo if not p.future.done()] + self.queue
        except BaseException as e:  # a fatal endpoint error (or cancellation): every waiter hears it
            for p in self.queue:
                if not p.future.done():
                    p.future.set_exception(e if isinstance(e, Exception) else LLMError("cancelled", endpoint=self.ep.name))
            self.queue = []
            raise

    def _answered(self, p: Pending) -> list[dict] | None:
        found = self.cache.get_many(p.keys)
        return [found[k] for k in p.keys] if all(k in found for k in p.keys) else None

    async def _round(self, todo: list[Pending]) -> None:
        """One job for `todo`; what it left unanswered goes round again (or fails for good)."""
        while todo:
            ready = [(p, self._answered(p)) for p in todo]
            for p, got in ready:
                if got is not None and not p.future.done():
                    p.future.set_result(got)
            todo = [p for p, got in ready if got is None]
            for p in todo:
                out = next((self.still_out[k] for k in p.keys if k in self.still_out), None)
                if out is not None:
                    p.future.set_exception(LLMError(out, endpoint=self.ep.name))
            todo = [p for p in todo if not p.future.done()]
            if not todo:
                return
            job = self._new_job(todo)
            try:
                errors = await self._run_job(job, {self._custom_id(p): p for p in todo})
            except Failure as f:
                if f.kind not in (RETRY, FAIL):
                    raise
                if job.batch_id is not None:  # out there and maybe paid for: never sent again, collected next run
                    for p in todo:
                        p.future.set_exception(LLMError(f"batch {job.batch_id} is still out ({f.reason}); the next run "
                                                        f"collects its answers", endpoint=self.ep.name))
                    return
                errors = {self._custom_id(p): f.reason for p in todo}
            again = []
            for p in todo:
                got = self._answered(p)
                if got is not None:
                    p.future.set_result(got)
                    continue
                p.rounds += 1
                p.last_error = errors.get(self._custom_id(p), "not answered by the batch")
                if p.rounds > self.ep.max_retries:
                    p.future.set_exception(LLMError(f"batch: {p.last_error}", endpoint=self.ep.name, attempts=p.rounds))
                else:
                    again.append(p)
            todo = again

    # ---- jobs ------------------------------------------------------------------------------------
    @staticmethod
    def _custom_id(p: Pending) -> str:
        return p.keys[0][:64]  # the cache key of sample 0: [0-9a-f]{64}, valid for both providers

    def _new_job(self, todo: list[Pending]) -> Job:
        ids = sorted(self._custom_id(p) for p in todo)
        name = f"{self.ep.name}-{int(time.time())}-{hashlib.sha256(''.join(ids).encode()).hexdigest()[:10]}"
        return Job(name=name, provider=self.provider, requests={self._custom_id(p): p.keys for p in todo},
                   endpoint=self.ep.name)

    async def _resume_jobs(self) -> None:
        """Jobs a killed run left out there: poll them and keep what they answered (paid once)."""
        if not self.jobs_dir.is_dir():
            return
        for path in sorted(self.jobs_dir.glob(f"{self.ep.name}-*.json")):
            job = Job.load(path)
            if job is None or job.state not in ("submitted", "submitting") or job.endpoint != self.ep.name:
                continue  # done, abandoned, or another model's (whose name merely starts like this one's)
            if job.batch_id is None and job.file_id is None:
                continue  # killed before anything was sent: nothing to collect, nothing paid
            try:
                await self._run_job(job, {})
            except Failure as f:
                if f.kind in (AUTH, QUOTA):
                    raise
                if f.kind == NOTFOUND:  # the provider says the job (or its file) does not exist: ask again
                    job.state = f"abandoned: {f.reason}"
                    job.save(self.jobs_dir)
                    continue
                # a poll or download that failed for now: the job stays out (maybe paid for) and its
                # requests are never sent again; they fail for this run and the next run collects them
                why = f"batch {job.batch_id} is still out ({f.reason}); the next run collects its answers"
                self.still_out.update({k: why for keys in job.requests.values() for k in keys})

    async def _run_job(self, job: Job, by_id: dict[str, Pending]) -> dict[str, str]:
        """Submit (unless already), poll to the end, store the answers. Returns errors per custom_id."""
        if job.batch_id is None:
            job.state = "submitting"
            job.save(self.jobs_dir)  # the keys are on disk before anything is paid
            if self.provider == "openai":
                await self._openai_submit(job, by_id)
            else:
                await self._anthropic_submit(job, by_id)
            job.state = "submitted"
            job.save(self.jobs_dir)
        status = await self._poll(job)
        errors = await (self._openai_collect(job, status) if self.provider == "openai" else self._anthropic_collect(job, status))
        job.state = "done"
        job.save(self.jobs_dir)
        return errors

    async def _poll(self, job: Job) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        path = f"/batches/{job.batch_id}" if self.provider == "openai" else f"/v1/messages/batches/{job.batch_id}"
        while True:
            status = await self._call("GET", path)
            state = status.get("status") if self.provider == "openai" else status.get("processing_status")
            if state in ("completed", "failed", "expired", "cancelled", "ended"):
                return status
            if time.monotonic() > deadline:
                raise Failure(RETRY, f"batch {job.batch_id} still {state} after {DEADLINE_S / 3600:.0f} h")
            await asyncio.sleep(self.ep.batch_poll_s)

    # ---- OpenAI -------------------------------------------------------------------------------
    async def _openai_submit(self, job: Job, by_id: dict[str, Pending]) -> None:
        import aiohttp

        lines = []
        for cid, p in by_id.items():
            body = {"model": self.ep.served_model, "messages": p.messages, **p.params}
            if len(p.keys) > 1:
                body["n"] = len(p.keys)
            lines.append(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}))
        if job.file_id is not None:  # a run killed after the upload: did it also create the batch?
            listed = await self._call("GET", "/batches?limit=100")
            for b in listed.get("data") or []:
                if isinstance(b, dict) and (b.get("metadata") or {}).get("orca_recipe_job") == job.name:
                    job.batch_id = b["id"]
                    return
        else:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", ("\n".join(lines) + "\n").encode(), filename=f"{job.name}.jsonl",
                           content_type="application/jsonl")
            job.file_id = (await self._call("POST", "/files", data=form))["id"]
            job.save(self.jobs_dir)
        made = await self._call("POST", "/batches", json_body={
            "input_file_id": job.file_id, "endpoint": "/v1/chat/completions", "completion_window": self.ep.batch_window,
            "metadata": {"orca_recipe_job": job.name}})
        job.batch_id = made["id"]

    async def _openai_collect(self, job: Job, status: dict) -> dict[str, str]:
        errors: dict[str, str] = {}
        if status.get("status") == "failed":
            why = "; ".join(str(e.get("message")) for e in (status.get("errors") or {}).get("data", [])[:3])
            return {cid: f"the batch failed: {why or 'no reason given'}" for cid in job.requests}
        for file_key in ("output_file_id", "error_file_id"):
            fid = status.get(file_key)
            if not fid:
                continue
            text = await self._call("GET", f"/files/{fid}/content", raw=True)
            for cid, item in job_results(text, job):
                resp = item.get("response") or {}
                body = resp.get("body") if isinstance(resp, dict) else None
                if resp.get("status_code") == 200 and isinstance(body, dict):
                    why = self._store_openai(job.requests[cid], body)
                    if why:
                        errors[cid] = why
                else:
                    err = item.get("error") or (body or {}).get("error") or {}
                    errors[cid] = f"HTTP {resp.get('status_code')}: {err.get('message') if isinstance(err, dict) else err}"
        state = status.get("status")
        for cid in job.requests:
            if cid not in errors and not self.cache.get(job.requests[cid][0]):
                errors[cid] = f"the batch ended {state} without an answer for this request"
        return errors

    def _store_openai(self, keys: list[str], body: dict) -> str | None:
        try:
            texts, reasons = read_choices(body.get("choices"))
        except Failure as f:
            return f.reason
        if len(texts) < len(keys):
            return "the answer has fewer choices than asked for"
        usage = body.get("usage") or {}
        self._store(keys, texts, reasons, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return None

    # ---- Anthropic ---------------------------------------------------------------------------
    async def _anthropic_submit(self, job: Job, by_id: dict[str, Pending]) -> None:
        requests = []
        for cid, p in by_id.items():
            system = "\n\n".join(m["content"] for m in p.messages if m.get("role") == "system")
            params = {"model": self.ep.served_model, "max_tokens": int(p.params.get("max_tokens") or 1024),
                      "messages": [m for m in p.messages if m.get("role") != "system"]}
            if system:
                params["system"] = system
            for k in ("temperature", "top_p"):
                if k in p.params:
                    params[k] = p.params[k]
            if p.params.get("stop"):
                params["stop_sequences"] = p.params["stop"]
            requests.append({"custom_id": cid, "params": params})
        made = await self._call("POST", "/v1/messages/batches", json_body={"requests": requests})
        job.batch_id = made["id"]

    async def _anthropic_collect(self, job: Job, status: dict) -> dict[str, str]:
        errors: dict[str, str] = {}
        url = status.get("results_url")
        if url:
            text = await self._call("GET", url, raw=True)
            for cid, item in job_results(text, job):
                result = item.get("result") or {}
                if result.get("type") == "succeeded":
                    msg = result.get("message") or {}
                    text_out = "".join(b.get("text", "") for b in msg.get("content") or [] if b.get("type") == "text")
                    usage = msg.get("usage") or {}
                    reason = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}.get(msg.get("stop_reason"))
                    self._store(job.requests[cid], [text_out], [reason], usage.get("input_tokens"), usage.get("output_tokens"))
                else:
                    err = (result.get("error") or {}).get("error") or result.get("error") or {}
                    errors[cid] = f"{result.get('type')}: {err.get('message', '') if isinstance(err, dict) else err}"
        for cid in job.requests:
            if cid not in errors and not self.cache.get(job.requests[cid][0]):
                errors[cid] = "the batch ended without an answer for this request"
        return errors

    # ---- both ----------------------------------------------------------------------------------
    def _store(self, keys: list[str], texts: list[str], reasons: list, pt: Any, ct: Any) -> None:
        """Answers into the request cache, tokens and batch-priced cost split over the samples."""
        reply = Reply(texts[:len(keys)], list(reasons[:len(keys)]), token_count(pt), token_count(ct))
        completions, *_ = split_reply(reply, [], self.ep.batch_price)
        self.cache.put_many((k, {"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                                 "completion_tokens": c.completion_tokens, "cost": c.cost, "batch": True})
                            for k, c in zip(keys, completions))

    def _headers(self) -> dict[str, str]:
        key = self.api_key() or ""
        if self.provider == "anthropic":
            return {"x-api-key": key, "anthropic-version": "2023-06-01"}
        return {"Authorization": f"Bearer {key}"}

    async def _call(self, method: str, path: str, *, json_body: Any = None, data: Any = None, raw: bool = False) -> Any:
        """One call to the files / batches API, retried on 429 / 5xx / dropped connections."""
        import aiohttp

        url = path if path.startswith("http") else self.base + path
        attempt = 0
        while True:
            failure: Failure
            timeout = aiohttp.ClientTimeout(total=max(DOWNLOAD_TIMEOUT_S, self.ep.timeout_s)) if raw else None
            try:
                async with self.session.request(method, url, json=json_body, data=data, headers=self._headers(), timeout=timeout) as r:
                    limit = MAX_RESULTS_BYTES if raw else MAX_REPLY_BYTES
                    body = (await bounded_body(r, limit, "a batch results file" if raw else "an API answer")).decode("utf-8", "replace")
                    if r.status == 200:
                        if raw:
                            return body
                        try:
                            out = json.loads(body)
                        except ValueError:
                            out = None
                        if isinstance(out, dict):
                            return out
                        failure = Failure(RETRY, f"{method} {path}: HTTP 200 but not a JSON object")
                    else:
                        failure = http_failure(r.status, body, r.headers, f"{method} {path}: ")
            except asyncio.TimeoutError:
                failure = Failure(RETRY, f"{method} {path}: no reply within timeout_s={self.ep.timeout_s:g} s")
            except (aiohttp.ClientError, OSError) as e:
                failure = Failure(RETRY, f"{method} {path}: {type(e).__name__}",
                                  refused=isinstance(getattr(e, "os_error", None), ConnectionRefusedError))
            attempt += 1
            if failure.kind != RETRY or attempt >= API_TRIES:
                failure.attempts = attempt
                raise failure
            await asyncio.sleep(min(failure.retry_after or 2.0 ** attempt, self.ep.max_backoff_s))


def default_key_env(ep: Endpoint) -> str | None:
    """The variable a batch endpoint's key comes from when the recipe names none."""
    return ep.api_key_env or DEFAULT_KEY_ENV.get(ep.provider)


def read_key(ep: Endpoint) -> str | None:
    env = default_key_env(ep)
    return os.environ.get(env) if env else None

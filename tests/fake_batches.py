"""A loopback fake of OpenAI's Files + Batches API and Anthropic's Message Batches, for tests.

    with FakeBatches(hold=True) as fb:          # api_base = fb.api_base (OpenAI: .../v1)
        ...                                     # batches stay in_progress until fb.release()
        fb.batches_created, fb.requests_billed

Status moves one step per poll: OpenAI validating -> in_progress -> finalizing -> completed;
Anthropic in_progress -> ended. Answers come from `pipeline_reply` (fake_openai), so every
orca-recipe role parses them; ``n`` is honoured.

Faults: ``expire_first=k`` ends the first k batches ``expired`` with only every other request
answered, and ``never={prompt, ...}`` are never answered (their batches expire);
``fail_once=True`` errors every third request of a batch the first time it is seen
(HTTP 500 in the error file / ``errored`` result), so only a resend answers it.
Only the standard library is used.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from fake_openai import _last_user, pipeline_reply


class FakeBatches:
    def __init__(self, *, hold: bool = False, expire_first: int = 0, fail_once: bool = False, key: str | None = None,
                 never: set[str] = frozenset()):
        self.hold = hold
        self.never = never
        self.broken = False  # True: every call answers HTTP 503  # prompts no batch ever answers: each batch holding one ends expired
        self.broken_polls = False  # True: only GET /batches/ID answers HTTP 503 (submitting still works)
        self.forget: set[str] = set()  # batch ids the provider no longer knows (GET /batches/ID: 404)
        self.expire_first = expire_first
        self.fail_once = fail_once
        self.key = key
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batches_created = 0
        self.requests_billed = 0          # requests answered across all batches (what a user pays for)
        self.seen_ids: set[str] = set()
        self.polls = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._srv: ThreadingHTTPServer | None = None

    # ---- control --------------------------------------------------------------------------
    def release(self) -> None:
        self.hold = False

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1"

    @property
    def anthropic_base(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}"

    def __enter__(self) -> "FakeBatches":
        fake = self

        class Handler(_Handler):
            st = fake

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._srv.shutdown()
        self._srv.server_close()

    # ---- the batch's life --------------------------------------------------------------------
    def _answer(self, custom_id: str, body: dict, batch_no: int, index: int) -> tuple[bool, dict]:
        """(ok, OpenAI chat.completion body or error) for one request of a finishing batch."""
        if self.fail_once and index % 3 == 0 and custom_id not in self.seen_ids:
            self.seen_ids.add(custom_id)
            return False, {"message": "The server had an error processing this request."}
        self.seen_ids.add(custom_id)
        prompt = _last_user(body.get("messages"))
        seed = body.get("seed", 0)
        n = int(body.get("n") or 1)
        choices = [{"index": i, "message": {"role": "assistant", "content": pipeline_reply(prompt, seed, i)},
                    "finish_reason": "stop"} for i in range(n)]
        return True, {"id": f"chatcmpl-{custom_id[:8]}", "object": "chat.completion", "choices": choices,
                      "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n}}

    def _finish(self, b: dict) -> None:
        """Work out a batch's results once (when it leaves in_progress)."""
        expired = b["no"] <= self.expire_first
        out, err = [], []
        for i, req in enumerate(b["requests"]):
            cid = req["custom_id"]
            if (expired and i % 2 == 1) or _last_user(req["body"].get("messages")) in self.never:
                expired = expired or _last_user(req["body"].get("messages")) in self.never
                continue  # never reached before the window closed
            ok, body = self._answer(cid, req["body"], b["no"], i)
            if ok:
                self.requests_billed += 1
                out.append({"id": f"req-{cid[:6]}", "custom_id": cid, "response": {"status_code": 200, "body": body},
                            "error": None})
            else:
                err.append({"id": f"req-{cid[:6]}", "custom_id": cid,
                            "response": {"status_code": 500, "body": {"error": body}}, "error": None})
        b["final"] = "expired" if expired else "completed"
        b["out"], b["err"] = out, err

    def advance(self, b: dict) -> None:
        with self._lock:
            self.polls += 1
            if b["kind"] == "openai":
                order = ["validating", "in_progress", "finalizing", "done"]
                i = order.index(b["status"]) if b["status"] in order else 3
                if b["status"] == "in_progress" and self.hold:
                    return
                if i < 3:
                    b["status"] = order[i + 1]
                if b["status"] == "finalizing":
                    self._finish(b)
                elif b["status"] == "done":
                    b["status"] = b["final"]
                    if b["out"]:
                        fid = f"file-out-{next(self._ids)}"
                        self.files[fid] = "".join(json.dumps(x) + "\n" for x in b["out"]).encode()
                        b["output_file_id"] = fid
                    if b["err"]:
                        fid = f"file-err-{next(self._ids)}"
                        self.files[fid] = "".join(json.dumps(x) + "\n" for x in b["err"]).encode()
                        b["error_file_id"] = fid
            elif b["status"] == "in_progress" and not self.hold:
                self._finish(b)
                b["status"] = "ended"


class _Handler(BaseHTTPRequestHandler):
    st: FakeBatches
    protocol_version = "HTTP/1.1"

    def log_message(self, *a) -> None:
        pass

    def _send(self, code: int, body: Any, raw: bool = False) -> None:
        data = body if raw else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authed(self) -> bool:
        if self.st.broken:
            self._send(503, {"error": {"message": "The service is temporarily unavailable."}})
            return False
        if self.st.key is None:
            return True
        got = self.headers.get("Authorization", "").removeprefix("Bearer ") or self.headers.get("x-api-key", "")
        if got != self.st.key:
            self._send(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}})
            return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        st, path = self.st, urlparse(self.path).path
        if not self._authed():
            return
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        if path == "/v1/batches":
            data = [{"id": b["id"], "status": b["status"], "metadata": b.get("metadata")} for b in st.batches.values()]
            return self._send(200, {"object": "list", "data": data})
        if path.startswith("/v1/batches/") or path.startswith("/v1/messages/batches/"):
            bid = path.rstrip("/").split("/")[-1]
            if path.endswith("/results"):
                bid = path.split("/")[-2]
                b = st.batches[bid]
                lines = []
                for x in b["out"]:
                    body = x["response"]["body"]
                    lines.append({"custom_id": x["custom_id"], "result": {"type": "succeeded", "message": {
                        "content": [{"type": "text", "text": body["choices"][0]["message"]["content"]}],
                        "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 5}}}})
                for x in b["err"]:
                    lines.append({"custom_id": x["custom_id"], "result": {"type": "errored", "error": {
                        "type": "error", "error": {"type": "api_error", "message": "overloaded"}}}})
                return self._send(200, "".join(json.dumps(x) + "\n" for x in lines).encode(), raw=True)
            if st.broken_polls:
                return self._send(503, {"error": {"message": "The service is temporarily unavailable."}})
            b = None if bid in st.forget else st.batches.get(bid)
            if b is None:
                return self._send(404, {"error": {"message": f"No batch found with id '{bid}'."}})
            st.advance(b)
            view = {k: v for k, v in b.items() if k not in ("requests", "out", "err", "final", "no", "kind")}
            if b["kind"] == "anthropic":
                view = {"id": b["id"], "processing_status": b["status"],
                        "results_url": f"{st.anthropic_base}/v1/messages/batches/{bid}/results" if b["status"] == "ended" else None}
            return self._send(200, view)
        if path.startswith("/v1/files/") and path.endswith("/content"):
            fid = path.split("/")[3]
            if fid not in st.files:
                return self._send(404, {"error": {"message": "no such file"}})
            return self._send(200, st.files[fid], raw=True)
        self._send(404, {"error": {"message": f"no route {path}"}})

    def do_POST(self) -> None:
        st, path = self.st, urlparse(self.path).path
        raw = self._body()
        if not self._authed():
            return
        if path == "/v1/files":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
            content = None
            for part in msg.iter_parts():
                if part.get_param("name", header="content-disposition") == "file":
                    content = part.get_payload(decode=True)
            fid = f"file-{next(st._ids)}"
            st.files[fid] = content or b""
            return self._send(200, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(content or b"")})
        if path == "/v1/batches":
            body = json.loads(raw)
            lines = [json.loads(x) for x in st.files[body["input_file_id"]].decode().splitlines() if x.strip()]
            with st._lock:
                st.batches_created += 1
                bid = f"batch_{next(st._ids)}"
                st.batches[bid] = {"id": bid, "object": "batch", "status": "validating", "kind": "openai",
                                   "no": st.batches_created, "metadata": body.get("metadata"),
                                   "input_file_id": body["input_file_id"], "requests": lines,
                                   "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            return self._send(200, {k: v for k, v in st.batches[bid].items() if k not in ("requests", "no", "kind")})
        if path == "/v1/messages/batches":
            body = json.loads(raw)
            reqs = []
            for r in body["requests"]:
                p = r["params"]
                msgs = ([{"role": "system", "content": p["system"]}] if p.get("system") else []) + p["messages"]
                reqs.append({"custom_id": r["custom_id"], "body": {"messages": msgs}})
            with st._lock:
                st.batches_created += 1
                bid = f"msgbatch_{next(st._ids)}"
                st.batches[bid] = {"id": bid, "status": "in_progress", "kind": "anthropic", "no": st.batches_created,
                                   "requests": reqs}
            return self._send(200, {"id": bid, "type": "message_batch", "processing_status": "in_progress"})
        self._send(404, {"error": {"message": f"no route {path}"}})


def wait_until(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.05)

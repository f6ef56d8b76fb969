"""A fault-injecting fake OpenAI-compatible server, for testing the LLM door only.

    with FakeOpenAI(fault="500", fail_first=2) as srv:
        ... litellm.acompletion(model="hosted_vllm/fake", api_base=srv.api_base, ...)
        srv.total_requests, srv.attempts_for("hello"), srv.max_in_flight

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``. The reply text is
deterministic: ``"echo <sha256(last user message)[:12]> seed=<seed> choice=<i>"``, so a test can
tell which request (and which sample) a completion came from. ``n`` is honoured (one choice per
sample) unless ``ignore_n=True``.

Faults (``fault=`` with ``fail_first=K`` fails the first K attempts of each distinct request
body; ``fault_rate=p`` with ``fault_seed`` fails attempts at random, ``faults=[...]`` picking the
kind at random too):

    "429"        HTTP 429 with ``Retry-After: <retry_after>``
    "500", "503" HTTP errors
    "reset"      the socket is closed with an RST, no response at all
    "hang"       no response for ``hang_s`` seconds (longer than the client's timeout)
    "truncated"  200, application/json, the JSON body cut in half (Content-Length matches)
    "nonjson"    200, text/html body
    "empty"      200, valid JSON with ``"choices": []``
    "400"        HTTP 400, context length exceeded (not worth retrying)
    "401"        HTTP 401 (as if the key were rejected)
    "404"        HTTP 404 model not found
    "null_content" 200, a choice whose message has ``"content": null``
    "no_message" 200, a choice without ``message``
    "length"     200, ``finish_reason: "length"`` and a solution cut off mid-sentence
    "trickle"    200 and headers at once, then the body one byte every ``trickle_s`` seconds
                 (a read timeout between bytes never fires; only a deadline on the whole reply does)

``require_key="sk-..."`` answers 401 to requests without ``Authorization: Bearer <key>``;
``echo_key=True`` puts the received Authorization header into 401 messages (as careless servers
do), to test that clients scrub it. ``models=[...]`` answers 404 (model not found) for other
model names.
Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable

FAULTS = ("429", "500", "503", "reset", "hang", "truncated", "nonjson", "empty", "400", "401", "404")
SLOW_FAULTS = ("trickle",)
HOSTILE_FAULTS = ("huge", "gzip_bomb", "redirect")  # replies no client should swallow (see _hostile)
ODD_FAULTS = ("null_content", "no_message", "length")  # 200 and JSON, but not a usable completion  # not in FAULTS: a random suite would spend a timeout on each


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def reply_text(last_user: str, seed, choice: int) -> str:
    """The text the fake answers with; tests use it to check which sample is which."""
    return f"echo {_h(last_user)} seed={seed} choice={choice}"


def pipeline_reply(last_user: str, seed, choice: int) -> str:
    """A deterministic reply each orca-recipe role can parse, chosen by the prompt's wording.

    For driving whole stages through the fake endpoint (kills, faults, secrets); the real
    model runs in the vLLM tests.
    """
    h = int(_h(f"{last_user}|{seed}|{choice}"), 16)
    a, b = 2 + h % 50, 3 + (h >> 8) % 40
    low = last_user.lower()
    if "use the same story" in low:
        return f"1. Sam has {a} marbles and finds {b} more. How many marbles does Sam have now?\n2. A box holds {a} pens; {b} are red. How many pens are not red?"
    if "suggest" in low and "ways to make it more complex" in low:
        return "1. Add a second purchase.\n2. Add a discount of 10 percent."
    if "rewrite the math word problem" in low:
        return f"Problem: Mia buys {a} apples at 2 dollars each and {b} pears at 3 dollars each. How much does she spend in dollars?"
    if "final verdict" in low:
        return "Error Analysis: they match.\nFinal Verdict: " + ("Correct" if h % 2 else "Incorrect")
    if "verdict" in low:
        return "Verdict: Solvable"
    return f"Add the numbers step by step: {a} + {b} = {a + b}.\n#### {a + b}"


REPO = Path(__file__).resolve().parents[1]


def fake_recipe(path: Path, api_base: str, *, name: str = "gen", endpoint: dict[str, Any] | None = None, **sections: Any) -> Path:
    """recipes/tiny.yaml's generation half with its model pointed at a fake endpoint.

    Training, practice and eval are off; `endpoint` adds model settings (concurrency,
    max_retries, timeout_s, api_key_env ...), `sections` replace or merge top-level keys
    (seeds={...}, evolve=None, solve={...}, filters={...}, agents={...}).
    """
    import yaml

    data: dict[str, Any] = {
        "extends": str(REPO / "recipes" / "tiny.yaml"), "name": name,
        "models": {"smol": {"local": None, "model": "openai/fake", "api_base": api_base, **(endpoint or {})}},
        "training": None, "practice": None, "iterations": 1, "eval": None,
    }
    # The generation half as these tests count it: one plain teacher sample per problem, every
    # seed expanded (tiny.yaml's gold grounding and limits are its learning recipe, not plumbing).
    plain = {"solve": {"gold_solutions": False, "keep_if_gold_matches": False, "samples": 1, "min_agreement": 1},
             "ask_me_anything": {"limit": None}}
    for key, value in plain.items():
        if isinstance(sections.get(key, {}), dict):
            sections[key] = value | (sections.get(key) or {})
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _last_user(messages) -> str:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c, sort_keys=True)
    return ""


class FakeOpenAI:
    def __init__(
        self,
        *,
        fault: str | None = None,
        fail_first: int = 0,
        fault_rate: float = 0.0,
        faults: Iterable[str] | None = None,
        fault_seed: int = 0,
        retry_after: float | None = 1,
        hang_s: float = 5.0,
        trickle_s: float = 2.0,
        latency: float = 0.0,
        ignore_n: bool = False,
        require_key: str | None = None,
        models: Iterable[str] | None = None,
        echo_key: bool = False,
        usage_override: dict | None = None,
        host: str = "127.0.0.1",
        responder=reply_text,
    ):
        for f in [fault, *(faults or [])]:
            if f is not None and f not in FAULTS + SLOW_FAULTS + ODD_FAULTS + HOSTILE_FAULTS:
                raise ValueError(f"unknown fault {f!r}; one of {FAULTS + SLOW_FAULTS + ODD_FAULTS + HOSTILE_FAULTS}")
        self.fault = fault
        self.fail_first = fail_first
        self.fault_rate = fault_rate
        self.faults = list(faults or ([fault] if fault else []))
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.trickle_s = trickle_s
        self.down_until = 0.0
        self.resets_left: int | None = None  # an outage also ends after this many resets
        self.always_fail: str | None = None  # a request whose last user message contains this always gets 500
        self.latency = latency
        self.ignore_n = ignore_n
        self.require_key = require_key
        self.models = list(models) if models is not None else None
        self.echo_key = echo_key
        self.usage_override = usage_override  # replaces the reply's usage (negative, absurd, wrong types)
        self.host = host
        self.responder = responder  # (last user message, seed, choice index) -> reply text

        self._lock = threading.Lock()
        self._rng = random.Random(fault_seed)
        self._stop_hang = threading.Event()
        self.attempts_by_body: Counter[str] = Counter()   # sha of the request body -> attempts
        self.requests_by_prompt_seed: Counter[tuple[str, object]] = Counter()  # (last user msg, seed)
        self.ok_by_prompt_seed: Counter[tuple[str, object]] = Counter()
        # good answers the client had already given up on (it closed the connection, e.g. its
        # timeout fired under load): answered here, never received there
        self.undelivered_by_prompt_seed: Counter[tuple[str, object]] = Counter()
        self.total_requests = 0      # chat completion attempts received
        self.ok_requests = 0         # answered with a good completion
        self.faults_served: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.model_list_requests = 0
        self.auth_headers: list[str | None] = []
        self.bodies: list[dict] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(_Handler):
            server_state = fake

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # listen backlog: hundreds of clients connect at once
            daemon_threads = True

        self._server = Server((self.host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_hang.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- counters --------------------------------------------------------------------------
    def attempts_for(self, prompt: str, seed=None) -> int:
        """Chat requests received whose last user message is `prompt` (and seed, when given)."""
        with self._lock:
            return sum(v for (p, s), v in self.requests_by_prompt_seed.items()
                       if p == prompt and (seed is None or s == seed))

    def delivered_by_prompt_seed(self) -> Counter:
        """Good answers that reached the client (answered minus undelivered), per (prompt, seed)."""
        with self._lock:
            return self.ok_by_prompt_seed - self.undelivered_by_prompt_seed

    def reset_counters(self) -> None:
        with self._lock:
            self.attempts_by_body.clear()
            self.requests_by_prompt_seed.clear()
            self.ok_by_prompt_seed.clear()
            self.undelivered_by_prompt_seed.clear()
            self.faults_served.clear()
            self.total_requests = self.ok_requests = self.max_in_flight = 0
            self.model_list_requests = 0
            self.auth_headers.clear()
            self.bodies.clear()

    # ---- decisions (called from handler threads) -----------------------------------------
    def outage(self, seconds: float, resets: int | None = None) -> None:
        """From now on, for `seconds`, every connection is reset: the server is down. With
        `resets`, the outage also ends after that many resets, so that on a machine fast enough
        to finish the whole run inside `seconds` it still ends mid-run."""
        with self._lock:
            self.down_until = time.monotonic() + seconds
            self.resets_left = resets

    def _pick_fault(self, body_key: str, prompt: str = "") -> str | None:
        with self._lock:
            self.attempts_by_body[body_key] += 1
            if time.monotonic() < self.down_until:
                if self.resets_left is not None:
                    self.resets_left -= 1
                    if self.resets_left <= 0:
                        self.down_until = 0.0
                return "reset"
            if self.always_fail and self.always_fail in prompt:
                return "500"
            attempt = self.attempts_by_body[body_key]
            if self.fault and attempt <= self.fail_first:
                return self.fault
            if self.fault_rate and self.faults and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.faults)
        return None


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAI
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms a response on Linux), which is the fake's latency, not the client's.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet
        pass

    # ---- helpers ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, status: int, message: str, etype: str, code=None, headers=None):
        self._json(status, {"error": {"message": message, "type": etype, "param": None, "code": code}}, headers)

    def _reset(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _unauthorized(self, st: FakeOpenAI):
        got = f": {self.headers.get('Authorization')}" if st.echo_key else "."
        return self._error(401, f"Incorrect API key provided{got}", "invalid_request_error", "invalid_api_key")

    def _auth_ok(self) -> bool:
        key = self.server_state.require_key
        if key is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {key}"

    # ---- routes ----------------------------------------------------------------------------
    def do_GET(self):
        st = self.server_state
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            with st._lock:
                st.model_list_requests += 1
            if not self._auth_ok():
                return self._unauthorized(st)
            ids = st.models if st.models is not None else ["fake"]
            return self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in ids]})
        self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self):
        st = self.server_state
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            return self._error(404, f"no route {self.path}", "not_found")
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON", "invalid_request_error")
        prompt = _last_user(body.get("messages"))
        seed = body.get("seed")
        body_key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with st._lock:
            st.total_requests += 1
            st.requests_by_prompt_seed[(prompt, seed)] += 1
            st.auth_headers.append(self.headers.get("Authorization"))
            st.bodies.append(body)
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            self._chat(st, body, body_key, prompt, seed)
        finally:
            with st._lock:
                st.in_flight -= 1

    def _chat(self, st: FakeOpenAI, body: dict, body_key: str, prompt: str, seed) -> None:
        if st.latency:
            time.sleep(st.latency)
        if not self._auth_ok():
            return self._unauthorized(st)
        model = body.get("model")
        if st.models is not None and model not in st.models:
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError", "model_not_found")
        fault = st._pick_fault(body_key, prompt)
        if fault:
            with st._lock:
                st.faults_served[fault] += 1
            return self._fault(st, fault, model)

        n = int(body.get("n") or 1)
        if st.ignore_n:
            n = 1
        choices = [
            {"index": i, "message": {"role": "assistant", "content": st.responder(prompt, seed, i)},
             "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ]
        prompt_tokens = max(1, sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4)
        completion_tokens = sum(len(c["message"]["content"].split()) for c in choices)
        with st._lock:
            st.ok_requests += 1
            st.ok_by_prompt_seed[(prompt, seed)] += 1
        try:
            self._json(200, {
                "id": "chatcmpl-" + body_key[:16], "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": choices,
                "usage": st.usage_override if st.usage_override is not None else {
                    "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens},
            })
        except (BrokenPipeError, ConnectionResetError):
            with st._lock:
                st.undelivered_by_prompt_seed[(prompt, seed)] += 1
            self.close_connection = True

    def _hostile(self, st: FakeOpenAI, fault: str, model) -> None:
        """Replies no client should swallow: a body without end (streamed, no length), a small
        gzip body that inflates to 64 MiB, a redirect to another host."""
        try:
            if fault == "redirect":
                self.send_response(307)
                self.send_header("Location", "http://127.0.0.1:9/v1/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if fault == "gzip_bomb":
                import zlib
                packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing, built a MiB at a time
                body = packer.compress(b"{") + b"".join(packer.compress(b" " * 2**20) for _ in range(64)) + packer.compress(b"}") + packer.flush()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no length: the body ends when the connection does
            self.wfile.write(b'{"choices": [{"message": {"content": "')
            chunk = b"x" * (1 << 20)
            for _ in range(1024):  # 1 GiB unless the client stops reading
                if st._stop_hang.is_set():
                    break
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True
        return None

    def _fault(self, st: FakeOpenAI, fault: str, model) -> None:
        if fault == "429":
            headers = {} if st.retry_after is None else {"Retry-After": str(st.retry_after)}
            return self._error(429, "Rate limit reached, slow down.", "requests", "rate_limit_exceeded", headers)
        if fault == "500":
            return self._error(500, "The server had an error while processing your request.", "server_error")
        if fault == "503":
            return self._error(503, "The engine is currently overloaded.", "server_error")
        if fault == "400":
            return self._error(400, "This model's maximum context length is 8 tokens. Please reduce the length "
                                    "of the messages.", "invalid_request_error", "context_length_exceeded")
        if fault == "401":
            return self._unauthorized(st)
        if fault == "404":
            return self._error(404, f"The model `{model}` does not exist.", "NotFoundError", "model_not_found")
        if fault == "reset":
            return self._reset()
        if fault == "hang":
            st._stop_hang.wait(st.hang_s)
            return self._reset()
        if fault in HOSTILE_FAULTS:
            return self._hostile(st, fault, model)
        if fault in ODD_FAULTS:
            choice = {"null_content": {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"},
                      "no_message": {"index": 0, "finish_reason": "stop"},
                      "length": {"index": 0, "message": {"role": "assistant", "content": "First, 3 + 4 = 7. Then the"},
                                 "finish_reason": "length"}}[fault]
            return self._json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": [choice],
                                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        if fault == "trickle":
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow"},
                                            "finish_reason": "stop"}]}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    if st._stop_hang.wait(st.trickle_s):
                        break
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return None
        if fault == "truncated":
            full = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "cut"},
                                            "finish_reason": "stop"}]}).encode()
            return self._send(200, full[: len(full) // 2])
        if fault == "nonjson":
            return self._send(200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
        if fault == "empty":
            return self._json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                                    "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0,
                                                             "total_tokens": 1}})
        raise AssertionError(fault)

"""A loopback fake of exactly the Hugging Face Hub routes `orca-recipe publish` calls.

    with FakeHub(token="hf_...") as hub:
        run publish with HF_ENDPOINT=hub.url ...
        hub.repos["ORG/NAME"] -> {"type": "dataset", "files": {path: bytes}}

Routes (as huggingface_hub 1.33 calls them from HfApi.create_repo / create_commit):

    POST /api/repos/create                              {"name", "organization", "type"} -> {"url"}; 409 if it exists
    POST /api/validate-yaml                             {"content", "repoType"} -> {"errors": [], "warnings": []}
    POST /api/{type}s/{org}/{name}/preupload/{rev}      {"files": [{path, sample, size}]} -> every file "regular"
    POST /api/{type}s/{org}/{name}/commit/{rev}         ndjson: header, then {"key": "file", "value": {path, content(b64)}}
    GET  /api/{type}s/{org}/{name}[/revision/{rev}]     repo info (create_repo(exist_ok=True) asks it after a 401/403)
    GET  /api/agent-harnesses                           the registry the client's user-agent header reads (an empty one)

Every request is recorded in `requests` (method, path); an unknown route answers 404 and is
listed in `unknown`, so a test can assert the client called nothing else. `token=` answers
401 to requests without `Authorization: Bearer <token>`, echoing the header it got in the
error (as careless servers do), to test that the client scrubs it. Standard library only.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.commits: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def _send(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400 and isinstance(obj, dict) and "error" in obj:
            self.send_header("X-Error-Message", obj["error"][:200])
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        got = self.headers.get("Authorization", "")
        if self.state.token is None or got == f"Bearer {self.state.token}":
            return True
        self._send(401, {"error": f"Invalid credentials in Authorization header: {got}"})
        return False

    def do_GET(self):
        st = self.state
        path = self.path.split("?")[0]
        with st.lock:
            st.requests.append(("GET", path))
        if path == "/api/agent-harnesses":
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        m = re.fullmatch(_REPO + r"(/revision/[^/]+)?", path)
        if not m:
            st.unknown.append(("GET", path))
            return self._send(404, {"error": "not a route of the fake hub"})
        repo = self._repo(m)
        if repo is None:
            return
        return self._send(200, {"id": m["repo"], "sha": "0" * 40, "siblings": [{"rfilename": f} for f in repo["files"]]})

    def _repo(self, m) -> dict | None:
        """The repo a matched route names, or None once a 401/404 has been sent."""
        if not self._authorised():
            return None
        repo = self.state.repos.get(m["repo"])
        if repo is None or repo["type"] + "s" != m["type"]:
            self._send(404, {"error": "Repository not found"})
            return None
        return repo

    def do_POST(self):
        st = self.state
        path = self.path.split("?")[0]
        body = self._body()
        with st.lock:
            st.requests.append(("POST", path))
        if path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []}) if self._authorised() else None
        if path == "/api/repos/create":
            if not self._authorised():
                return
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}"
            kind = data.get("type") or "model"
            with st.lock:
                if repo_id in st.repos:
                    return self._send(409, {"error": "You already created this repo", "url": self._url(kind, repo_id)})
                st.repos[repo_id] = {"type": kind, "files": {}, "private": data.get("visibility") == "private"}
            return self._send(200, {"url": self._url(kind, repo_id)})
        m = re.fullmatch(_REPO + r"/(?P<op>preupload|commit)/(?P<rev>[^/]+)", path)
        if not m:
            st.unknown.append(("POST", path))
            return self._send(404, {"error": "not a route of the fake hub"})
        repo = self._repo(m)
        if repo is None:
            return
        if m["op"] == "preupload":
            files = json.loads(body)["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        with st.lock:
            for item in lines:
                if item["key"] == "file":
                    repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    st.unknown.append(("commit-op", item["key"]))
            st.commits.append({"repo": m["repo"], "type": m["type"], "revision": m["rev"], "summary": header["summary"]})
        oid = f"{len(st.commits):040x}"
        return self._send(200, {"commitUrl": f"{self._url(repo['type'], m['repo'])}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})

    def _url(self, kind: str, repo_id: str) -> str:
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return f"{host}/{repo_id}" if kind == "model" else f"{host}/{kind}s/{repo_id}"

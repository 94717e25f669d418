"""A fake Hugging Face Hub on 127.0.0.1: just enough API for create_repo + upload_folder.

Every request is recorded (method, path, headers, body) and committed files are kept in memory, so
tests assert on exactly what an upload sent. Files are always answered with uploadMode "regular",
which keeps their bytes inline (base64) in the NDJSON commit: no LFS or xet storage is involved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str


@dataclass
class Repo:
    repo_id: str
    private: bool | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    """Start with ``with FakeHub() as hub:`` (or start()/stop()); ``hub.url`` is its endpoint.

    ``token``: the only accepted Bearer token (None accepts any). ``status``: answer every request
    with this HTTP status instead (e.g. 401) to test error handling.
    """

    def __init__(self, token: str | None = None, status: int | None = None):
        self.token = token
        self.status = status
        self.requests: list[Recorded] = []
        self.repos: dict[str, Repo] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "start the FakeHub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests
    def files(self, repo_id: str) -> dict[str, bytes]:
        return self.repos[repo_id].files

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    timeout = 10  # a stuck client cannot hold a handler thread forever

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload: dict | None = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        body = self._body()
        rec = Recorded(
            self.command,
            unquote(parts.path),
            parts.query,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            self.client_address[0],
        )
        fake = self.fake
        with fake._lock:
            fake.requests.append(rec)
        if fake.status is not None:
            return self._send(fake.status, {"error": f"fake hub answers {fake.status}"})
        if fake.token is not None and rec.headers.get("authorization") != f"Bearer {fake.token}":
            return self._send(401, {"error": "Invalid credentials in Authorization header"})
        route = _route(rec)
        if route is None:
            return self._send(404, {"error": f"fake hub has no route for {rec.method} {rec.path}"})
        status, payload = route(fake, rec)
        self._send(status, payload, {"X-Error-Code": "RepoNotFound"} if status == 404 else None)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


# ---------------------------------------------------------------------------------- the API


def _route(rec: Recorded):
    p = rec.path
    if rec.method == "POST" and p == "/api/repos/create":
        return _create_repo
    if rec.method == "POST" and p == "/api/validate-yaml":
        return lambda fake, rec: (200, {})
    for suffix, handler in (("preupload", _preupload), ("commit", _commit)):
        marker = f"/{suffix}/"
        if rec.method == "POST" and p.startswith("/api/models/") and marker in p:
            return handler
    if rec.method == "GET" and p.startswith("/api/models/"):
        return _repo_info
    return None


def _repo_id(path: str, marker: str) -> str:
    return path.removeprefix("/api/models/").split(marker)[0]


def _create_repo(fake: FakeHub, rec: Recorded):
    payload = json.loads(rec.body or b"{}")
    repo_id = (
        f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
    )
    with fake._lock:
        if repo_id in fake.repos:
            return 409, {"error": "You already created this model repo", "url": f"{fake.url}/{repo_id}"}
        visibility = payload.get("visibility")
        fake.repos[repo_id] = Repo(repo_id, None if visibility is None else visibility == "private")
    return 200, {"url": f"{fake.url}/{repo_id}", "name": repo_id}


def _repo_info(fake: FakeHub, rec: Recorded):
    repo_id = rec.path.removeprefix("/api/models/").split("/revision/")[0]
    repo = fake.repos.get(repo_id)
    if repo is None:
        return 404, {"error": "Repository not found"}
    sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
    return 200, {"id": repo_id, "sha": sha, "private": bool(repo.private), "siblings": []}


def _preupload(fake: FakeHub, rec: Recorded):
    repo_id = _repo_id(rec.path, "/preupload/")
    if repo_id not in fake.repos:
        return 404, {"error": "Repository not found"}
    files = json.loads(rec.body)["files"]
    return 200, {
        "files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
        ]
    }


def _commit(fake: FakeHub, rec: Recorded):
    repo_id = _repo_id(rec.path, "/commit/")
    repo = fake.repos.get(repo_id)
    if repo is None:
        return 404, {"error": "Repository not found"}
    lines = [json.loads(line) for line in rec.body.splitlines() if line.strip()]
    header = next(item["value"] for item in lines if item["key"] == "header")
    added: dict[str, bytes] = {}
    for item in lines:
        if item["key"] == "file":
            value = item["value"]
            assert value.get("encoding") == "base64", value
            added[value["path"]] = base64.b64decode(value["content"])
        elif item["key"] != "header":
            return 400, {"error": f"fake hub does not handle commit items of kind {item['key']!r}"}
    oid = hashlib.sha1(rec.body).hexdigest()
    with fake._lock:
        repo.files.update(added)
        repo.commits.append({"oid": oid, "summary": header.get("summary"), "files": sorted(added)})
    return 200, {"commitUrl": f"{fake.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}

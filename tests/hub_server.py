"""A small local stand-in for the Hugging Face Hub HTTP API, for offline tests of uploads and downloads.

It speaks the endpoints huggingface_hub uses to create a repo, upload a commit (preupload, then an NDJSON commit
with base64 files), read repo info and file trees, and resolve files (with `X-Repo-Commit` and `ETag` headers).
Files are kept in memory, one snapshot per commit. Only loopback is served.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class _Repo:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.commits: list[str] = [hashlib.sha1(b"init").hexdigest()]
        self.snapshots: dict[str, dict[str, bytes]] = {self.commits[0]: {}}  # the files at each commit

    @property
    def sha(self) -> str:
        return self.commits[-1]


class HubState:
    def __init__(self):
        self.repos: dict[str, _Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        # ---------------------------------------------------------------- helpers
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers=None):
            self._send(status, json.dumps(payload).encode(), headers)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _repo(self, repo_id: str) -> _Repo | None:
            return state.repos.get(repo_id)

        def _not_found(self, code="RepoNotFound"):
            self._json(404, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code})

        # ---------------------------------------------------------------- routes
        def do_POST(self):
            path = unquote(urlparse(self.path).path)
            state.requests.append(("POST", path))
            body = self._body()
            if path == "/api/repos/create":
                data = json.loads(body or b"{}")
                repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                with state.lock:
                    state.repos.setdefault(repo_id, _Repo())
                return self._json(200, {"url": f"{self._base()}/{repo_id}", "name": repo_id, "id": repo_id})
            if path == "/api/validate-yaml":  # model-card metadata check before a commit that adds README.md
                return self._json(200, {"errors": [], "warnings": []})
            match = re.fullmatch(r"/api/models/(.+?)/preupload/([^/]+)", path)
            if match:
                files = json.loads(body)["files"]
                return self._json(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            match = re.fullmatch(r"/api/models/(.+?)/commit/([^/]+)", path)
            if match:
                repo = self._repo(match.group(1))
                if repo is None:
                    return self._not_found()
                with state.lock:
                    for line in body.decode().splitlines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            repo.files[value["path"]] = base64.b64decode(value["content"])
                        elif item["key"] == "deletedFile":
                            repo.files.pop(item["value"]["path"], None)
                        elif item["key"] == "lfsFile":
                            return self._json(400, {"error": "LFS uploads are not supported by the test hub"})
                    sha = hashlib.sha1(
                        repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in repo.files.items())).encode()
                        + str(len(repo.commits)).encode()
                    ).hexdigest()
                    repo.commits.append(sha)
                    repo.snapshots[sha] = dict(repo.files)
                return self._json(200, {"commitUrl": f"{self._base()}/{match.group(1)}/commit/{sha}", "commitOid": sha})
            return self._json(404, {"error": f"unhandled POST {path}"})

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            parsed = urlparse(self.path)
            path = unquote(parsed.path)
            state.requests.append((self.command, path))
            if path == "/api/whoami-v2":
                return self._json(200, {"name": "tester", "type": "user", "orgs": [], "auth": {"type": "access_token"}})
            match = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
            if match and "/tree/" not in path:
                repo = self._repo(match.group(1))
                if repo is None:
                    return self._not_found()
                siblings = [{"rfilename": name, "size": len(data)} for name, data in sorted(repo.files.items())]
                return self._json(
                    200,
                    {
                        "id": match.group(1),
                        "modelId": match.group(1),
                        "sha": repo.sha,
                        "siblings": siblings,
                        "private": False,
                        "tags": [],
                        "downloads": 0,
                        "likes": 0,
                    },
                )
            match = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)(?:/(.*))?", path)
            if match:
                repo = self._repo(match.group(1))
                if repo is None:
                    return self._not_found()
                prefix = (match.group(3) or "").strip("/")
                entries, folders = [], set()
                for name, data in sorted(repo.files.items()):
                    if prefix and not name.startswith(prefix + "/"):
                        continue
                    rest = name[len(prefix) + 1 :] if prefix else name
                    if "/" in rest and "recursive=true" not in (parsed.query or "").lower():
                        folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                        continue
                    entries.append(
                        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    )
                entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
                return self._json(200, entries)
            match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
            if match:
                repo = self._repo(match.group(1))
                if repo is None:
                    return self._not_found()
                revision = match.group(2)
                commit = revision if revision in repo.snapshots else repo.sha  # a commit, or a branch (main)
                data = repo.snapshots.get(commit, repo.files).get(match.group(3))
                if data is None:
                    return self._not_found("EntryNotFound")
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                return self._send(200, data, {"X-Repo-Commit": commit, "ETag": etag}, "application/octet-stream")
            return self._json(404, {"error": f"unhandled GET {path}"})

        def _base(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

    return Handler


class LocalHub:
    """`with LocalHub() as hub:` serves on 127.0.0.1 on a free port; `hub.endpoint` is the URL for HF_ENDPOINT."""

    def __init__(self):
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.state.repos[repo_id].files)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

"""A small fake Hugging Face Hub on 127.0.0.1, for the real `huggingface_hub` client.

It serves the endpoints that `hf_hub_download`, `model_info` / `repo_info`, `list_repo_tree` /
`list_repo_files` and `snapshot_download` call, with the Hub's headers:

    GET  /api/models/{repo}[/revision/{rev}]   model info: sha, siblings (sizes with ?blobs=true)
    GET  /api/models/{repo}/tree/{rev}[/{dir}]  the tree listing (?recursive=true)
    HEAD|GET /{repo}/resolve/{rev}/{path}       small files: 200, ETag = git blob id, X-Repo-Commit.
                                                LFS files (*.gguf, *.safetensors): 302 to a "CDN"
                                                on another host name (localhost) with X-Repo-Commit,
                                                X-Linked-Etag (the sha256), X-Linked-Size, ETag
    GET  /cdn/{sha256}                          the bytes, with Range (206 + Content-Range)
    errors: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound

`cut_first_transfer=True` makes the first CDN transfer send its headers (the full length) and
half the body, then drop the connection, as a broken network does. `stall_after=N` makes the
first CDN transfer send N bytes, then wait for the client to go (a user's Ctrl-C). Every request is recorded in
`requests` as (method, path, Range header or None).
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = ""
    refs: dict[str, str] = field(default_factory=dict)  # revision name -> commit

    def __post_init__(self):
        self.commit = self.commit or hashlib.sha1(repr(sorted(self.files)).encode()).hexdigest()
        self.refs.setdefault("main", self.commit)


class FakeHub:
    def __init__(self, repos: dict[str, Repo] | None = None, cut_first_transfer: bool = False,
                 stall_after: int | None = None):
        self.repos: dict[str, Repo] = dict(repos or {})
        self.cut_first_transfer = cut_first_transfer
        self.stall_after = stall_after
        self.requests: list[tuple[str, str, str | None]] = []
        self.blobs: dict[str, bytes] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, repo_id: str, files: dict[str, bytes | Path], **kw) -> Repo:
        data = {k: (v.read_bytes() if isinstance(v, Path) else v) for k, v in files.items()}
        self.repos[repo_id] = Repo(data, **kw)
        return self.repos[repo_id]

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

    def _error(self, code: str, message: str, commit: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(404, json.dumps({"error": message}).encode(), headers, head)

    def _repo(self, parts: list[str]):
        repo_id = "/".join(parts[:2])
        return repo_id, self.fake.repos.get(repo_id)

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        self.fake.requests.append((self.command, url.path, self.headers.get("Range")))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[:2] == ["api", "models"]:
            return self._api(parts[2:], query, head)
        if parts and parts[0] == "cdn":
            return self._cdn(parts[1] if len(parts) > 1 else "", head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(parts, head)
        self._send(404, b"not found", head=head)

    def _revision(self, repo: Repo, rev: str) -> str | None:
        rev = unquote(rev)
        if rev in repo.refs:
            return repo.refs[rev]
        return rev if rev in repo.refs.values() else None

    # --- endpoints --------------------------------------------------------------------------

    def _api(self, parts: list[str], query: dict, head: bool) -> None:
        repo_id, repo = self._repo(parts)
        if repo is None:
            return self._error("RepoNotFound", "Repository not found", head=head)
        rest = parts[2:]
        rev = "main"
        if rest[:1] in (["revision"], ["tree"]) and len(rest) >= 2:
            rev = rest[1]
        commit = self._revision(repo, rev)
        if commit is None:
            return self._error("RevisionNotFound", f"Invalid rev id: {rev}", head=head)
        if rest[:1] == ["tree"]:
            sub = "/".join(rest[2:])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._json(self._tree(repo, sub, recursive), head=head)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, data in sorted(repo.files.items()):
            s = {"rfilename": name}
            if blobs:
                s.update(size=len(data), blobId=git_blob_id(data))
                if name.endswith(LFS_SUFFIXES):
                    s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(s)
        self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings},
                   head=head)

    def _tree(self, repo: Repo, sub: str, recursive: bool) -> list:
        out, dirs = [], set()
        prefix = sub + "/" if sub else ""
        for name, data in sorted(repo.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)] + out

    def _resolve(self, parts: list[str], head: bool) -> None:
        repo_id, repo = self._repo(parts)
        if repo is None:
            return self._error("RepoNotFound", "Repository not found", head=head)
        commit = self._revision(repo, parts[3])
        if commit is None:
            return self._error("RevisionNotFound", f"Invalid rev id: {parts[3]}", head=head)
        name = "/".join(parts[4:])
        data = repo.files.get(name)
        if data is None:
            return self._error("EntryNotFound", f"{name} does not exist", commit=commit, head=head)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"', "Accept-Ranges": "bytes"}
        if name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            self.fake.blobs[sha] = data
            # the CDN is another host for the client (localhost, not 127.0.0.1): it stops at this redirect
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                            "Location": f"http://localhost:{self.fake.port}/cdn/{sha}"})
            return self._send(302, b"", headers, head)
        self._send(200, data, headers, head)

    def _cdn(self, sha: str, head: bool) -> None:
        data = self.fake.blobs.get(sha)
        if data is None:
            return self._send(404, b"no such blob", head=head)
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0] or 0)
        body = data[start:]
        headers = {"Content-Length": str(len(body)), "ETag": f'"{sha}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if head:
            return self._send(status, b"", headers, head=True)
        if self.fake.stall_after is not None and start == 0:
            n, self.fake.stall_after = self.fake.stall_after, None
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.connection.settimeout(60)
            try:
                while self.connection.recv(1 << 16):  # until the client closes the connection
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
        if self.fake.cut_first_transfer and start == 0:
            self.fake.cut_first_transfer = False
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self._send(status, body, headers)

"""A local stand-in for the Hugging Face Hub, over HTTP, for the real huggingface_hub client.

It serves the endpoints `snapshot_download`, `HfApi.list_repo_refs` and `HfApi.list_repo_tree`
call (revision info, tree listing with file sizes, file resolve with HEAD/GET and byte ranges,
refs) from directories `<root>/<org>--<name>/<revision>/`. A revision's commit is the hash of its files, as on the Hub.
Pointing `huggingface_hub.constants.ENDPOINT` at it exercises the library's own cache layout
(blobs/refs/snapshots), resumable downloads and offline fallback, with no network.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def serve(hub: "FakeHfHub", monkeypatch, hf_cache: Path) -> None:
    """Point huggingface_hub (online) at `hub`, with its cache (HF_HUB_CACHE) in `hf_cache`."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


class FakeHfHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut: dict[tuple[str, str], int] = {}  # (revision, file) -> times its body stops at half the file
        # file name -> the size tree listings report for it (a hub shaped like the real one, 3.1 GB
        # per step, without serving those bytes: for plans that only read the listing)
        self.listed_size: dict[str, int] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ----------------------------------------------------------------- the repositories
    def revision_dir(self, repo: str, revision: str) -> Path:
        return self.root / repo.replace("/", "--") / revision

    def revisions(self, repo: str) -> list[str]:
        d = self.root / repo.replace("/", "--")
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def commit(self, repo: str, revision: str) -> str:
        files = sorted(p for p in self.revision_dir(repo, revision).iterdir() if p.is_file())
        return _sha1("".join(f"{p.name}:{_sha1(p.read_bytes())}\n" for p in files).encode())

    def _by_commit(self, repo: str, rev_or_commit: str) -> Path | None:
        if rev_or_commit in self.revisions(repo):
            return self.revision_dir(repo, rev_or_commit)
        for rev in self.revisions(repo):
            if rev_or_commit in (rev, self.commit(repo, rev)):
                return self.revision_dir(repo, rev)
        return None

    def downloads(self, filename: str = "model.safetensors") -> list[tuple[str, str | None]]:
        """(path, Range) of every GET of `filename`."""
        return [(p, r) for m, p, r in self.requests if m == "GET" and p.endswith("/" + filename)]

    def fetched_revisions(self, repo: str) -> list[str]:
        """Revisions whose files were downloaded (each file GET names its revision's commit)."""
        commits = {self.commit(repo, r): r for r in self.revisions(repo)}
        return sorted({commits[p.split("/")[-2]] for p, _ in self.downloads()
                       if p.startswith(f"/{repo}/resolve/") and p.split("/")[-2] in commits})

    # ----------------------------------------------------------------- HTTP
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _missing(self, code: str):
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, body: bool):
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/refs", path):
                    repo = m.group(1)
                    return self._json({"branches": [{"name": r, "ref": f"refs/heads/{r}",
                                                     "targetCommit": hub.commit(repo, r)} for r in hub.revisions(repo)],
                                       "tags": [], "converts": []})
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                    repo, rev = m.groups()
                    d = hub._by_commit(repo, rev)
                    if d is None:
                        return self._missing("RevisionNotFound" if hub.revisions(repo) else "RepoNotFound")
                    return self._json({"id": repo, "sha": hub.commit(repo, d.name), "private": False,
                                       "siblings": [{"rfilename": p.name} for p in sorted(d.iterdir())]})
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)/?", path):
                    d = hub._by_commit(*m.groups())
                    if d is None:
                        return self._missing("RevisionNotFound")
                    return self._json([{"type": "file", "path": p.name,
                                        "size": hub.listed_size.get(p.name, p.stat().st_size),
                                        "oid": _sha1(p.read_bytes())} for p in sorted(d.iterdir())])
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    repo, rev, name = m.groups()
                    d = hub._by_commit(repo, rev)
                    if d is None or not (d / name).is_file():
                        return self._missing("EntryNotFound")
                    return self._file(repo, d, name, body)
                self._missing("RepoNotFound")

            def _file(self, repo: str, d: Path, name: str, body: bool):
                data = (d / name).read_bytes()
                start = 0
                if body and (rng := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")):
                    start = int(rng.group(1))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", hub.commit(repo, d.name))
                self.send_header("ETag", f'"{_sha1(data)}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                stop = len(data)
                if hub.cut.get((d.name, name), 0) > 0:
                    hub.cut[(d.name, name)] -= 1
                    stop = len(data) // 2
                self.wfile.write(data[start:max(start, stop)])
                if stop < len(data):  # the connection drops mid-file
                    self.wfile.flush()
                    self.close_connection = True

        return Handler

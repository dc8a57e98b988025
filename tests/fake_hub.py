"""A small stand-in for the Hugging Face Hub HTTP API on 127.0.0.1, for tests that cannot reach the Hub.

It serves what `create_repo`, `upload_folder` (files sent inline: the preupload answer is
"regular" for every file) and `snapshot_download` / `hf_hub_download` use, keeps repositories in
memory, and records every request. Point `HF_ENDPOINT` at `FakeHub.url`.
"""

import base64
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"files": {path: bytes}, "commits": [oid], "private": bool}
        self.requests: list[dict] = []
        self.fail_commits = False
        self.unavailable = 0  # the next N repo creations and commits answer 503 (a transient outage)
        self.user = "tester"  # whom any token belongs to: the owner of repos created without one
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                return data

            def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None):
                data = body if body is not None else json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if body is None else "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _record(self, body: bytes = b""):
                hub.requests.append({"method": self.command, "path": self.path,
                                     "authorization": self.headers.get("Authorization"), "body": body})

            def do_POST(self):
                body = self._body()
                self._record(body)
                path = urlparse(self.path).path
                if hub.unavailable > 0 and (path == "/api/repos/create" or "/commit/" in path):
                    hub.unavailable -= 1
                    return self._send(503, {"error": "simulated outage"})
                if path == "/api/repos/create":
                    data = json.loads(body)
                    # as the Hub does: a name without an owner goes to the token's user
                    repo_id = f"{data.get('organization') or hub.user}/{data['name']}"
                    hub.repos.setdefault(repo_id, {"files": {}, "commits": [],
                                                   "private": data.get("visibility") == "private" or data.get("private")})
                    return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":  # README.md: its front matter must be a YAML mapping
                    match = re.match(r"^---\n(.*?)\n---\n", json.loads(body)["content"], flags=re.DOTALL)
                    try:
                        metadata = yaml.safe_load(match.group(1)) if match else None
                    except yaml.YAMLError as error:
                        metadata = str(error)
                    if not isinstance(metadata, dict):
                        return self._send(400, {"errors": [{"message": f"no valid metadata block: {metadata}"}]})
                    return self._send(200, {"errors": [], "warnings": []})
                if m := re.fullmatch(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", path):
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
                if m := re.fullmatch(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", path):
                    repo = hub.repos.get(m["repo"])
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    header = json.loads(body.decode().splitlines()[0])["value"]
                    # fail_commits: True fails every commit; a string fails those whose summary contains it.
                    if hub.fail_commits is True or (isinstance(hub.fail_commits, str)
                                                    and hub.fail_commits in header.get("summary", "")):
                        return self._send(403, {"error": "simulated refusal"})  # permanent: not retried
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] != "header":
                            return self._send(400, {"error": f"unsupported commit operation {item['key']}"})
                    oid = hashlib.sha1(json.dumps(sorted(repo["files"])).encode() + bytes(len(repo["commits"]))).hexdigest()
                    repo["commits"].append(oid)
                    return self._send(200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{oid}", "commitOid": oid,
                                            "pullRequestUrl": None})
                return self._send(404, {"error": f"not served: POST {path}"})

            def _repo_or_404(self, repo_id):
                repo = hub.repos.get(repo_id)
                if repo is None or not repo["commits"]:
                    self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return repo

            def do_GET(self):
                self._record()
                path = unquote(urlparse(self.path).path)
                if path == "/api/whoami-v2":
                    return self._send(200, {"type": "user", "name": hub.user, "orgs": [], "auth": {}})
                if m := re.fullmatch(rf"/api/models/{REPO}(/revision/(?P<rev>[^/]+))?", path):
                    if (repo := self._repo_or_404(m["repo"])) is None:
                        return
                    return self._send(200, {"id": m["repo"], "modelId": m["repo"], "sha": repo["commits"][-1],
                                            "private": bool(repo["private"]), "tags": [], "downloads": 0, "likes": 0,
                                            "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})
                if m := re.fullmatch(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?", path):
                    if (repo := self._repo_or_404(m["repo"])) is None:
                        return
                    entries = [{"type": "file", "path": p, "size": len(data), "oid": _blob_id(data)}
                               for p, data in sorted(repo["files"].items())]
                    return self._send(200, entries)
                if m := re.fullmatch(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
                    if (repo := self._repo_or_404(m["repo"])) is None:
                        return
                    data = repo["files"].get(m["file"])
                    if data is None:
                        return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return self._send(200, body=data, headers={"X-Repo-Commit": repo["commits"][-1],
                                                              "ETag": f'"{_blob_id(data)}"'})
                return self._send(404, {"error": f"not served: GET {path}"})

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

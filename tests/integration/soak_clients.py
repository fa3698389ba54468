"""The soak's load: the loopback file server the download jobs fetch from, the statistics the
clients share, and the client threads with their request mix (see soak.py for the whole run).

Each client keeps its own keep-alive HTTP connection and loops over submit / status / list /
download / files / missing; a download's bytes are checked against what the file server sent.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from gunicorn_harness import TERMINAL, LoopbackHTTPServer

ALLOWED = {200, 201, 202, 206, 304, 429, 503}
LOCKED = b"database is locked"

# 64 KiB of a fixed pattern: the file server sends a prefix of it, so the client knows the bytes
BLOCK = bytes((i * 131 + 7) % 251 for i in range(64 * 1024))


# --- the loopback file server -----------------------------------------------------------------

class FileServer(LoopbackHTTPServer):
    """Serves GET /f/<size>/<name>: the first ``size`` bytes of BLOCK, at once."""

    def __init__(self):
        self.fetches = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                m = re.fullmatch(r"/f/(\d+)/[\w.-]+", self.path.split("?", 1)[0])
                size = int(m.group(1)) if m else -1
                if not 0 < size <= len(BLOCK):
                    self.send_error(404)
                    return
                with outer.lock:
                    outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(BLOCK[:size])
                except OSError:
                    pass
                self.close_connection = True

        super().__init__(Handler, "soak-file-server", queue_size=128)

    def url(self, size: int, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/f/{size}/{name}"


# --- statistics shared by the clients ---------------------------------------------------------

class Stats:
    def __init__(self, warmup_end: float):
        self.lock = threading.Lock()
        self.warmup_end = warmup_end           # monotonic
        self.by_status: dict[str, dict[str, int]] = {}   # op -> status -> count
        self.latency: dict[str, list[float]] = {}        # op -> seconds (served answers only)
        self.after_warmup_requests = 0
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.reconnects = 0
        self.submitted: dict[str, str] = {}    # job id -> kind (202s, and replays of them)
        self.replays = 0
        self.downloads_checked = 0
        self.ranges_checked = 0

    def record(self, op: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests += 1
            if time.monotonic() >= self.warmup_end:
                self.after_warmup_requests += 1
            per = self.by_status.setdefault(op, {})
            per[str(status)] = per.get(str(status), 0) + 1
            if status in (200, 201, 202, 206, 304):
                self.latency.setdefault(op, []).append(seconds)

    def error(self, key: str, detail: str) -> None:
        with self.lock:
            self.errors[key] = self.errors.get(key, 0) + 1
            if len(self.error_samples) < 40:
                self.error_samples.append(f"{key}: {detail[:300]}")

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for per in self.by_status.values():
                for status, n in per.items():
                    out[status] = out.get(status, 0) + n
        return dict(sorted(out.items()))


# --- one client -------------------------------------------------------------------------------

_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

OPS = ("submit", "status", "list", "download", "files", "missing")
WEIGHTS = (18, 42, 10, 18, 10, 2)


@dataclass
class Job:
    id: str
    kind: str
    name: str | None = None          # download: the file name
    size: int = 0
    sha256: str | None = None
    etag: str | None = None
    status: str = "queued"


class Client(threading.Thread):
    def __init__(self, n: int, port: int, token: str, files: FileServer, stats: Stats,
                 stop: threading.Event, think: float, seed: int, keepalive: bool = True):
        super().__init__(name=f"soak-client-{n}", daemon=True)
        self.n, self.port, self.token, self.files, self.stats = n, port, token, files, stats
        self.stop_event, self.think, self.keepalive = stop, think, keepalive
        self.rnd = random.Random(seed * 1000 + n)
        self.conn: http.client.HTTPConnection | None = None
        self.pending: list[Job] = []
        self.finished: list[Job] = []     # succeeded downloads, the most recent 30
        self.seen: list[Job] = []         # any of its jobs, the most recent 30
        self.counter = 0
        self.list_etag: str | None = None

    # -- HTTP ---------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, op: str, method: str, path: str, body: Any = None,
             headers: dict | None = None) -> tuple[int, dict[str, str], bytes] | None:
        """One request on this client's keep-alive connection. A request that fails on a
        reused connection (the server closed it while idle: keep-alive expiry) is sent again
        once on a fresh one, as HTTP clients do; POSTs carry an Idempotency-Key so that is safe.
        A failure on a fresh connection is an error (None)."""
        hdrs = {"Authorization": f"Bearer {self.token}"}
        if not self.keepalive:
            hdrs["Connection"] = "close"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        for attempt in (1, 2):
            fresh = self.conn is None
            conn = self._connect()
            started = time.monotonic()
            try:
                conn.request(method, path, body=data, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE as exc:
                self._drop()
                if fresh or attempt == 2:
                    self.stats.error(f"{op}:connection", f"{method} {path}: {exc!r}")
                    return None
                with self.stats.lock:
                    self.stats.reconnects += 1
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                self.stats.error(f"{op}:connection", f"{method} {path}: {exc!r}")
                return None
            elapsed = time.monotonic() - started
            if resp.will_close:
                self._drop()
            self.stats.record(op, resp.status, elapsed)
            if LOCKED in raw.lower():
                self.stats.error(f"{op}:database_locked", f"{method} {path} -> {resp.status}: {raw[:200]!r}")
            allowed = ALLOWED | ({404} if op == "missing" else set())
            if resp.status not in allowed:
                self.stats.error(f"{op}:{resp.status}", f"{method} {path}: {raw[:200]!r}")
            elif op == "missing" and resp.status != 404 and resp.status not in (429, 503):
                self.stats.error(f"{op}:{resp.status}", f"{method} {path} was expected to be 404")
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw
        return None

    def back_off(self, headers: dict[str, str]) -> None:
        try:
            wait = float(headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        self.stop_event.wait(min(wait, 2.0) * self.rnd.uniform(0.5, 1.0))

    # -- the mix ------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                op = self.rnd.choices(OPS, WEIGHTS)[0]
                if op == "download" and not self.finished:
                    op = "status" if self.pending or self.seen else "submit"
                if op in ("status", "files") and not (self.pending or self.seen):
                    op = "submit"
                answer = getattr(self, "do_" + op)()
                if answer is not None and answer[0] in (429, 503):
                    self.back_off(answer[1])
                elif self.think:
                    self.stop_event.wait(self.rnd.uniform(0, 2 * self.think))
        except Exception as exc:  # noqa: BLE001 - a bug in the client is an error, not a hang
            self.stats.error("client:crashed", repr(exc))
        finally:
            self._drop()

    def do_submit(self):
        self.counter += 1
        if self.rnd.random() < 0.8:
            size = self.rnd.randint(1024, len(BLOCK))
            name = f"c{self.n}-{self.counter}.bin"
            job = Job("", "download", name=name, size=size, sha256=hashlib.sha256(BLOCK[:size]).hexdigest())
            body = {"kind": "download", "params": {"url": self.files.url(size, name), "filename": name,
                                                    "sha256": job.sha256}}
        else:
            job = Job("", "sleep")
            body = {"kind": "sleep", "params": {"duration": round(self.rnd.uniform(0, 0.2), 3), "steps": 1}}
        answer = self.call("submit", "POST", "/api/v1/jobs", body, {"Idempotency-Key": uuid.uuid4().hex})
        if answer is None:
            return None
        status, headers, raw = answer
        if status in (200, 202):
            job.id = json.loads(raw)["data"]["id"]
            with self.stats.lock:
                if status == 200:
                    self.stats.replays += 1
                self.stats.submitted[job.id] = job.kind
            self.pending.append(job)
            self._remember(self.seen, job)
        return answer

    @staticmethod
    def _remember(bucket: list[Job], job: Job, keep: int = 30) -> None:
        bucket.append(job)
        del bucket[:-keep]

    def do_status(self):
        job = self.pending[0] if self.pending and self.rnd.random() < 0.8 else self.rnd.choice(self.pending or self.seen)
        headers = {"If-None-Match": job.etag} if job.etag and self.rnd.random() < 0.5 else {}
        answer = self.call("status", "GET", f"/api/v1/jobs/{job.id}", headers=headers)
        if answer is None:
            return None
        status, hdrs, raw = answer
        if status == 200:
            job.etag = hdrs.get("etag")
            data = json.loads(raw)["data"]
            job.status = data["status"]
            if job.status in TERMINAL and job in self.pending:
                self.pending.remove(job)
                if job.kind == "download" and job.status == "succeeded":
                    names = [f["name"] for f in data["files"]]
                    if job.name not in names:
                        self.stats.error("status:files", f"job {job.id}: files {names}, expected {job.name}")
                    else:
                        self._remember(self.finished, job)
        # keep a backlog from growing without bound if the server falls far behind
        if len(self.pending) > 40:
            del self.pending[:-40]
        return answer

    def do_list(self):
        query = self.rnd.choice(["page_size=20", "page_size=20&status=succeeded", "page_size=10&page=2",
                                 "page_size=20&kind=download"])
        headers = {"If-None-Match": self.list_etag} if self.list_etag and self.rnd.random() < 0.3 else {}
        answer = self.call("list", "GET", f"/api/v1/jobs?{query}", headers=headers)
        if answer is not None and answer[0] == 200:
            self.list_etag = answer[1].get("etag")
        return answer

    def do_download(self):
        job = self.rnd.choice(self.finished)
        path = f"/api/v1/jobs/{job.id}/files/{job.name}"
        expected = BLOCK[:job.size]
        r = self.rnd.random()
        if r < 0.33:
            lo = self.rnd.randrange(0, job.size)
            hi = self.rnd.randrange(lo, job.size)
            answer = self.call("download", "GET", path, headers={"Range": f"bytes={lo}-{hi}"})
            if answer is not None and answer[0] == 206:
                with self.stats.lock:
                    self.stats.ranges_checked += 1
                if answer[2] != expected[lo:hi + 1]:
                    self.stats.error("download:range_bytes", f"{path} bytes={lo}-{hi}: got {len(answer[2])} bytes")
            elif answer is not None and answer[0] not in (429, 503):
                self.stats.error("download:range_status", f"{path} bytes={lo}-{hi}: {answer[0]}")
            return answer
        headers = {"If-None-Match": f'"{job.sha256}"'} if r > 0.9 else {}
        answer = self.call("download", "GET", path, headers=headers)
        if answer is not None and answer[0] == 200:
            with self.stats.lock:
                self.stats.downloads_checked += 1
            if answer[2] != expected:
                self.stats.error("download:bytes", f"{path}: {len(answer[2])} bytes, expected {job.size}")
        return answer

    def do_files(self):
        job = self.rnd.choice(self.seen or self.pending)
        return self.call("files", "GET", f"/api/v1/jobs/{job.id}/files")

    def do_missing(self):
        return self.call("missing", "GET", f"/api/v1/jobs/{uuid.uuid4()}")

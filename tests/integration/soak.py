"""Load soak: 50 concurrent clients against one real gunicorn (2-core profile) for a bounded time.

Run it as a script::

    .venv/bin/python tests/integration/soak.py --seconds 180 --clients 50

or import ``run_soak`` (tests/integration/test_soak.py does, with a short duration). It starts
ilgun under gunicorn on a temp data folder (SQLite), a loopback file server that the download
jobs fetch small files from, registers ``--users`` users and runs ``--clients`` client threads,
each on its own keep-alive HTTP connection, looping over a mix of

  submit    POST /api/v1/jobs: mostly a download of a small loopback file (1-64 KiB, with its
            sha256, so a corrupted download fails the job), else a sleep of 0-0.2 s
  status    GET /api/v1/jobs/<id> of one of its own jobs, half of them with If-None-Match
  list      GET /api/v1/jobs (a page, sometimes filtered, sometimes conditional)
  download  GET /api/v1/jobs/<id>/files/<name> of a finished download, a third with Range;
            the bytes are checked against what the file server sent
  files     GET /api/v1/jobs/<id>/files
  missing   GET /api/v1/jobs/<random id>: a deliberate 404 (the only 404 allowed)

Rate limits: the service defaults stay ON (600/min per user, 120 submits/min per user, counted
in the application's own SQLite database). That is deliberate: with the default storage every
API request is also a write transaction on the database file the jobs live in, which is the
production write path and the main source of lock contention; switching the limiter off would
hide exactly that. The clients pace themselves like interactive ones (``--think`` seconds
between requests on average) so that they mostly stay under the per-user limits; the 429s that
randomness produces are deliberate, and a client that gets one waits min(Retry-After, 2 s).
``--ratelimit off`` is the other mode: limiter off, MAX_QUEUED_PER_USER=``--max-queued``,
usually with ``--think 0`` for a saturating run. The jobs here finish in well under a second, so
even then a user's queue rarely holds more than a few: QUEUE_FULL 429s need a very low bound
(``--max-queued 3`` gave one in 20 s on 2 cores).

Counted as errors: any status other than 2xx/304/206/429/503 (404 only for ``missing``), any
body mentioning "database is locked", a connection failure on a fresh connection, wrong bytes
in a download, a worker replaced during the run, and "database is locked", a traceback or a
worker timeout in the server's log.

Every second after the start a sampler reads, for the master and each worker: RSS
(/proc/<pid>/status), PSS (/proc/<pid>/smaps_rollup), threads, and open file descriptors
(/proc/<pid>/fd, split into the HTTP connections of the clients and the rest). The first
``--warmup`` fraction of the run is warm-up; growth = median of the last window / median of
the first window after warm-up, per process. The JSON report goes to
test-artifacts/reliability/soak.json (``--out``), a progress line to stderr every ~5 s.

Loopback only; every wait is bounded; the server is killed (process group) at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gunicorn_harness import ROOT, TERMINAL, IlgunServer, LoopbackHTTPServer, child_pids  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_support import percentile  # noqa: E402

DEFAULT_OUT = ROOT / "test-artifacts" / "reliability" / "soak.json"

ALLOWED = {200, 201, 202, 206, 304, 429, 503}
LOCKED = b"database is locked"
# In the server's log: a lock error that reached a request or job, an unhandled exception, or a
# worker the master had to kill. ("database busy, retrying write" warnings are the service's
# own retry working and are only counted.)
LOG_PROBLEMS = {
    "database_is_locked": re.compile(r"database is locked", re.I),
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
    "unhandled_error": re.compile(r"unhandled error"),
    "worker_timeout": re.compile(r"WORKER TIMEOUT|was sent SIGKILL|was sent SIGABRT", re.I),
}
LOG_COUNTED = {"db_busy_retry": re.compile(r"database busy, retrying write")}

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


# --- sampling the processes -------------------------------------------------------------------

def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(rest.split()[0])
    return out


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _socket_ports() -> dict[str, tuple[int, int]]:
    """socket inode -> (local port, remote port), for TCP sockets over IPv4 and IPv6."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9:
                        local = int(parts[1].rsplit(":", 1)[1], 16)
                        remote = int(parts[2].rsplit(":", 1)[1], 16)
                        out[parts[9]] = (local, remote)
        except OSError:
            continue
    return out


def _fds(pid: int, ilgun_port: int, ports: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Open descriptors by type: http (the listening socket and client connections), and the
    rest: file, socket (outgoing TCP, unix), pipe, other."""
    counts = {"total": 0, "http": 0, "file": 0, "socket": 0, "pipe": 0, "other": 0}
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:
            continue
        counts["total"] += 1
        if target.startswith("socket:["):
            local, _ = ports.get(target[8:-1], (None, None))
            counts["http" if local == ilgun_port else "socket"] += 1
        elif target.startswith("pipe:"):
            counts["pipe"] += 1
        elif target.startswith("/"):
            counts["file"] += 1
        else:
            counts["other"] += 1
    counts["non_http"] = counts["total"] - counts["http"]
    return counts


class Sampler(threading.Thread):
    def __init__(self, server: IlgunServer, t0: float, interval: float = 1.0):
        super().__init__(name="soak-sampler", daemon=True)
        self.server, self.t0, self.interval = server, t0, interval
        self.stop_event = threading.Event()
        self.samples: list[dict] = []
        self.workers_seen: list[int] = []
        self.worker_changes: list[str] = []
        self.sample_cost: list[float] = []

    def sample_once(self) -> None:
        started = time.monotonic()
        master = self.server.pid
        workers = sorted(child_pids(master))
        if self.workers_seen and workers != self.workers_seen:
            self.worker_changes.append(f"{started - self.t0:.1f}s: workers {self.workers_seen} -> {workers}")
        self.workers_seen = workers
        ports = _socket_ports()
        for role, pid in [("master", master)] + [("worker", w) for w in workers]:
            try:
                st = _status_kb(pid)
                fds = _fds(pid, self.server.port, ports)
                cpu = _cpu_seconds(pid)
            except (OSError, ValueError):
                continue  # it just exited; the change shows in the next sample's worker list
            self.samples.append({"t": round(started - self.t0, 2), "pid": pid, "role": role,
                                 "rss_kb": st.get("VmRSS"), "pss_kb": _pss_kb(pid),
                                 "threads": st.get("Threads"), "cpu_s": round(cpu, 2), "fds": fds})
        self.sample_cost.append(time.monotonic() - started)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # noqa: BLE001 - a missing sample is not worth a crash
                self.worker_changes.append(f"sampler error: {exc!r}")
            next_at += self.interval
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def latest(self) -> dict[int, dict]:
        out = {}
        for s in reversed(self.samples):
            out.setdefault(s["pid"], s)
            if len(out) >= 4:
                break
        return out


# --- analysis ---------------------------------------------------------------------------------

def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    ts = [p[0] for p in points]
    vs = [p[1] for p in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    if not den:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den


def analyse_memory(samples: list[dict], warmup: float, end: float, window: float) -> dict[str, dict]:
    """Per process (key role:pid): first window after warm-up vs last window, RSS/PSS growth in
    percent, descriptor medians and the RSS slope after warm-up."""
    by_pid: dict[int, list[dict]] = {}
    for s in samples:
        by_pid.setdefault(s["pid"], []).append(s)
    out = {}
    for pid, rows in by_pid.items():
        role = rows[0]["role"]
        after = [r for r in rows if warmup <= r["t"] <= end]
        first = [r for r in after if r["t"] < warmup + window]
        last = [r for r in after if r["t"] >= end - window]
        entry: dict[str, Any] = {"pid": pid, "role": role, "samples": len(rows),
                                 "present_whole_run": bool(first) and bool(last)}
        if first and last:
            def med(rs, getter):
                vals = [getter(r) for r in rs if getter(r) is not None]
                return statistics.median(vals) if vals else None

            rss0, rss1 = med(first, lambda r: r["rss_kb"]), med(last, lambda r: r["rss_kb"])
            pss0, pss1 = med(first, lambda r: r["pss_kb"]), med(last, lambda r: r["pss_kb"])
            entry.update({
                "rss_mb_start": round(rss0 / 1024, 1), "rss_mb_end": round(rss1 / 1024, 1),
                "rss_growth_pct": round(100 * (rss1 / rss0 - 1), 2),
                "pss_mb_start": round(pss0 / 1024, 1) if pss0 else None,
                "pss_mb_end": round(pss1 / 1024, 1) if pss1 else None,
                "pss_growth_pct": round(100 * (pss1 / pss0 - 1), 2) if pss0 and pss1 else None,
                "rss_mb_max": round(max(r["rss_kb"] for r in rows) / 1024, 1),
                "rss_slope_mb_per_min": (lambda s: round(s / 1024, 3) if s is not None else None)(
                    _slope_per_min([(r["t"], r["rss_kb"]) for r in after])),
                "threads_start": med(first, lambda r: r["threads"]), "threads_end": med(last, lambda r: r["threads"]),
            })
            for key in ("total", "non_http", "http", "file", "socket", "pipe", "other"):
                entry[f"fd_{key}_start"] = med(first, lambda r: r["fds"][key])
                entry[f"fd_{key}_end"] = med(last, lambda r: r["fds"][key])
            entry["fd_non_http_max_after_warmup"] = max(r["fds"]["non_http"] for r in after)
            span = after[-1]["t"] - after[0]["t"]
            entry["cpu_s_after_warmup"] = round(after[-1]["cpu_s"] - after[0]["cpu_s"], 2)
            entry["cpu_pct_of_core_after_warmup"] = round(100 * entry["cpu_s_after_warmup"] / span, 1) if span else None
            entry["fd_total_max"] = max(r["fds"]["total"] for r in rows)
        out[f"{role}:{pid}"] = entry
    return out


def scan_log(text: str) -> dict[str, Any]:
    """Problems in the server's log, line by line. A "database busy, retrying write (database is
    locked)" warning is the service's retry doing its job: counted, not a problem."""
    found = {name: 0 for name in LOG_PROBLEMS}
    counted = {name: 0 for name in LOG_COUNTED}
    samples = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        retried = False
        for name, rx in LOG_COUNTED.items():
            if rx.search(line):
                counted[name] += 1
                retried = True
        if retried:
            continue
        hit = False
        for name, rx in LOG_PROBLEMS.items():
            if rx.search(line):
                found[name] += 1
                hit = True
        if hit and len(samples) < 8:
            samples.append("\n".join(lines[i:i + 3])[:600])
    return {"problems": found, "counted": counted, "samples": samples}


# --- the run ----------------------------------------------------------------------------------

@dataclass
class SoakConfig:
    seconds: float = 180.0
    clients: int = 50
    users: int = 10
    warmup: float = 0.2             # fraction of the run
    think: float = 0.5              # mean seconds a client waits between requests
    ratelimit: str = "on"           # "on": the service defaults; "off": see the module docstring
    connection: str = "keepalive"   # each client's own keep-alive connection; "close": one per request
    max_queued: int = 3             # MAX_QUEUED_PER_USER with ratelimit off
    seed: int = 1
    drain_timeout: float = 90.0     # after the load: seconds the jobs get to finish
    rss_limit_pct: float = 5.0      # the flatness verdict in the report
    fd_slack: int = 5               # non-HTTP descriptors may grow by this much (median to median)
    extra_settings: dict = field(default_factory=dict)

    def settings(self) -> dict[str, str]:
        s = {
            # no recycling: every worker must live through the whole run for its RSS to compare
            "MAX_REQUESTS": "0", "MAX_REQUESTS_JITTER": "0",
            "KIND_LIMITS": "{}",                              # the service's own kind limits
            "JWT_ACCESS_TOKEN_EXPIRES": str(int(max(900, self.seconds + 900))),
        }
        if self.ratelimit == "on":
            s.update(RATELIMIT_ENABLED="1", MAX_QUEUED_PER_USER="200", MAX_QUEUED_TOTAL="20000")
        else:
            s.update(RATELIMIT_ENABLED="0", MAX_QUEUED_PER_USER=str(self.max_queued), MAX_QUEUED_TOTAL="20000")
        s.update({k: str(v) for k, v in self.extra_settings.items()})
        return s


def _print(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_soak(cfg: SoakConfig, data_dir: Path, out: Path | None = DEFAULT_OUT,
             log: Callable[[str], None] = _print) -> dict:
    """Run one soak and return its report (also written to ``out`` as JSON)."""
    server = IlgunServer(Path(data_dir), cfg.settings(), name="soak")
    files = FileServer().start()
    clients: list[Client] = []
    sampler: Sampler | None = None
    stop = threading.Event()
    try:
        server.prepare()
        server.start()
        tokens = [server.register(f"soak{i}") for i in range(cfg.users)]
        log(f"gunicorn pid {server.pid} on 127.0.0.1:{server.port}, workers {sorted(server.worker_pids())}; "
            f"{cfg.clients} clients x {cfg.seconds:.0f}s (warm-up {cfg.warmup * cfg.seconds:.0f}s), "
            f"rate limits {cfg.ratelimit}, data {data_dir}")

        t0 = time.monotonic()
        client_cpu0 = time.process_time()
        loadavg_start = os.getloadavg()
        warmup_s = cfg.warmup * cfg.seconds
        stats = Stats(t0 + warmup_s)
        sampler = Sampler(server, t0)
        sampler.start()
        clients = [Client(i, server.port, tokens[i % cfg.users], files, stats, stop, cfg.think, cfg.seed,
                          keepalive=cfg.connection == "keepalive")
                   for i in range(cfg.clients)]
        for c in clients:
            c.start()
        end_at = t0 + cfg.seconds
        last_print, last_requests = t0, 0
        while True:
            now = time.monotonic()
            if now >= end_at:
                break
            time.sleep(min(0.5, end_at - now))
            now = time.monotonic()
            if now - last_print >= 5 or now >= end_at:
                with stats.lock:
                    reqs, errs = stats.requests, sum(stats.errors.values())
                    jobs = len(stats.submitted)
                rss = " ".join(f"{s['role'][0]}{s['rss_kb'] // 1024}M/{s['fds']['total']}fd"
                               for s in sorted(sampler.latest().values(), key=lambda s: (s["role"] != "master", s["pid"])))
                log(f"{now - t0:5.0f}s {reqs} req ({(reqs - last_requests) / (now - last_print):.0f}/s) "
                    f"status {stats.totals()} errors {errs} jobs {jobs} | {rss}")
                last_print, last_requests = now, reqs
        load_seconds = time.monotonic() - t0
        client_cpu = time.process_time() - client_cpu0
        stop.set()
        for c in clients:
            c.join(timeout=35)
        stuck_clients = [c.name for c in clients if c.is_alive()]
        sampler.stop_event.set()
        sampler.join(timeout=5)
        end_t = load_seconds

        # after the load: every submitted job must finish (read straight from the database)
        submitted = dict(stats.submitted)
        drain_started = time.monotonic()
        rows: dict[str, dict] = {}
        while True:
            rows = server.db_jobs()
            open_jobs = [j for j in submitted if j not in rows or rows[j]["status"] not in TERMINAL]
            if not open_jobs or time.monotonic() - drain_started > cfg.drain_timeout:
                break
            time.sleep(0.5)
        drain_seconds = time.monotonic() - drain_started
        job_status: dict[str, int] = {}
        for j in submitted:
            st = rows[j]["status"] if j in rows else "missing"
            job_status[st] = job_status.get(st, 0) + 1
        not_succeeded = [{"id": j, "kind": rows[j]["kind"] if j in rows else submitted[j],
                          "status": rows[j]["status"] if j in rows else "missing",
                          "error": (rows[j].get("error_code"), rows[j].get("error_message")) if j in rows else None}
                         for j in submitted if j not in rows or rows[j]["status"] != "succeeded"]
        workers_end = sorted(server.worker_pids())
        log_scan = scan_log(server.log_text())

        window = max(5.0, min(30.0, (end_t - warmup_s) / 5))
        memory = analyse_memory(sampler.samples, warmup_s, end_t, window)
        workers_whole = {k: v for k, v in memory.items() if v["role"] == "worker" and v["present_whole_run"]}
        status_lat = stats.latency.get("status", [])
        all_lat = [x for v in stats.latency.values() for x in v]
        post = end_t - warmup_s

        errors = dict(stats.errors)
        for name, n in log_scan["problems"].items():
            if n:
                errors[f"log:{name}"] = n
        if sampler.worker_changes:
            errors["workers_replaced"] = len(sampler.worker_changes)
        if stuck_clients:
            errors["clients_stuck"] = len(stuck_clients)

        rss_flat = {k: v["rss_growth_pct"] < cfg.rss_limit_pct for k, v in workers_whole.items()}
        fd_flat = {k: v["fd_non_http_end"] - v["fd_non_http_start"] <= cfg.fd_slack
                   for k, v in memory.items() if v["present_whole_run"]}
        report = {
            "config": {**asdict(cfg), "settings": cfg.settings()},
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - load_seconds)),
            "host": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(), "python": sys.version.split()[0]},
            "load_seconds": round(load_seconds, 1), "warmup_seconds": round(warmup_s, 1), "window_seconds": window,
            "requests": stats.requests, "requests_after_warmup": stats.after_warmup_requests,
            "rps": round(stats.requests / load_seconds, 1),
            "rps_after_warmup": round(stats.after_warmup_requests / post, 1) if post > 0 else None,
            "worker_cpu_ms_per_request_after_warmup": round(
                1000 * sum(p.get("cpu_s_after_warmup", 0) for p in memory.values() if p["role"] == "worker")
                / stats.after_warmup_requests, 2) if stats.after_warmup_requests else None,
            "client_cpu_pct_of_core": round(100 * client_cpu / load_seconds, 1),
            "status_totals": stats.totals(), "by_op": stats.by_status,
            "status_reads_ms": {"count": len(status_lat), "p50": _ms(percentile(status_lat, 50)),
                                "p90": _ms(percentile(status_lat, 90)), "p99": _ms(percentile(status_lat, 99)),
                                "max": _ms(max(status_lat) if status_lat else None)},
            "latency_ms_by_op": {op: {"p50": _ms(percentile(v, 50)), "p99": _ms(percentile(v, 99))}
                                 for op, v in sorted(stats.latency.items())},
            "all_requests_ms": {"p50": _ms(percentile(all_lat, 50)), "p99": _ms(percentile(all_lat, 99))},
            "jobs": {"submitted": len(submitted), "idempotent_replays": stats.replays,
                     "by_kind": {k: sum(1 for v in submitted.values() if v == k) for k in ("download", "sleep")},
                     "final_status": job_status, "drain_seconds": round(drain_seconds, 1),
                     "not_succeeded_samples": not_succeeded[:10], "not_succeeded": len(not_succeeded)},
            "downloads_checked": stats.downloads_checked, "ranges_checked": stats.ranges_checked,
            "file_server_fetches": files.fetches, "reconnects": stats.reconnects,
            "errors": errors, "error_samples": stats.error_samples, "errors_total": sum(errors.values()),
            "log": log_scan, "worker_changes": sampler.worker_changes, "workers_end": workers_end,
            "processes": memory,
            "verdict": {
                "rss_limit_pct": cfg.rss_limit_pct, "fd_slack": cfg.fd_slack,
                "rss_flat": rss_flat, "fd_flat": fd_flat,
                "max_worker_rss_growth_pct": max((v["rss_growth_pct"] for v in workers_whole.values()), default=None),
                "all_flat": bool(rss_flat) and all(rss_flat.values()) and all(fd_flat.values()),
                "no_errors": not errors, "all_jobs_succeeded": not not_succeeded,
            },
            "sampler": {"samples": len(sampler.samples),
                        "cost_ms_p50": _ms(percentile(sampler.sample_cost, 50)),
                        "cost_ms_max": _ms(max(sampler.sample_cost) if sampler.sample_cost else None)},
            "samples": sampler.samples,
            "server_log": str(server.log_path),
        }
        if out is not None:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            if server.log_path and server.log_path.exists():  # the data folder may be a temp dir
                report["server_log"] = str(out.with_suffix(".server.log"))
                shutil.copyfile(server.log_path, report["server_log"])
            out.write_text(json.dumps(report, indent=1, default=str))
            report["written_to"] = str(out)
        return report
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=5)
        if sampler is not None:
            sampler.stop_event.set()
        server.kill_group()
        files.stop()


def summary(report: dict) -> str:
    """The figures, a few lines for a terminal or a test's output."""
    lines = [
        f"load {report['load_seconds']}s (warm-up {report['warmup_seconds']}s, windows {report['window_seconds']:.0f}s): "
        f"{report['requests']} requests, {report['rps']} req/s ({report['rps_after_warmup']} after warm-up), "
        f"worker CPU {report['worker_cpu_ms_per_request_after_warmup']} ms/request, "
        f"this load generator {report['client_cpu_pct_of_core']}% of a core",
        f"statuses {report['status_totals']}; errors {report['errors'] or 'none'}",
        f"status reads p50 {report['status_reads_ms']['p50']} ms, p90 {report['status_reads_ms']['p90']} ms, "
        f"p99 {report['status_reads_ms']['p99']} ms, max {report['status_reads_ms']['max']} ms "
        f"({report['status_reads_ms']['count']} reads); all requests p50 {report['all_requests_ms']['p50']} ms "
        f"p99 {report['all_requests_ms']['p99']} ms",
        f"jobs submitted {report['jobs']['submitted']} {report['jobs']['by_kind']}, final {report['jobs']['final_status']} "
        f"(drained in {report['jobs']['drain_seconds']}s); downloads checked {report['downloads_checked']}, "
        f"ranges {report['ranges_checked']}; reconnects {report['reconnects']}",
    ]
    for key, p in sorted(report["processes"].items(), key=lambda kv: (kv[1]["role"] != "master", kv[0])):
        if not p["present_whole_run"]:
            lines.append(f"  {key}: not present for the whole run ({p['samples']} samples)")
            continue
        lines.append(
            f"  {key}: RSS {p['rss_mb_start']} -> {p['rss_mb_end']} MB ({p['rss_growth_pct']:+.2f}%, slope "
            f"{p['rss_slope_mb_per_min']} MB/min), PSS {p['pss_mb_start']} -> {p['pss_mb_end']} MB "
            f"({p['pss_growth_pct']:+.2f}%); fds {p['fd_total_start']:g} -> {p['fd_total_end']:g} "
            f"(non-HTTP {p['fd_non_http_start']:g} -> {p['fd_non_http_end']:g}, max {p['fd_non_http_max_after_warmup']}); "
            f"HTTP connections {p['fd_http_end']:g}; threads {p['threads_start']:g} -> {p['threads_end']:g}; "
            f"CPU {p['cpu_pct_of_core_after_warmup']}% of a core")
    v = report["verdict"]
    lines.append(f"verdict: no_errors={v['no_errors']} all_jobs_succeeded={v['all_jobs_succeeded']} "
                 f"all_flat={v['all_flat']} (RSS < {v['rss_limit_pct']}%, non-HTTP fds +{v['fd_slack']}); "
                 f"log {report['log']['counted']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = SoakConfig()
    p.add_argument("--seconds", type=float, default=d.seconds, help="load duration, warm-up included")
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of the run that is warm-up")
    p.add_argument("--think", type=float, default=d.think, help="mean seconds between a client's requests")
    p.add_argument("--ratelimit", choices=("on", "off"), default=d.ratelimit)
    p.add_argument("--connection", choices=("keepalive", "close"), default=d.connection,
                   help="each client's own keep-alive connection, or a fresh connection per request")
    p.add_argument("--max-queued", type=int, default=d.max_queued, help="MAX_QUEUED_PER_USER with --ratelimit off")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rss-limit", type=float, default=d.rss_limit_pct, help="RSS growth verdict, percent")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--data-dir", type=Path, help="keep the server's data here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    cfg = SoakConfig(seconds=args.seconds, clients=args.clients, users=args.users, warmup=args.warmup,
                     think=args.think, ratelimit=args.ratelimit, connection=args.connection,
                     max_queued=args.max_queued, seed=args.seed,
                     rss_limit_pct=args.rss_limit)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ilgun-soak-"))

    def interrupted(_signum, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run_soak(cfg, data_dir, args.out)
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(summary(report))
    print(f"report: {report.get('written_to')}")
    v = report["verdict"]
    return 0 if v["no_errors"] and v["all_jobs_succeeded"] and v["all_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())

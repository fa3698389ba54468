"""Helpers for the gunicorn integration tests: a real ilgun under gunicorn, a slow file server
for the download kind, a tiny HTTP client that opens a fresh connection per request, and
read access to the database (the SQLite file, or PostgreSQL when the server's settings give a
postgresql DATABASE_URL: several servers on one such database are several "hosts").

Everything listens on and talks to 127.0.0.1 only, and every wait is bounded.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
ADMIN_PASSWORD = "admin-integration-pw"
USER_PASSWORD = "user-integration-pw"
TERMINAL = ("succeeded", "failed", "cancelled")

# Environment variables that would change what the server under test does; the tests set
# what they need and nothing else leaks in from the developer's shell.
_SCRUBBED_PREFIXES = ("ILGUN_", "GUNICORN_", "RATELIMIT_", "DOWNLOAD_", "CRAWL_", "CEFR_")
_SCRUBBED = {
    "DATABASE_URL", "FILES_ROOT", "SECRET_KEY", "JWT_SECRET_KEY", "WEB_CONCURRENCY", "THREADS",
    "MAX_WORKERS", "HOST", "PORT", "GRACEFUL_TIMEOUT", "TIMEOUT", "MAX_REQUESTS",
    "MAX_REQUESTS_JITTER", "LEASE_SECONDS", "POLL_INTERVAL", "SWEEP_INTERVAL", "KIND_LIMITS",
    "SLEEP_KIND_FOR_EVERYONE", "MAX_QUEUED_PER_USER", "MAX_QUEUED_TOTAL", "SHUTDOWN_GRACE",
    "START_DISPATCHER", "ALLOW_REGISTRATION", "FLASK_APP", "DB_POOL_SIZE", "WEB_THREADS", "http_proxy", "https_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY",
}

BASE_SETTINGS = {
    "ILGUN_PROFILE": "medium",          # 3 workers x 2 threads, MAX_WORKERS=2
    "LEASE_SECONDS": "3",
    "SWEEP_INTERVAL": "0.5",
    "POLL_INTERVAL": "0.1",
    "GRACEFUL_TIMEOUT": "10",
    "RATELIMIT_ENABLED": "0",
    "MAX_QUEUED_PER_USER": "100000",
    "MAX_QUEUED_TOTAL": "100000",
    "SLEEP_KIND_FOR_EVERYONE": "1",
    "ILGUN_ALLOW_PRIVATE_URLS": "1",    # the slow file server is on loopback
    "KIND_LIMITS": json.dumps({"download": {"per_user": 100}}),
    "LOG_LEVEL": "INFO",
    # loading the CEFR model in the master costs each server start ~3 s; the tests that need it
    # (test_gunicorn_cefr.py) turn it on
    "CEFR_PRELOAD": "0",
    # gunicorn 27 otherwise opens a control socket at a fixed path shared by every instance.
    "GUNICORN_CMD_ARGS": "--no-control-socket",
}


def run_threads(threads: list[threading.Thread], timeout: float) -> float:
    """Start the threads, join each for at most ``timeout`` seconds; returns the seconds taken."""
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return time.monotonic() - started


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - remembered for the failure message
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_stats():
    """(pid, fields after the command name) of every process, from /proc/<pid>/stat:
    fields[0] is the state, [1] the parent pid, [2] the process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                yield int(entry), f.read().decode(errors="replace").rsplit(")", 1)[-1].split()
        except OSError:
            continue


def child_pids(ppid: int) -> set[int]:
    """Live (non-zombie) children of ``ppid``."""
    return {pid for pid, fields in _proc_stats()
            if len(fields) >= 2 and fields[0] != "Z" and int(fields[1]) == ppid}


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace").rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def group_members(pgid: int) -> set[int]:
    """Live (non-zombie) members of process group ``pgid``."""
    return {pid for pid, fields in _proc_stats()
            if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid}


# --- HTTP client ------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def data(self):
        return (self.body or {}).get("data") if isinstance(self.body, dict) else None

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


_RETRYABLE = (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead,
              http.client.BadStatusLine, socket.timeout, TimeoutError)


def request(port: int, method: str, path: str, body: Any = None, token: str | None = None,
            headers: dict | None = None, timeout: float = 20.0, retries: int = 3) -> Response:
    """One request on a fresh connection (so requests spread over gunicorn's workers).

    Connection failures are retried: a worker that is killed or recycled may drop a request.
    Only idempotent requests may rely on that: GETs, and submissions with an Idempotency-Key."""
    hdrs = {"Connection": "close"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    hdrs.update(headers or {})
    attempt = 0
    while True:
        attempt += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            return Response(resp.status, dict(resp.getheaders()), parsed)
        except _RETRYABLE:
            if attempt > retries:
                raise
            time.sleep(0.2 * attempt)
        finally:
            conn.close()


# --- the server under test --------------------------------------------------------------------

class IlgunServer:
    """One gunicorn master (own session and process group) on a data folder.

    ``settings`` may set DATABASE_URL (postgresql+psycopg://...) and FILES_ROOT: servers sharing
    both, and SECRET_KEY/JWT_SECRET_KEY (else each generates its own into its data folder and
    one host's tokens are refused by the other), act as hosts of one deployment."""

    config_file = ROOT / "gunicorn.conf.py"

    def __init__(self, data_dir: Path, settings: dict[str, str] | None = None, name: str = "gunicorn"):
        self.data_dir = Path(data_dir)
        self.settings = dict(settings or {})
        self.name = name
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log_file = None
        self._admin_token: str | None = None
        self._runs = 0

    # -- environment --------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)}
        env.update(BASE_SETTINGS)
        env.update(self.settings)
        env["ILGUN_DATA"] = str(self.data_dir)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(ROOT / ".venv")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @property
    def database_url(self) -> str:
        return self.settings.get("DATABASE_URL") or ""

    @property
    def on_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def files_root(self) -> Path:
        return Path(self.settings.get("FILES_ROOT") or self.data_dir / "files")

    def prepare(self) -> None:
        """Migrate the database and create the admin with the real CLI. Both steps are
        idempotent: a second host on an already migrated database runs them too."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        for args, extra in ((["db", "upgrade"], {}), (["create-admin"], {"ILGUN_ADMIN_PASSWORD": ADMIN_PASSWORD})):
            res = subprocess.run([str(VENV_BIN / "flask"), "--app", "service", *args], cwd=ROOT,
                                 env={**env, **extra}, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, f"flask {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, port: int | None = None, wait: bool = True) -> "IlgunServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._runs += 1
        self.port = port or free_port()
        self.log_path = self.data_dir / f"{self.name}-{self._runs}.log"
        self._log_file = open(self.log_path, "ab")
        env = self.env()
        env.update(HOST="127.0.0.1", PORT=str(self.port))
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", str(self.config_file), "service:create_app()"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self._admin_token = None
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> set[int]:
        return child_pids(self.pid) if self.running() else set()

    def wait_ready(self, timeout: float = 40.0, workers: int = 3) -> None:
        deadline = time.monotonic() + timeout

        def ready():
            assert self.running(), f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}"
            return request(self.port, "GET", "/readyz", timeout=5, retries=0).status == 200
        wait_for(ready, timeout, interval=0.1, what=f"{self.name} /readyz")
        # Stats counts against the admin's rate limit where one is on: poll it gently.
        wait_for(lambda: self.live_workers_ok(workers), max(1.0, deadline - time.monotonic()), interval=0.3,
                 what=f"{self.name} with {workers} live workers running dispatchers")

    def live_workers_ok(self, workers: int = 3) -> bool:
        """``workers`` live worker processes, each with a dispatcher in /api/v1/stats."""
        procs = self.worker_pids()
        if len(procs) != workers:
            return False
        listed = {w["pid"] for w in self.stats()["workers"]}
        return procs <= listed

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (master and workers); safe to call repeatedly."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while group_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def log_text(self) -> str:
        if not self.data_dir.exists():
            return ""
        parts = []
        for p in sorted(self.data_dir.glob(f"{self.name}-*.log")):
            parts.append(f"===== {p.name}\n" + p.read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- API ----------------------------------------------------------------------------------
    def call(self, method: str, path: str, body=None, token=None, **kw) -> Response:
        return request(self.port, method, path, body, token, **kw)

    def login(self, username: str, password: str) -> str:
        r = self.call("POST", "/api/v1/auth/login", {"username": username, "password": password})
        assert r.status == 200, r
        return r.data["access_token"]

    def register(self, username: str, password: str = USER_PASSWORD) -> str:
        r = self.call("POST", "/api/v1/auth/register", {"username": username, "password": password})
        assert r.status == 201, r
        return self.login(username, password)

    @property
    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.login("admin", ADMIN_PASSWORD)
        return self._admin_token

    def stats(self) -> dict:
        r = self.call("GET", "/api/v1/stats", token=self.admin_token)
        assert r.status == 200, r
        return r.data

    def submit(self, token: str, kind: str, params: dict, key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        r = self.call("POST", "/api/v1/jobs", {"kind": kind, "params": params}, token,
                      headers={"Idempotency-Key": key})
        assert r.status in (200, 202), r
        return r.data["id"]

    def job(self, job_id: str, token: str | None = None) -> dict:
        r = self.call("GET", f"/api/v1/jobs/{job_id}", token=token or self.admin_token)
        assert r.status == 200, r
        return r.data

    def wait_jobs(self, job_ids: Iterable[str], timeout: float, token: str | None = None,
                  interval: float = 0.2) -> dict[str, dict]:
        """Poll until every job is terminal; returns the final views."""
        pending = set(job_ids)
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for job_id in list(pending):
                view = self.job(job_id, token)
                if view["status"] in TERMINAL:
                    done[job_id] = view
                    pending.discard(job_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                states = {j: self.job(j, token)["status"] for j in sorted(pending)}
                raise AssertionError(f"{len(pending)} job(s) not finished after {timeout}s: {states}")
            time.sleep(interval)
        return done

    def list_all(self, token: str | None = None, page_size: int = 100) -> tuple[list[dict], list[int]]:
        """Every job through GET /api/v1/jobs pagination; returns (items, totals per page)."""
        items, totals, page = [], [], 1
        while True:
            r = self.call("GET", f"/api/v1/jobs?page={page}&page_size={page_size}", token=token or self.admin_token)
            assert r.status == 200, r
            items += r.data["items"]
            totals.append(r.data["total"])
            if page >= r.data["total_pages"]:
                return items, totals
            page += 1

    def slow_reader(self, path: str, token: str) -> socket.socket:
        """A client that sends GET ``path`` and then reads nothing, so a large response keeps
        the worker's request in flight (a slow client downloading a result). Close it when done."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        s.settimeout(10)
        s.connect(("127.0.0.1", self.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        return s

    # -- database -----------------------------------------------------------------------------
    def _select(self, sql: str) -> list[dict]:
        if self.on_postgres:
            import pg_support
            return pg_support.select(self.database_url, sql)
        con = sqlite3.connect(str(self.data_dir / "ilgun.db"), timeout=15)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql)]
        finally:
            con.close()

    def db_jobs(self) -> dict[str, dict]:
        """Rows of the jobs table, read straight from the database (SQLite file or PostgreSQL)."""
        return {r["id"]: r for r in self._select("SELECT * FROM jobs")}

    def db_workers(self) -> list[dict]:
        """Rows of the workers table: a dispatcher removes its own row when its stop completes."""
        return self._select("SELECT * FROM workers")


# --- a slow file server for the download kind -------------------------------------------------

CHUNK = 64 * 1024          # the download kind reads 64 KiB chunks: one per write here
CHUNK_INTERVAL = 0.1       # seconds between chunks


@dataclass
class Fetch:
    """One request the file server saw."""
    path: str
    start: float
    end: float | None = None
    sent: int = 0
    size: int = 0
    complete: bool = False
    error: str | None = None

    @property
    def interval(self) -> tuple[float, float]:
        return self.start, self.end if self.end is not None else float("inf")


class LoopbackHTTPServer:
    """An HTTP server on 127.0.0.1 (a free port) running ``handler`` in daemon threads; ``start()``
    serves from a background thread, ``stop()`` shuts it down and waits for it."""

    def __init__(self, handler, name: str, queue_size: int = 64, poll_interval: float = 0.1):
        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = queue_size

        self.httpd = Server(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": poll_interval},
                                       name=name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class SlowFileServer(LoopbackHTTPServer):
    """Serves ``/<anything>?seconds=S``: CHUNK bytes every CHUNK_INTERVAL for about S seconds,
    with a Content-Length, and records every request (start, end, bytes sent, complete)."""

    def __init__(self):
        self.fetches: list[Fetch] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                seconds = float(query.get("seconds", ["1"])[0])
                chunks = int(query.get("chunks", [max(1, round(seconds / CHUNK_INTERVAL))])[0])
                rec = Fetch(path=parts.path, start=time.time(), size=chunks * CHUNK)
                with outer.lock:
                    outer.fetches.append(rec)
                payload = b"x" * CHUNK
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(rec.size))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.flush()
                    for _ in range(chunks):
                        if seconds:
                            time.sleep(seconds / chunks)
                        self.wfile.write(payload)
                        self.wfile.flush()
                        rec.sent += len(payload)
                    rec.complete = True
                except OSError as exc:
                    rec.error = repr(exc)
                finally:
                    rec.end = time.time()
                    self.close_connection = True

        super().__init__(Handler, "slow-file-server")

    def url(self, name: str, seconds: float, chunks: int | None = None) -> str:
        """``name`` streamed over about ``seconds``, in ``chunks`` of 64 KiB (default: one
        every CHUNK_INTERVAL)."""
        extra = f"&chunks={chunks}" if chunks else ""
        return f"http://127.0.0.1:{self.port}/{name}?seconds={seconds}{extra}"

    def for_path(self, name: str) -> list[Fetch]:
        with self.lock:
            return sorted((f for f in self.fetches if f.path == f"/{name}"), key=lambda f: f.start)

    def by_path(self) -> dict[str, list[Fetch]]:
        out: dict[str, list[Fetch]] = {}
        with self.lock:
            for f in self.fetches:
                out.setdefault(f.path.lstrip("/"), []).append(f)
        return {k: sorted(v, key=lambda f: f.start) for k, v in out.items()}


# Two fetches of one job overlapping by more than this are two live executions. A legitimate
# hand-back closes the first connection before the job is requeued, but this server only
# notices a closed connection on its next write or two (CHUNK_INTERVAL each).
OVERLAP_TOLERANCE = 0.5


def overlapping(fetches: list[Fetch]) -> list[tuple[Fetch, Fetch]]:
    """Pairs of fetches of one path that ran at the same time (beyond the tolerance)."""
    bad = []
    for i, a in enumerate(fetches):
        for b in fetches[i + 1:]:
            lo = max(a.interval[0], b.interval[0])
            hi = min(a.interval[1], b.interval[1])
            if hi - lo > OVERLAP_TOLERANCE:
                bad.append((a, b))
    return bad


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str, sort_keys=True)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

"""ilgun under gunicorn for bench/engine.py: a fresh server per run, no-op ``sleep`` jobs
submitted over HTTP or straight into the database, and timings read back from the job records.

Times come from the records the server stamps: created_at (in the submit transaction),
finished_at (in the finish transaction), ISO 8601 with ms, and for the start the moment the
sleep kind began to run (its result's began_at): started_at is stamped by the claim, which for a
job started directly by its submit is the submit transaction itself.

``IlgunHosts`` runs one or more gunicorn masters ("hosts", each on its own port with its own
data dir) on one database; with more than one they share the DATABASE_URL (PostgreSQL), one
FILES_ROOT, the admin password and the signing keys, as hosts of one deployment would, and the
client threads send submit i to host i mod N. ``--database-url pg`` makes a fresh PostgreSQL
database for each run (``bench_database``), dropped when the run ends and, whatever happens, by
``drop_created_databases`` on exit.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bench_support import (BENCH_DIR, REPO_ROOT, BenchError, CpuMeter, SubmitThreads, free_port, make_temp_dir,
                           remove_temp_dir, run_command, start_process, stop_process, summarize, tail, utc_epoch,
                           venv_tool, wait_for)

NOOP_JOB = {"kind": "sleep", "params": {"duration": 0, "steps": 1}}
NOOP_BODY = json.dumps(NOOP_JOB).encode()
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
ADMIN = "admin"
HTTP_TIMEOUT = 30

# --database-url pg: a fresh database per run on this server (trust auth, loopback only).
PG_SPECIAL = "pg"
PG_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN_DB = "postgres"
_created_databases: list[str] = []


@dataclass
class IlgunOptions:
    jobs: int
    clients: int
    timeout: float                 # seconds allowed for submitting and for finishing, each
    log_dir: Path
    profile: str = "medium"
    poll_interval: float | None = None   # None: the service's default (0.5 s)
    database_url: str = ""         # "": SQLite in the fresh data dir; "pg": a fresh PostgreSQL database
                                   # per run (bench_database); else passed through as DATABASE_URL
    keep_data: bool = False
    hosts: int = 1                 # gunicorn masters on the one database (>1 needs PostgreSQL)
    http_client: str = "requests"  # the submitting library (HttpClient): requests or stdlib


def is_postgres(database_url: str) -> bool:
    return database_url == PG_SPECIAL or database_url.startswith("postgresql")


def _pg_connect(dbname: str):
    import psycopg
    return psycopg.connect(f"{PG_SERVER_URL.replace('postgresql+psycopg://', 'postgresql://')}/{dbname}",
                           autocommit=True, connect_timeout=5)


def _drop_database(name: str) -> None:
    """Terminate what is still connected to ``name`` and drop it (bounded: a few seconds)."""
    try:
        with _pg_connect(PG_ADMIN_DB) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    except Exception as exc:  # noqa: BLE001 - clean-up must go on; say what is left behind
        print(f"could not drop PostgreSQL database {name}: {exc}", file=sys.stderr, flush=True)
        return
    if name in _created_databases:
        _created_databases.remove(name)


def drop_created_databases() -> None:
    """Drop every database made by ``bench_database`` that is still there (call in a finally,
    after the servers have stopped)."""
    for name in list(_created_databases):
        _drop_database(name)


class PostgresCpu:
    """CPU seconds of the PostgreSQL backends serving the run's database (the server runs on
    this machine: read from /proc). Counts the backends alive at ``read()``, minus what those of
    them alive at the start had used by then; a backend that came and went in between is missed
    (the pools keep their connections, so there are few). None where it cannot be read."""

    def __init__(self, database_url: str):
        import sqlalchemy as sa
        url = sa.make_url(database_url)
        self.local = url.host in (None, "", "127.0.0.1", "localhost")
        self.dbname = url.database
        self.libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.start = self._per_backend()

    def _per_backend(self) -> dict[int, float] | None:
        if not self.local:
            return None
        import psycopg
        try:
            with psycopg.connect(self.libpq, autocommit=True, connect_timeout=5) as conn:
                pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                                   "AND pid <> pg_backend_pid()", (self.dbname,))]
        except Exception:  # noqa: BLE001 - an extra figure, never a reason to fail the run
            return None
        out = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                continue
        return out

    def read(self) -> float | None:
        end = self._per_backend()
        if end is None or self.start is None:
            return None
        return sum(end.values()) - sum(v for pid, v in self.start.items() if pid in end)


@contextlib.contextmanager
def bench_database(database_url: str):
    """The DATABASE_URL for one run: for "pg" a new database ilgun_bench_<hex> on
    127.0.0.1:5432, dropped afterwards; anything else as is."""
    if database_url != PG_SPECIAL:
        yield database_url
        return
    name = f"ilgun_bench_{uuid.uuid4().hex[:12]}"
    try:
        with _pg_connect(PG_ADMIN_DB) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        raise BenchError(f"--database-url pg: cannot create a database on {PG_SERVER_URL}: {exc}") from None
    _created_databases.append(name)
    try:
        yield f"{PG_SERVER_URL}/{name}"
    finally:
        _drop_database(name)


class HttpClient:
    """The submitting side of ilgun-http, shared with the flask+gunicorn floor
    (bench/floor_runner.py) so both are driven by the same code: per client thread one
    keep-alive connection carrying ``Authorization: Bearer <token>``, and ``POST /api/v1/jobs``.

    ``http_client`` picks the library: ``requests`` (a requests.Session per thread) or
    ``stdlib`` (an http.client.HTTPConnection per thread and server). Why both: the client runs
    on the same 2 cores as the system under test, and requests spends ~0.6 ms of CPU per POST
    there (urllib3's pool, hooks, header merging), about what Celery's whole apply_async costs;
    http.client sends the same bytes for a fraction of that. Subclasses set ``base``, ``token``
    and ``_local`` (a threading.local)."""
    base: str
    token: str | None
    http_client: str = "requests"

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def api(self, method: str, path: str, **kwargs) -> dict:
        r = self._session().request(method, self.base + path, timeout=HTTP_TIMEOUT, **kwargs)
        if r.status_code >= 400:
            raise BenchError(f"{method} {path} -> {r.status_code}: {r.text[:200]}")
        return r.json()["data"]

    def submit_http(self, _i: int) -> str:
        return self.post_job(self.base)

    def post_job(self, base: str) -> str:
        """POST the no-op job to ``base``; its id."""
        if self.http_client == "stdlib":
            status, body = self._stdlib_post(base, "/api/v1/jobs", NOOP_BODY)
        else:
            r = self._session().post(base + "/api/v1/jobs", json=NOOP_JOB, timeout=HTTP_TIMEOUT)
            status, body = r.status_code, r.content
        if status >= 400:
            raise BenchError(f"POST /api/v1/jobs -> {status}: {body[:200]!r}")
        return json.loads(body)["data"]["id"]

    def _stdlib_post(self, base: str, path: str, body: bytes) -> tuple[int, bytes]:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(base)
        if conn is None:
            parts = urlsplit(base)
            conn = conns[base] = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT)
        try:
            # http.client reconnects by itself after a response that closed the connection
            # (gunicorn's max_requests recycling); any other failure counts as a failed submit
            conn.request("POST", path, body, {"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except BaseException:
            conn.close()
            del conns[base]
            raise


class IlgunServer(HttpClient):
    """One gunicorn serving ilgun on a free loopback port, with its own data dir. ``shared``
    is what the hosts of one deployment have in common (see IlgunHosts)."""

    def __init__(self, opts: IlgunOptions, label: str, *, database_url: str, shared: dict[str, str],
                 host_name: str = ""):
        self.opts, self.label = opts, label + (f" {host_name}" if host_name else "")
        file_label = re.sub(r"[^\w.-]+", "_", label) + (f"-{host_name}" if host_name else "")
        self.data_dir = make_temp_dir(f"ilgun-bench-{file_label}-", keep=opts.keep_data)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = opts.log_dir / f"{file_label}-gunicorn.log"
        self.setup_log = opts.log_dir / f"{file_label}-setup.log"
        self.proc = None
        self.token = None
        self._local = threading.local()
        # Settings from the shell that would make hosts differ or change the run are left out.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ILGUN_", "GUNICORN_"))
               and k not in ("FILES_ROOT", "SECRET_KEY", "JWT_SECRET_KEY", "DB_POOL_SIZE", "WEB_THREADS")}
        env.update({
            "ILGUN_DATA": str(self.data_dir), "ILGUN_ADMIN_USERNAME": ADMIN, "ILGUN_PROFILE": opts.profile,
            "HOST": "127.0.0.1", "PORT": str(self.port), "RATELIMIT_ENABLED": "0",
            "MAX_QUEUED_PER_USER": "100000", "MAX_QUEUED_TOTAL": "100000",
            "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", **shared,
        })
        for name in ("WEB_CONCURRENCY", "THREADS", "MAX_WORKERS", "POLL_INTERVAL"):
            env.pop(name, None)   # the profile decides, as in production
        if opts.poll_interval is not None:
            env["POLL_INTERVAL"] = str(opts.poll_interval)
        self.env = env
        self.files_root = Path(env.get("FILES_ROOT") or self.data_dir / "files")
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from service.profile import choose_profile
        self.profile = choose_profile(env)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, dispatchers: int | None = None) -> "IlgunServer":
        """Migrate, create the admin (both idempotent: every host runs them), start gunicorn and
        wait until ``dispatchers`` job engines (default: this host's workers) are live in the
        shared workers table."""
        flask = venv_tool("flask")
        run_command([flask, "--app", "service", "db", "upgrade"], env=self.env, log_path=self.setup_log)
        run_command([flask, "--app", "service", "create-admin"], env=self.env, log_path=self.setup_log)
        self.proc = start_process([venv_tool("gunicorn"), "-c", "gunicorn.conf.py", "service:create_app()"],
                                  env=self.env, log_path=self.log_path)
        wait_for(self._ready, label=f"{self.label}: waiting for /readyz", timeout=60)
        self.token = self._login()
        self._dispatchers = dispatchers or self.profile.workers
        wait_for(self._workers_up, label=f"{self.label}: waiting for job engines", timeout=60)
        return self

    def stop_process(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=20.0)
            self.proc = None

    def stop(self) -> None:
        self.stop_process()
        if not self.opts.keep_data:
            remove_temp_dir(self.data_dir)

    def _ready(self) -> tuple[bool, str]:
        if self.proc.poll() is not None:
            raise BenchError(f"gunicorn exited {self.proc.returncode}:\n{tail(self.log_path)}")
        try:
            return requests.get(self.base + "/readyz", timeout=2).status_code == 200, "starting"
        except requests.RequestException:
            return False, "starting"

    def _workers_up(self) -> tuple[bool, str]:
        live = len(self.stats()["workers"])
        return live >= self._dispatchers, f"{live}/{self._dispatchers} dispatchers"

    def _login(self) -> str:
        r = requests.post(self.base + "/api/v1/auth/login", timeout=HTTP_TIMEOUT,
                          json={"username": ADMIN, "password": self.env["ILGUN_ADMIN_PASSWORD"]})
        r.raise_for_status()
        return r.json()["data"]["access_token"]

    def stats(self) -> dict:
        return self.api("GET", "/api/v1/stats")

    # -- after the run --------------------------------------------------------------------
    def log_findings(self) -> dict:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return {
            "worker_boots": len(re.findall(r"Booting worker", text)),
            "worker_restarts_max_requests": len(re.findall(r"Autorestarting worker", text)),
            "worker_timeouts": len(re.findall(r"WORKER TIMEOUT", text)),
            "database_busy_retries": len(re.findall(r"database busy, retrying write", text)),
            # the app logs JSON lines ("level": "ERROR"); gunicorn's own log says [ERROR]
            "error_log_lines": len(re.findall(r'"level": "(ERROR|CRITICAL)"|\[(ERROR|CRITICAL)\]| (ERROR|CRITICAL) ',
                                              text)),
            "http_5xx": len(re.findall(r'"status": 5\d\d\b', text)),
            "lease_recoveries": len(re.findall(r"recovered \d+ job", text)),
        }


class IlgunHosts(HttpClient):
    """``opts.hosts`` IlgunServers on one database: what the runs submit to and read from.

    With one host it is that server, exactly as before. With more, the hosts share the
    DATABASE_URL, one FILES_ROOT, the admin password and SECRET_KEY/JWT_SECRET_KEY (so host 1's
    token works everywhere); submit i goes to host i mod N; reads go to host 1 (one database)."""

    def __init__(self, opts: IlgunOptions, label: str, database_url: str):
        if opts.hosts > 1 and not is_postgres(database_url):
            raise BenchError(f"--hosts {opts.hosts} needs PostgreSQL (--database-url pg or postgresql+psycopg://...)")
        self.opts, self.label = opts, label
        shared = {"ILGUN_ADMIN_PASSWORD": secrets.token_urlsafe(18)}
        if opts.hosts > 1:
            file_label = re.sub(r"[^\w.-]+", "_", label)
            self.shared_files = make_temp_dir(f"ilgun-bench-{file_label}-files-", keep=opts.keep_data)
            shared.update({"FILES_ROOT": str(self.shared_files), "SECRET_KEY": secrets.token_urlsafe(48),
                           "JWT_SECRET_KEY": secrets.token_urlsafe(48)})
        else:
            self.shared_files = None
        self.servers = [IlgunServer(opts, label, database_url=database_url, shared=shared,
                                    host_name=f"host{k + 1}" if opts.hosts > 1 else "")
                        for k in range(opts.hosts)]
        first = self.servers[0]
        self.base, self.env, self.profile, self.log_path = first.base, first.env, first.profile, first.log_path
        self.bases = [s.base for s in self.servers]
        self.database_url = database_url
        self.token = None
        self.http_client = opts.http_client
        self._local = threading.local()

    def start(self) -> "IlgunHosts":
        for k, server in enumerate(self.servers):
            server.start(dispatchers=(k + 1) * self.profile.workers)
        self.token = self.servers[0].token
        return self

    def stop(self) -> None:
        for server in self.servers:   # every process first, then the folders
            server.stop_process()
        for server in self.servers:
            server.stop()
        if self.shared_files is not None and not self.opts.keep_data:
            remove_temp_dir(self.shared_files)

    @property
    def procs(self) -> list:
        return [s.proc for s in self.servers]

    # -- HTTP (submitting: HttpClient) ---------------------------------------------------
    def submit_http(self, i: int) -> str:
        return self.post_job(self.bases[i % len(self.bases)])

    def stats(self) -> dict:
        return self.api("GET", "/api/v1/stats")

    def status_counts(self) -> dict[str, int]:
        return dict(self.stats()["jobs_by_status"])

    def records(self, ids: set[str]) -> list[dict]:
        """The records of ``ids`` that reached a final state, read page by page."""
        found = []
        for status in FINAL_STATUSES:
            page, pages = 1, 1
            while page <= pages and page <= 10_000:
                data = self.api("GET", "/api/v1/jobs", params={"status": status, "page_size": 100, "page": page})
                found += [j for j in data["items"] if j["id"] in ids]
                pages, page = data["total_pages"], page + 1
        return found

    # -- after the run --------------------------------------------------------------------
    def log_findings(self) -> dict:
        per_host = [s.log_findings() for s in self.servers]
        out = {k: sum(f[k] for f in per_host) for k in per_host[0]}
        if len(per_host) > 1:
            out["per_host"] = per_host
        roots = {s.files_root for s in self.servers}
        out["lock_files_left"] = sum(len(list((r / "locks").iterdir())) for r in roots if (r / "locks").is_dir())
        out["job_dirs_left"] = sum(len(list(r.glob("users/*/jobs/*"))) for r in roots)
        return out


def _finished(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in FINAL_STATUSES)


def _warm_up(server: IlgunHosts) -> None:
    """A few jobs through every slot before the clock starts (imports, first connections)."""
    before = _finished(server.status_counts())
    n = server.profile.workers * server.profile.max_workers * len(server.servers)
    for i in range(n):
        server.submit_http(i)
    wait_for(lambda: (_finished(server.status_counts()) - before >= n, "warm-up"),
             label=f"{server.label}: warm-up", timeout=60)


def _wait_until_finished(server: IlgunHosts, label: str, baseline: dict[str, int], expected,
                         submitting) -> None:
    base_total, base_done = sum(baseline.values()), _finished(baseline)

    def check():
        counts = server.status_counts()
        submitted = sum(counts.values()) - base_total
        done = _finished(counts) - base_done
        want = expected()
        text = (f"submitted {submitted}/{server.opts.jobs}, running {counts.get('running', 0)}, "
                f"finished {done}/{want}")
        return (not submitting() and done >= want), text
    wait_for(check, label=label, timeout=server.opts.timeout * 2, interval=0.5)


def _result(server: IlgunHosts, system: str, ids: list[str], first_submit: float, last_submit: float,
            submit_errors: list[str], cpu: dict, extra_notes: dict) -> dict:
    records = server.records(set(ids))
    ok = [r for r in records if r["status"] == "succeeded"]
    latencies = [(r["result"] or {}).get("began_at", utc_epoch(r["started_at"])) - utc_epoch(r["created_at"])
                 for r in ok]
    notes = {"poll_interval_s": server.opts.poll_interval if server.opts.poll_interval is not None else 0.5,
             "poll_interval_tuned": server.opts.poll_interval is not None,
             "profile": {"name": server.profile.name, "workers": server.profile.workers,
                         "threads": server.profile.threads, "max_workers": server.profile.max_workers},
             "database": (server.database_url or "sqlite (WAL) in a fresh data dir")
             + (" (created for this run by --database-url pg, dropped after it)"
                if server.opts.database_url == PG_SPECIAL else ""),
             "hosts": len(server.servers),
             "http_client": server.http_client if system.startswith("ilgun-http") else None,
             "retried_jobs": sum(1 for r in ok if r["attempt"] > 1),
             **extra_notes, **server.log_findings()}
    return summarize(system, requested=server.opts.jobs, first_submit=first_submit, last_submit=last_submit,
                     finished_at=[utc_epoch(r["finished_at"]) for r in ok], latencies=latencies,
                     failed=len(records) - len(ok), submit_errors=submit_errors, cpu_seconds=cpu,
                     notes=notes)


def run_http(opts: IlgunOptions, system: str = "ilgun-http") -> dict:
    """``clients`` threads POST the jobs (to the hosts in turn); the engine runs them while they
    are submitted."""
    with bench_database(opts.database_url) as database_url:
        return _run_http(opts, system, database_url)


def _run_http(opts: IlgunOptions, system: str, database_url: str) -> dict:
    server = IlgunHosts(opts, system, database_url)
    submitters = None
    try:
        server.start()
        _warm_up(server)
        baseline = server.status_counts()
        meter = CpuMeter(server.procs)   # every host's master and workers
        pg_meter = PostgresCpu(database_url) if is_postgres(database_url) else None
        submitters = SubmitThreads(opts.jobs, opts.clients, server.submit_http).start()
        _wait_until_finished(server, system, baseline,
                             expected=lambda: submitters.submitted - len(submitters.errors),
                             submitting=lambda: submitters.running)
        submitters.join(timeout=5)
        cpu = meter.read()
        if pg_meter is not None and (pg_cpu := pg_meter.read()) is not None:
            cpu["postgres"] = pg_cpu   # in the JSON next to Celery's "redis"; not in worker CPU
        ids = [i for i in submitters.results if i]
        path = f"HTTP POST /api/v1/jobs, {opts.clients} client threads"
        if opts.hosts > 1:
            path += f", submit i to host (i mod {opts.hosts}) + 1"
        return _result(server, system, ids, submitters.first_submit_at, submitters.last_submit_at,
                       submitters.errors, cpu, {"submit_path": path})
    finally:
        if submitters is not None:
            submitters.halt()
        server.stop()


def run_in_process(opts: IlgunOptions, system: str = "ilgun-in-process") -> dict:
    """A separate Python process (bench/ilgun_direct_submit.py) calls JobService.submit on the
    same database while the gunicorn workers execute; no HTTP on the submit side."""
    with bench_database(opts.database_url) as database_url:
        return _run_in_process(opts, system, database_url)


def _run_in_process(opts: IlgunOptions, system: str, database_url: str) -> dict:
    server = IlgunHosts(opts, system, database_url)
    out_path = server.log_path.with_name(server.log_path.name.replace("gunicorn.log", "submitted.json"))
    submitter_log = server.log_path.with_name(server.log_path.name.replace("gunicorn.log", "submitter.log"))
    submitter = None
    try:
        server.start()
        _warm_up(server)
        baseline = server.status_counts()
        meter = CpuMeter(server.procs)
        pg_meter = PostgresCpu(database_url) if is_postgres(database_url) else None
        submitter = start_process(
            [sys.executable, str(BENCH_DIR / "ilgun_direct_submit.py"), "--jobs", str(opts.jobs),
             "--clients", str(opts.clients), "--out", str(out_path), "--timeout", str(opts.timeout)],
            env=server.env, log_path=submitter_log)
        sent: dict = {}

        def expected() -> int:
            if submitter.poll() is None:
                return opts.jobs
            if not sent:
                if submitter.returncode != 0 or not out_path.exists():
                    raise BenchError(f"the in-process submitter exited {submitter.returncode}:\n"
                                     f"{tail(submitter_log)}")
                sent.update(json.loads(out_path.read_text()))
            return len(sent["ids"])
        _wait_until_finished(server, system, baseline, expected=expected,
                             submitting=lambda: submitter.poll() is None)
        expected()  # loads what the submitter wrote
        cpu = meter.read()
        cpu["client"] = sent["cpu_s"]  # the submitting process, not this one (which only polled)
        if pg_meter is not None and (pg_cpu := pg_meter.read()) is not None:
            cpu["postgres"] = pg_cpu
        return _result(server, system, sent["ids"], sent["first_submit_at"], sent["last_submit_at"], sent["errors"],
                       cpu, {"submit_path": f"JobService.submit from a separate process, {opts.clients} threads"})
    finally:
        if submitter is not None:
            stop_process(submitter, grace=5.0)
        server.stop()

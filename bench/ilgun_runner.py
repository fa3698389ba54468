"""ilgun under gunicorn for bench/engine.py: a fresh server per run, no-op ``sleep`` jobs
submitted over HTTP or straight into the database, and timings read back from the job records.

Times come from the records the server stamps: created_at (in the submit transaction),
finished_at (in the finish transaction), ISO 8601 with ms, and for the start the moment the
sleep kind began to run (its result's began_at): started_at is stamped by the claim, which for a
job started directly by its submit is the submit transaction itself.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import requests

from bench_support import (BENCH_DIR, REPO_ROOT, BenchError, CpuMeter, SubmitThreads, free_port, make_temp_dir,
                           remove_temp_dir, run_command, start_process, stop_process, summarize, tail, utc_epoch,
                           venv_tool, wait_for)

NOOP_JOB = {"kind": "sleep", "params": {"duration": 0, "steps": 1}}
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
ADMIN = "admin"
HTTP_TIMEOUT = 30


@dataclass
class IlgunOptions:
    jobs: int
    clients: int
    timeout: float                 # seconds allowed for submitting and for finishing, each
    log_dir: Path
    profile: str = "medium"
    poll_interval: float | None = None   # None: the service's default (0.5 s)
    database_url: str = ""         # "": SQLite in the fresh data dir; postgresql+psycopg://... later
    keep_data: bool = False


class HttpClient:
    """The submitting side of ilgun-http, shared with the flask+gunicorn floor
    (bench/floor_runner.py) so both are driven by the same code: one requests.Session per
    client thread carrying ``Authorization: Bearer <token>``, and ``POST /api/v1/jobs``.
    Subclasses set ``base``, ``token`` and ``_local`` (a threading.local)."""
    base: str
    token: str | None

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
        return self.api("POST", "/api/v1/jobs", json=NOOP_JOB)["id"]


class IlgunServer(HttpClient):
    """One gunicorn serving ilgun on a free loopback port, with its own data dir."""

    def __init__(self, opts: IlgunOptions, label: str):
        self.opts, self.label = opts, label
        file_label = re.sub(r"[^\w.-]+", "_", label)
        self.data_dir = make_temp_dir(f"ilgun-bench-{file_label}-", keep=opts.keep_data)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = opts.log_dir / f"{file_label}-gunicorn.log"
        self.setup_log = opts.log_dir / f"{file_label}-setup.log"
        self.proc = None
        self.token = None
        self._local = threading.local()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ILGUN_", "GUNICORN_"))}
        env.update({
            "ILGUN_DATA": str(self.data_dir), "ILGUN_ADMIN_USERNAME": ADMIN,
            "ILGUN_ADMIN_PASSWORD": secrets.token_urlsafe(18), "ILGUN_PROFILE": opts.profile,
            "HOST": "127.0.0.1", "PORT": str(self.port), "RATELIMIT_ENABLED": "0",
            "MAX_QUEUED_PER_USER": "100000", "MAX_QUEUED_TOTAL": "100000",
            "DATABASE_URL": opts.database_url, "PYTHONUNBUFFERED": "1",
        })
        for name in ("WEB_CONCURRENCY", "THREADS", "MAX_WORKERS", "POLL_INTERVAL"):
            env.pop(name, None)   # the profile decides, as in production
        if opts.poll_interval is not None:
            env["POLL_INTERVAL"] = str(opts.poll_interval)
        self.env = env
        sys.path.insert(0, str(REPO_ROOT))
        from service.profile import choose_profile
        self.profile = choose_profile(env)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "IlgunServer":
        flask = venv_tool("flask")
        run_command([flask, "--app", "service", "db", "upgrade"], env=self.env, log_path=self.setup_log)
        run_command([flask, "--app", "service", "create-admin"], env=self.env, log_path=self.setup_log)
        self.proc = start_process([venv_tool("gunicorn"), "-c", "gunicorn.conf.py", "service:create_app()"],
                                  env=self.env, log_path=self.log_path)
        wait_for(self._ready, label=f"{self.label}: waiting for /readyz", timeout=60)
        self.token = self._login()
        wait_for(self._workers_up, label=f"{self.label}: waiting for job engines", timeout=60)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=20.0)
            self.proc = None
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
        return live >= self.profile.workers, f"{live}/{self.profile.workers} dispatchers"

    def _login(self) -> str:
        r = requests.post(self.base + "/api/v1/auth/login", timeout=HTTP_TIMEOUT,
                          json={"username": ADMIN, "password": self.env["ILGUN_ADMIN_PASSWORD"]})
        r.raise_for_status()
        return r.json()["data"]["access_token"]

    # -- HTTP (submitting: HttpClient) ---------------------------------------------------
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
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        files_root = self.data_dir / "files"
        lock_dir = files_root / "locks"
        job_dirs = list(files_root.glob("users/*/jobs/*"))
        return {
            "worker_boots": len(re.findall(r"Booting worker", text)),
            "worker_restarts_max_requests": len(re.findall(r"Autorestarting worker", text)),
            "worker_timeouts": len(re.findall(r"WORKER TIMEOUT", text)),
            "database_busy_retries": len(re.findall(r"database busy, retrying write", text)),
            "error_log_lines": len(re.findall(r" (ERROR|CRITICAL) ", text)),
            "http_5xx": len(re.findall(r'"status": 5\d\d\b', text)),
            "lease_recoveries": len(re.findall(r"recovered \d+ job", text)),
            "lock_files_left": len(list(lock_dir.iterdir())) if lock_dir.is_dir() else 0,
            "job_dirs_left": len(job_dirs),
        }


def _finished(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in FINAL_STATUSES)


def _warm_up(server: IlgunServer) -> None:
    """A few jobs through every slot before the clock starts (imports, first connections)."""
    before = _finished(server.status_counts())
    n = server.profile.workers * server.profile.max_workers
    for i in range(n):
        server.submit_http(i)
    wait_for(lambda: (_finished(server.status_counts()) - before >= n, "warm-up"),
             label=f"{server.label}: warm-up", timeout=60)


def _wait_until_finished(server: IlgunServer, label: str, baseline: dict[str, int], expected,
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


def _result(server: IlgunServer, system: str, ids: list[str], first_submit: float, last_submit: float,
            submit_errors: list[str], cpu: dict, extra_notes: dict) -> dict:
    records = server.records(set(ids))
    ok = [r for r in records if r["status"] == "succeeded"]
    latencies = [(r["result"] or {}).get("began_at", utc_epoch(r["started_at"])) - utc_epoch(r["created_at"])
                 for r in ok]
    notes = {"poll_interval_s": server.opts.poll_interval if server.opts.poll_interval is not None else 0.5,
             "poll_interval_tuned": server.opts.poll_interval is not None,
             "profile": {"name": server.profile.name, "workers": server.profile.workers,
                         "threads": server.profile.threads, "max_workers": server.profile.max_workers},
             "database": server.opts.database_url or "sqlite (WAL) in a fresh data dir",
             "retried_jobs": sum(1 for r in ok if r["attempt"] > 1),
             **extra_notes, **server.log_findings()}
    return summarize(system, requested=server.opts.jobs, first_submit=first_submit, last_submit=last_submit,
                     finished_at=[utc_epoch(r["finished_at"]) for r in ok], latencies=latencies,
                     failed=len(records) - len(ok), submit_errors=submit_errors, cpu_seconds=cpu,
                     notes=notes)


def run_http(opts: IlgunOptions, system: str = "ilgun-http") -> dict:
    """``clients`` threads POST the jobs; the engine runs them while they are submitted."""
    server = IlgunServer(opts, system)
    submitters = None
    try:
        server.start()
        _warm_up(server)
        baseline = server.status_counts()
        meter = CpuMeter([server.proc])
        submitters = SubmitThreads(opts.jobs, opts.clients, server.submit_http).start()
        _wait_until_finished(server, system, baseline,
                             expected=lambda: submitters.submitted - len(submitters.errors),
                             submitting=lambda: submitters.running)
        submitters.join(timeout=5)
        cpu = meter.read()
        ids = [i for i in submitters.results if i]
        return _result(server, system, ids, submitters.first_submit_at, submitters.last_submit_at,
                       submitters.errors, cpu, {"submit_path": f"HTTP POST /api/v1/jobs, {opts.clients} client threads"})
    finally:
        if submitters is not None:
            submitters.halt()
        server.stop()


def run_in_process(opts: IlgunOptions, system: str = "ilgun-in-process") -> dict:
    """A separate Python process (bench/ilgun_direct_submit.py) calls JobService.submit on the
    same database while the gunicorn workers execute; no HTTP on the submit side."""
    server = IlgunServer(opts, system)
    out_path = server.log_path.with_name(server.log_path.name.replace("gunicorn.log", "submitted.json"))
    submitter_log = server.log_path.with_name(server.log_path.name.replace("gunicorn.log", "submitter.log"))
    submitter = None
    try:
        server.start()
        _warm_up(server)
        baseline = server.status_counts()
        meter = CpuMeter([server.proc])
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
        return _result(server, system, sent["ids"], sent["first_submit_at"], sent["last_submit_at"], sent["errors"],
                       cpu, {"submit_path": f"JobService.submit from a separate process, {opts.clients} threads"})
    finally:
        if submitter is not None:
            stop_process(submitter, grace=5.0)
        server.stop()

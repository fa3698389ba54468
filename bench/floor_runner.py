"""The flask+gunicorn floor row of bench/engine.py: how many ``POST /api/v1/jobs`` per second
Flask under gunicorn serves on this machine when the route does nothing but what any such
service must (parse the JSON, check the bearer token, answer 202): bench/floor_app.py.

It is driven exactly as ilgun-http is: the same ``HttpClient`` code (one keep-alive connection per
client thread, the same library, body and Authorization header), the same ``SubmitThreads`` with the
same N and thread count, and gunicorn with ilgun's profile (gthread, its workers x threads).
There is no job, so its "jobs/s" is requests/s: N / (last response - first submit).
"""
from __future__ import annotations

import os
import re
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
import requests

from bench_support import (BENCH_DIR, REPO_ROOT, BenchError, CpuMeter, SubmitThreads, free_port, percentile,
                           start_process, stop_process, summarize, tail, venv_tool, wait_for)
from ilgun_runner import HttpClient

LABEL = "flask+gunicorn floor"
CONFIG = BENCH_DIR / "floor_gunicorn.conf.py"


@dataclass
class FloorOptions:
    jobs: int
    clients: int
    timeout: float          # seconds allowed for submitting
    log_dir: Path
    profile: str = "medium"  # ILGUN_PROFILE whose workers x threads the floor's gunicorn uses
    http_client: str = "requests"  # the submitting library, as for ilgun-http (HttpClient)


def ilgun_profile(name: str):
    """What ilgun's gunicorn.conf.py would pick for ILGUN_PROFILE=name on this machine."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from service.profile import choose_profile
    return choose_profile({"ILGUN_PROFILE": name})


def _access_token(secret: str) -> str:
    """An HS256 token with the claims of a flask_jwt_extended access token, valid for a day."""
    now = int(time.time())
    return jwt.encode({"fresh": False, "iat": now, "jti": str(uuid.uuid4()), "type": "access", "sub": "1",
                       "nbf": now, "exp": now + 86400}, secret, algorithm="HS256")


class FloorServer(HttpClient):
    """gunicorn serving bench/floor_app.py on a free loopback port."""

    def __init__(self, opts: FloorOptions, label: str = LABEL):
        self.opts, self.label = opts, label
        self.profile = ilgun_profile(opts.profile)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        file_label = re.sub(r"[^\w.-]+", "_", label)
        self.log_path = opts.log_dir / f"{file_label}-gunicorn.log"
        secret = secrets.token_urlsafe(48)
        self.token = _access_token(secret)
        self.http_client = opts.http_client
        self._local = threading.local()
        self.proc = None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ILGUN_", "GUNICORN_", "FLOOR_"))}
        env.update({"FLOOR_JWT_SECRET": secret, "FLOOR_PORT": str(self.port),
                    "FLOOR_WORKERS": str(self.profile.workers), "FLOOR_THREADS": str(self.profile.threads),
                    "PYTHONUNBUFFERED": "1"})
        self.env = env

    def start(self) -> "FloorServer":
        self.proc = start_process([venv_tool("gunicorn"), "-c", str(CONFIG), "floor_app:create_app()"],
                                  env=self.env, log_path=self.log_path, cwd=BENCH_DIR)
        wait_for(self._ready, label=f"{self.label}: waiting for {self.profile.workers} workers", timeout=60)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10.0)
            self.proc = None

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _ready(self) -> tuple[bool, str]:
        if self.proc.poll() is not None:
            raise BenchError(f"gunicorn exited {self.proc.returncode}:\n{tail(self.log_path)}")
        booted = len(re.findall(r"Booting worker", self._log()))
        try:
            up = requests.get(self.base + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            up = False
        return up and booted >= self.profile.workers, f"{booted}/{self.profile.workers} workers booted"

    def log_findings(self) -> dict:
        text = self._log()
        return {"worker_boots": len(re.findall(r"Booting worker", text)),
                "worker_timeouts": len(re.findall(r"WORKER TIMEOUT", text)),
                "error_log_lines": len(re.findall(r"\[(ERROR|CRITICAL)\]", text))}


def run_floor(opts: FloorOptions, system: str = LABEL) -> dict:
    """``clients`` threads POST N submits to the floor app; the row's "jobs/s" is requests/s."""
    server = FloorServer(opts, system)
    submitters = None
    try:
        server.start()
        # Warm-up: enough requests from all client threads that every worker and thread has
        # imported, connected and served (ilgun's warm-up and readiness polling do the same).
        warm = SubmitThreads(server.profile.workers * server.profile.threads * 10, opts.clients,
                             server.submit_http).start()
        warm.join(timeout=60)
        if warm.errors:
            raise BenchError(f"{system}: warm-up request failed: {warm.errors[0]}\n{tail(server.log_path)}")

        done_at: list[float | None] = [None] * opts.jobs
        round_trip: list[float | None] = [None] * opts.jobs

        def submit_one(i: int) -> str:
            sent = time.time()
            job_id = server.submit_http(i)
            done_at[i] = time.time()
            round_trip[i] = done_at[i] - sent
            return job_id

        meter = CpuMeter([server.proc])
        submitters = SubmitThreads(opts.jobs, opts.clients, submit_one).start()
        wait_for(lambda: (not submitters.running, f"submitted {submitters.submitted}/{opts.jobs}"),
                 label=system, timeout=opts.timeout, interval=0.25)
        submitters.join(timeout=5)
        cpu = meter.read()
        trips = [t for t in round_trip if t is not None]
        ms = lambda q: None if not trips else round(1000 * percentile(trips, q), 1)  # noqa: E731
        return summarize(
            system, requested=opts.jobs, first_submit=submitters.first_submit_at,
            last_submit=submitters.last_submit_at, finished_at=[t for t in done_at if t is not None],
            latencies=[], failed=0, submit_errors=submitters.errors, cpu_seconds=cpu,
            notes={"submits_only": True, "http_client": opts.http_client,
                   "what": "no job: POST /api/v1/jobs parsed, bearer token checked with PyJWT HS256, 202 "
                           "answered (bench/floor_app.py); jobs/s = responses / (last response - first submit)",
                   "submit_path": f"HTTP POST /api/v1/jobs, {opts.clients} client threads (same client code "
                                  "as ilgun-http)",
                   "gunicorn": f"gthread, {server.profile.workers} workers x {server.profile.threads} threads "
                               f"(ILGUN_PROFILE={opts.profile}), no access log, no max_requests",
                   "request_round_trip_ms": {"p50": ms(50), "p90": ms(90), "p99": ms(99),
                                             "max": round(1000 * max(trips), 1) if trips else None},
                   **server.log_findings()})
    finally:
        if submitters is not None:
            submitters.halt()
        server.stop()

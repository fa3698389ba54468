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

The parts: soak_clients.py (the file server, the clients and their request mix), soak_sampler.py
(the /proc sampler and the growth computed from it), soak_report.py (the log scan and the summary);
this module holds the configuration, the run and its report, and the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gunicorn_harness import ROOT, TERMINAL, IlgunServer  # noqa: E402
from soak_clients import Client, FileServer, Stats  # noqa: E402
from soak_report import _ms, scan_log, summary  # noqa: E402
from soak_sampler import Sampler, analyse_memory  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_support import percentile  # noqa: E402

DEFAULT_OUT = ROOT / "test-artifacts" / "reliability" / "soak.json"


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

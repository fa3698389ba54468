"""Engine benchmark: ilgun's job engine against RQ and Celery on this machine.

N no-op jobs per system, submitted by C client threads while the workers run them:

  ilgun-http        gunicorn (gthread, ILGUN_PROFILE) + SQLite WAL; jobs POSTed over HTTP
                    (--database-url pg: a fresh PostgreSQL database; --hosts N: N gunicorn masters on it)
  ilgun-in-process  the same server; a separate process calls JobService.submit (no HTTP)
  rq                2 rq SimpleWorker processes, Redis db 15
  celery            1 Celery worker, threads pool, concurrency 2, Redis db 14 (broker + backend)
  flask-floor       reference row "flask+gunicorn floor": bench/floor_app.py under the same
                    gunicorn profile, POSTed to by the same client code as ilgun-http; it parses,
                    checks the token and answers 202, no job: submits only, the HTTP ceiling

The HTTP rows submit with http.client (--http-client stdlib, default) or requests (--http-client
requests; both: stdlib,requests): the client shares the machine's cores with the server.

Prints one table (jobs/s from first submit to last finish, the ratio to Celery, and the
submit -> start latency), how much of the floor ilgun-http reaches, and writes it all as JSON
to bench/results/engine-<timestamp>.json.

    python bench/engine.py --quick          # ~300 jobs per system
    python bench/engine.py                  # 2000 jobs per system
    python bench/engine.py --poll-interval default --poll-interval 0.05   # ilgun at both
    python bench/engine.py --systems ilgun-http,flask-floor                # a subset
    python bench/engine.py --systems ilgun-http,celery --rounds 5          # medians over 5 rounds
    python bench/engine.py --systems ilgun-http,flask-floor --http-client stdlib,requests   # both clients
    python bench/engine.py --systems ilgun-http,celery --database-url pg --hosts 2   # PostgreSQL, 2 hosts

Only 127.0.0.1 is contacted. Every process started is stopped on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench_support import (BenchError, interrupt_on_signals, package_version, reproduce_command, run_files,
                           stop_all_processes)

SYSTEMS = ("ilgun-http", "ilgun-in-process", "rq", "celery", "flask-floor")
QUICK_JOBS = 300
HTTP_CLIENTS = ("stdlib", "requests")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ilgun's job engine vs RQ and Celery (no-op jobs, local Redis), "
                                            "with the flask+gunicorn floor as the HTTP ceiling.")
    p.add_argument("--jobs", type=int, default=2000, help="jobs per system (default 2000)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS} jobs per system (overrides --jobs)")
    p.add_argument("--clients", type=int, default=8, help="submitting client threads (default 8)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    p.add_argument("--poll-interval", action="append", metavar="SECONDS|default",
                   help="ilgun POLL_INTERVAL; repeat to run ilgun at several (default: the service's, 0.5)")
    p.add_argument("--profile", default="medium", help="ILGUN_PROFILE for gunicorn (default medium: 2 cores)")
    p.add_argument("--database-url", default="",
                   help="DATABASE_URL for ilgun (default: SQLite in a fresh temp dir); 'pg': a fresh "
                        "PostgreSQL database ilgun_bench_<hex> on postgres@127.0.0.1:5432 for each ilgun run, "
                        "dropped after it; anything else is passed through as is, "
                        "e.g. postgresql+psycopg://127.0.0.1/test")
    p.add_argument("--hosts", type=int, default=1,
                   help="ilgun-http only: gunicorn masters ('hosts', 3 workers each with the medium profile) "
                        "on one PostgreSQL database and one files root; client threads send submit i to "
                        "host i mod N (default 1; more than 1 needs --database-url pg or a postgresql URL)")
    p.add_argument("--http-client", default="stdlib",
                   help="the HTTP rows' submitting library: stdlib (http.client, default) or requests; "
                        "comma-separated to run each HTTP row with each (see README: the client shares the 2 cores)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds allowed per system for submitting, and again for finishing (default 300)")
    p.add_argument("--out", type=Path, help="JSON results path (default bench/results/engine-<timestamp>.json)")
    p.add_argument("--keep-data", action="store_true", help="keep ilgun's temp data dirs for inspection")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every system this many times, alternating the order, and summarise with "
                        "medians (default 1); on a shared machine one round's ratio can be off by 20%%")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs = QUICK_JOBS
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    if args.jobs < 1 or args.clients < 1 or args.rounds < 1 or args.hosts < 1:
        p.error("--jobs, --clients, --rounds and --hosts must be at least 1")
    if args.hosts > 1:
        if not (args.database_url == "pg" or args.database_url.startswith("postgresql")):
            p.error(f"--hosts {args.hosts} needs PostgreSQL: add --database-url pg (a fresh database on "
                    "127.0.0.1:5432) or --database-url postgresql+psycopg://...; SQLite is one host's file")
        if "ilgun-http" not in args.systems:
            p.error("--hosts applies to ilgun-http only; add it to --systems")
    args.poll_intervals = [None if v == "default" else float(v) for v in (args.poll_interval or ["default"])]
    args.http_clients = [c.strip() for c in args.http_client.split(",") if c.strip()]
    if not args.http_clients or set(args.http_clients) - set(HTTP_CLIENTS):
        p.error(f"--http-client: one or more of {', '.join(HTTP_CLIENTS)}")
    return args


def _ilgun_label(system: str, poll: float | None, database_url: str = "", hosts: int = 1,
                 client: str = "stdlib") -> str:
    """e.g. ``ilgun-http``, ``ilgun-http pg``, ``ilgun-http pg 2 hosts poll=0.05s``,
    ``ilgun-http requests`` (submitted with requests rather than http.client)."""
    parts = [system]
    if client != "stdlib":
        parts.append(client)
    if database_url == "pg" or database_url.startswith("postgresql"):
        parts.append("pg")
    if hosts > 1:
        parts.append(f"{hosts} hosts")
    if poll is not None:
        parts.append(f"poll={poll:g}s")
    return " ".join(parts)


def run_all(args: argparse.Namespace, log_dir: Path, order: list[str]) -> list[dict]:
    from ilgun_runner import IlgunOptions, run_http, run_in_process
    from floor_runner import LABEL as FLOOR_LABEL, FloorOptions, run_floor
    from peer_runners import PeerOptions, run_celery, run_rq

    rows = []
    runners = {"ilgun-http": run_http, "ilgun-in-process": run_in_process}
    for system in order:
        print(f"== {system}", file=sys.stderr, flush=True)
        try:
            if system == "flask-floor":
                for client in args.http_clients:
                    rows.append(run_floor(FloorOptions(jobs=args.jobs, clients=args.clients, timeout=args.timeout,
                                                       log_dir=log_dir, profile=args.profile, http_client=client),
                                          system=FLOOR_LABEL + ("" if client == "stdlib" else f" {client}")))
            elif system in runners:
                hosts = args.hosts if system == "ilgun-http" else 1
                # in-process submits use no HTTP client
                clients = args.http_clients if system == "ilgun-http" else ["stdlib"]
                for poll in args.poll_intervals:
                    for client in clients:
                        opts = IlgunOptions(jobs=args.jobs, clients=args.clients, timeout=args.timeout,
                                            log_dir=log_dir, profile=args.profile, poll_interval=poll,
                                            database_url=args.database_url, keep_data=args.keep_data, hosts=hosts,
                                            http_client=client)
                        rows.append(runners[system](opts, system=_ilgun_label(system, poll, args.database_url,
                                                                              hosts, client)))
            else:
                opts = PeerOptions(jobs=args.jobs, clients=args.clients, timeout=args.timeout, log_dir=log_dir)
                rows.append((run_rq if system == "rq" else run_celery)(opts, dict(os.environ)))
        except BenchError as exc:
            print(f"\n{system} FAILED: {exc}", file=sys.stderr, flush=True)
            rows.append({"system": FLOOR_LABEL if system == "flask-floor" else system, "jobs": args.jobs,
                         "error": str(exc)[:2000], "notes": {"submits_only": system == "flask-floor"}})
    celery = next((r for r in rows if r["system"] == "celery" and r.get("jobs_per_s")), None)
    for r in rows:
        r["ratio_vs_celery"] = (round(r["jobs_per_s"] / celery["jobs_per_s"], 3)
                                if celery and r.get("jobs_per_s") else None)
    return rows


FLOOR_FOOTNOTE = ("* submits only: no job runs. Its jobs/s is HTTP requests/s (N POSTs to a Flask app that only "
                  "parses the body,\n  checks the bearer token and answers 202, under the same gunicorn profile and "
                  "client code as ilgun-http):\n  an upper bound for any Flask+gunicorn service on this machine.")


def _is_floor(row: dict) -> bool:
    return bool(row.get("notes", {}).get("submits_only"))


def floor_comparison(rows: list[dict]) -> list[dict]:
    """ilgun-http's jobs/s as a share of the flask+gunicorn floor's requests/s (one per ilgun-http row,
    against the floor row submitted with the same HTTP client)."""
    out = []
    for r in rows:
        client = r.get("notes", {}).get("http_client")
        floor = next((f for f in rows if _is_floor(f) and f.get("jobs_per_s")
                      and f["notes"].get("http_client") == client), None)
        if r["system"].startswith("ilgun-http") and r.get("jobs_per_s") and floor is not None:
            submits = r.get("submits_per_s")
            out.append({"system": r["system"], "floor": floor["system"],
                        "percent_of_floor": round(100 * r["jobs_per_s"] / floor["jobs_per_s"], 1),
                        "submits_percent_of_floor": round(100 * submits / floor["jobs_per_s"], 1) if submits else None})
    return out


def format_floor_lines(rows: list[dict]) -> str:
    return "\n".join(f"{c['system']} reaches {c['percent_of_floor']:.0f}% of the {c['floor']}"
                     + (f" (jobs/s; its submits/s alone: {c['submits_percent_of_floor']:.0f}%)"
                        if c["submits_percent_of_floor"] is not None else "")
                     for c in floor_comparison(rows))


def format_table(rows: list[dict]) -> str:
    head = ("system", "jobs", "jobs/s", "vs Celery", "submit→start p50 ms", "p99 ms", "submits/s",
            "worker CPU ms/job", "failed", "load 1m")
    lines = []
    for r in rows:
        lat = r.get("start_latency_ms", {})
        failed = (r.get("failed") or 0) + (r.get("submit_errors") or 0)
        lines.append((r["system"] + (" *" if _is_floor(r) else ""), str(r["jobs"]), _fmt(r.get("jobs_per_s")),
                      _fmt(r.get("ratio_vs_celery"), "{:.2f}x"), _fmt(lat.get("p50")), _fmt(lat.get("p99")),
                      _fmt(r.get("submits_per_s")), _fmt(r.get("worker_cpu_ms_per_job"), "{:.2f}"),
                      "ERROR" if r.get("error") else str(failed), _fmt(r.get("loadavg_1m_at_end"))))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    if any(_is_floor(r) for r in rows):
        out.append(FLOOR_FOOTNOTE)
    return "\n".join(out)


def run_rounds(args: argparse.Namespace, log_dir: Path) -> list[list[dict]]:
    """Every system once per round; odd rounds run in reverse order, so drift in the machine's
    load (other tenants, thermal) does not always favour the same system."""
    rounds = []
    for i in range(args.rounds):
        order = [s for s in SYSTEMS if s in args.systems]
        if i % 2:
            order.reverse()
        round_dir = log_dir if args.rounds == 1 else log_dir / f"round{i + 1}"
        round_dir.mkdir(parents=True, exist_ok=True)
        if args.rounds > 1:
            print(f"=== round {i + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
        rows = run_all(args, round_dir, order)
        for r in rows:
            r["round"] = i + 1
        rounds.append(rows)
    return rounds


def summarize_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per system: median jobs/s, the median of its per-round ratios to Celery (each ratio from
    one round, so both ran under similar load), their range, and the median submit->start p50."""
    by_system: dict[str, list[dict]] = {}
    for rows in rounds:
        for r in rows:
            if r.get("jobs_per_s"):
                by_system.setdefault(r["system"], []).append(r)
    out = []
    for system, rs in by_system.items():
        ratios = [r["ratio_vs_celery"] for r in rs if r.get("ratio_vs_celery")]
        p50s = [r["start_latency_ms"]["p50"] for r in rs if r.get("start_latency_ms", {}).get("p50") is not None]
        out.append({"system": system, "rounds": len(rs),
                    "jobs_per_s_median": round(statistics.median(r["jobs_per_s"] for r in rs), 1),
                    "ratio_vs_celery_median": round(statistics.median(ratios), 3) if ratios else None,
                    "ratio_vs_celery_min": min(ratios) if ratios else None,
                    "ratio_vs_celery_max": max(ratios) if ratios else None,
                    "start_p50_ms_median": round(statistics.median(p50s), 1) if p50s else None,
                    "worker_cpu_ms_per_job_median": round(statistics.median(
                        r["worker_cpu_ms_per_job"] for r in rs if r.get("worker_cpu_ms_per_job")), 2)
                    if any(r.get("worker_cpu_ms_per_job") for r in rs) else None})
    return out


def format_summary(summary: list[dict], rounds: int) -> str:
    lines = [f"Across {rounds} rounds (order alternated; medians):",
             f"  {'system':<24} {'jobs/s':>8} {'vs Celery':>10} {'range':>13} {'submit→start p50 ms':>20} "
             f"{'worker CPU ms/job':>18}"]
    for s in summary:
        rng = (f"{s['ratio_vs_celery_min']:.2f}–{s['ratio_vs_celery_max']:.2f}"
               if s["ratio_vs_celery_min"] is not None else "-")
        lines.append(f"  {s['system']:<24} {_fmt(s['jobs_per_s_median']):>8} "
                     f"{_fmt(s['ratio_vs_celery_median'], '{:.2f}x'):>10} {rng:>13} "
                     f"{_fmt(s['start_p50_ms_median']):>20} {_fmt(s['worker_cpu_ms_per_job_median'], '{:.2f}'):>18}")
    return "\n".join(lines)


def _fmt(value, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def machine_info() -> dict:
    try:
        redis_server = subprocess.run(["redis-cli", "-h", "127.0.0.1", "INFO", "server"], capture_output=True,
                                      text=True, timeout=5).stdout
        redis_version = next((line.split(":", 1)[1].strip() for line in redis_server.splitlines()
                              if line.startswith("redis_version:")), None)
    except (OSError, subprocess.SubprocessError):
        redis_version = None
    return {"cpus_usable": len(os.sched_getaffinity(0)), "loadavg_before": os.getloadavg(),
            "python": platform.python_version(), "platform": platform.platform(),
            "redis_server": redis_version, "rq": package_version("rq"), "celery": package_version("celery"),
            "redis_py": package_version("redis"), "gunicorn": package_version("gunicorn"),
            "sqlalchemy": package_version("SQLAlchemy"),
            "note": "a shared 2-core machine: compare the ratios, not the absolute numbers"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    interrupt_on_signals()
    out, log_dir = run_files("engine", args.out)
    info = machine_info()
    started = time.time()
    try:
        rounds = run_rounds(args, log_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything this benchmark started", file=sys.stderr)
        return 130
    finally:
        stop_all_processes()
        from ilgun_runner import drop_created_databases
        drop_created_databases()   # --database-url pg: after the servers, which hold connections
    rows = [r for rows in rounds for r in rows]
    command = reproduce_command("engine.py", argv)
    print()
    print(f"ilgun engine benchmark: {args.jobs} no-op jobs per system, {args.clients} submitting threads, "
          f"{info['cpus_usable']} usable cores (shared machine: read the ratios, not the absolutes)")
    tables = []
    for i, round_rows in enumerate(rounds):
        if len(rounds) > 1:
            print(f"\nround {i + 1}:")
        tables.append(format_table(round_rows))
        print(tables[-1])
        floor_lines = format_floor_lines(round_rows)
        if floor_lines:
            print(floor_lines)
    summary = summarize_rounds(rounds) if len(rounds) > 1 else []
    if summary:
        print("\n" + format_summary(summary, len(rounds)))
    print(f"\nreproduce: {command}")
    result = {"started_at": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
              "duration_s": round(time.time() - started, 1), "command": command,
              "settings": {"jobs": args.jobs, "clients": args.clients, "profile": args.profile,
                           "poll_intervals": args.poll_intervals, "database_url": args.database_url or None,
                           "hosts": args.hosts, "rounds": args.rounds},
              "machine": info, "table": "\n\n".join(tables), "summary": summary,
              "ilgun_http_vs_floor": [c for rr in rounds for c in floor_comparison(rr)], "results": rows,
              "logs": str(log_dir)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}\nlogs:    {log_dir}")
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

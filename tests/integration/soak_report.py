"""The soak's results: problems in the server's log, and the summary of a report for a terminal
or a test's output.
"""
from __future__ import annotations

import re
from typing import Any

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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


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

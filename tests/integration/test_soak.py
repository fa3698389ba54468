"""The load soak (soak.py) as a test: 50 clients against one gunicorn for ILGUN_SOAK_SECONDS
(default 30, warm-up included: the short version every `make test` and CI run; `make
reliability` sets 180 or more). The figures are printed and written to
test-artifacts/reliability/soak.json.

Asserted: no error (statuses other than 2xx/304/206/429/503, 404 only where deliberate, no
"database is locked", no problem in the server's log, no worker replaced); every submitted job
succeeded once the load stopped (bounded wait); descriptors flat; RSS flat (see RSS_LIMIT_PCT).
"""
from __future__ import annotations

import os

import pytest

import soak
from soak import DEFAULT_OUT, SoakConfig, run_soak, summary

SECONDS = float(os.environ.get("ILGUN_SOAK_SECONDS", "30"))
CLIENTS = int(os.environ.get("ILGUN_SOAK_CLIENTS", "50"))
LONG_RUN = SECONDS >= 120
# The bar, < 5 % RSS growth per worker from the first window after warm-up to the last,
# is asserted on the long run (>= 120 s). A 30 s run compares 5 s windows 20 s apart while a
# worker is still paging in library code and filling its SQLite page caches (measured on 2
# cores: +0.1 to +1.2 % and 1-3 MB/min over 6-30 s, still ~0.9 MB/min at 30-120 s, slowing),
# so 5 % there would judge warm-up, not leaks. The short run's guard is relative and wider:
# growth under RSS_SHORT_LIMIT_PCT and an RSS slope after warm-up under
# RSS_SHORT_SLOPE_MB_PER_MIN. The busiest worker serves ~40-50 requests/s here, so that still
# fails a leak of more than ~2-3 KiB per request, or any leak tied to jobs (~15 jobs/s); smaller
# leaks are the long run's job.
RSS_LIMIT_PCT = 5.0
RSS_SHORT_LIMIT_PCT = 12.0
RSS_SHORT_SLOPE_MB_PER_MIN = 6.0
# Non-HTTP descriptors (files, database, outgoing sockets, pipes) may differ by this much
# between the two windows' medians: a download in flight holds one socket for a moment.
FD_SLACK = 5


@pytest.mark.timeout(SECONDS + 300)
def test_soak(tmp_path, capsys):
    def progress(msg: str) -> None:
        if LONG_RUN:  # minutes of silence under `make reliability` otherwise
            with capsys.disabled():
                soak._print(msg)
        else:
            soak._print(msg)

    cfg = SoakConfig(seconds=SECONDS, clients=CLIENTS, rss_limit_pct=RSS_LIMIT_PCT, fd_slack=FD_SLACK)
    report = run_soak(cfg, tmp_path / "data", DEFAULT_OUT, log=progress)
    with capsys.disabled():  # the figures, also where pytest captures output
        print("\n" + summary(report), flush=True)

    assert report["errors_total"] == 0, (
        f"errors {report['errors']}: {report['error_samples'][:10]} {report['log']['samples'][:3]}")
    jobs = report["jobs"]
    assert jobs["submitted"] > 0 and jobs["not_succeeded"] == 0, (
        f"{jobs['not_succeeded']} of {jobs['submitted']} job(s) did not succeed: {jobs['not_succeeded_samples']}")
    assert report["status_reads_ms"]["count"] > 0

    processes = {k: p for k, p in report["processes"].items() if p["present_whole_run"]}
    workers = {k: p for k, p in processes.items() if p["role"] == "worker"}
    assert len(workers) == 3, f"expected 3 workers through the whole run: {sorted(report['processes'])}"

    fd_growth = {k: p["fd_non_http_end"] - p["fd_non_http_start"] for k, p in processes.items()}
    assert all(g <= FD_SLACK for g in fd_growth.values()), f"descriptors grew: {fd_growth}"

    rss = {k: p["rss_growth_pct"] for k, p in workers.items()}
    if LONG_RUN:
        assert all(g < RSS_LIMIT_PCT for g in rss.values()), f"worker RSS grew by {rss} % (limit {RSS_LIMIT_PCT})"
    else:
        slopes = {k: p["rss_slope_mb_per_min"] for k, p in workers.items()}
        assert all(g < RSS_SHORT_LIMIT_PCT for g in rss.values()), f"worker RSS grew by {rss} %"
        assert all(s is None or s < RSS_SHORT_SLOPE_MB_PER_MIN for s in slopes.values()), (
            f"worker RSS climbing at {slopes} MB/min after warm-up")

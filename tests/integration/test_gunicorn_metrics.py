"""/metrics under a real gunicorn with three workers: one scrape, answered by any worker, adds
up every worker's counts (prometheus_client's multiprocess mode, set up by gunicorn.conf.py),
and a worker killed with SIGKILL takes none of its counts with it."""
from __future__ import annotations

import os
import signal
import socket

from prometheus_client.parser import text_string_to_metric_families

from gunicorn_harness import log, request, wait_for

REQUESTS = 90
JOBS = 12
HEALTHZ = {"endpoint": "/healthz", "method": "GET", "status": "200"}


def scrape(server) -> dict[tuple, float]:
    r = request(server.port, "GET", "/metrics", token=server.admin_token)
    assert r.status == 200, r
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.body) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_one_scrape_counts_every_worker_and_a_killed_worker_loses_nothing(ilgun_factory):
    server = ilgun_factory()
    metrics_dir = server.data_dir / "prometheus" / f"{socket.gethostname()}-{server.pid}"

    # Requests spread over the workers (a fresh connection each), then one scrape.
    pids = [request(server.port, "GET", "/healthz").data["pid"] for _ in range(REQUESTS)]
    served = set(pids)
    log(f"{REQUESTS} requests served by workers {sorted(served)}")
    assert len(served) >= 2, f"all {REQUESTS} requests went to one worker: the test proves nothing"
    assert served <= server.worker_pids()
    first = scrape(server)
    assert value(first, "ilgun_http_request_duration_seconds_count", **HEALTHZ) == REQUESTS
    assert value(first, "ilgun_http_request_duration_seconds_bucket", le="+Inf", **HEALTHZ) == REQUESTS
    assert metrics_dir.is_dir() and list(metrics_dir.glob("histogram_*.db")), "not in multiprocess mode"

    # Database gauges: every worker's dispatcher, and the queue.
    assert value(first, "ilgun_workers", host=socket.gethostname()) == 3
    assert value(first, "ilgun_worker_slots", host=socket.gethostname()) == 6
    token = server.admin_token
    quick = [server.submit(token, "sleep", {"duration": 0, "steps": 1}) for _ in range(JOBS)]
    slow = [server.submit(token, "sleep", {"duration": 1, "steps": 10}) for _ in range(10)]
    now = scrape(server)
    active = sum(value(now, "ilgun_jobs", kind="sleep", status=s) for s in ("queued", "running"))
    assert 4 <= active <= 10 + JOBS, now  # six slots: at least four of the slow jobs wait
    server.wait_jobs(quick + slow, timeout=60)

    # Jobs finished in any worker are in one scrape (observers run just after the final write).
    finished = wait_for(lambda: (lambda s: s if value(s, "ilgun_jobs_finished_total", kind="sleep",
                                                       status="succeeded") == JOBS + 10 else None)(scrape(server)),
                        timeout=10, what="every finished job counted")
    assert value(finished, "ilgun_job_duration_seconds_count", kind="sleep", status="succeeded") == JOBS + 10
    assert value(finished, "ilgun_jobs", kind="sleep", status="queued") == 0
    assert value(finished, "ilgun_jobs", kind="sleep", status="running") == 0

    # SIGKILL the worker that served the most requests, and wait for its replacement.
    victim = max(served, key=pids.count)
    before = server.worker_pids()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(server.worker_pids()) == 3 and victim not in server.worker_pids(), timeout=30,
             what="the killed worker replaced")
    log(f"killed worker {victim}; workers now {sorted(server.worker_pids())} (were {sorted(before)})")
    wait_for(lambda: not (metrics_dir / f"histogram_{victim}.db").exists(), timeout=10,
             what="the killed worker's files archived")
    assert (metrics_dir / "histogram_archive.db").exists()

    # Scrapes now, answered by whichever worker (the replacement too), report the same totals.
    answered_by = set()
    for extra in range(12):  # each round one more /healthz
        after = scrape(server)
        assert value(after, "ilgun_http_request_duration_seconds_count", **HEALTHZ) == REQUESTS + extra
        assert value(after, "ilgun_jobs_finished_total", kind="sleep", status="succeeded") == JOBS + 10
        answered_by.add(request(server.port, "GET", "/healthz").data["pid"])
    assert value(scrape(server), "ilgun_http_request_duration_seconds_count", **HEALTHZ) == REQUESTS + 12
    log(f"scrapes after the kill agreed; /healthz answered by {sorted(answered_by)}")


def test_metrics_off_under_gunicorn(ilgun_factory):
    server = ilgun_factory({"METRICS_ENABLED": "0"})
    assert request(server.port, "GET", "/metrics", token=server.admin_token).status == 404
    assert not (server.data_dir / "prometheus").exists()

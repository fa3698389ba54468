"""Prometheus metrics: what is counted, the job observer, the gauges read from the database, and
gunicorn's multiprocess mode. Free of Flask; the web side (the WSGI wrapper that times requests
and GET /metrics) is service/web/metrics.py.

Two kinds of numbers:

* Counters and histograms (requests, job outcomes, rate-limit rejections) are counted where
  they happen, in each process. Under gunicorn, prometheus_client's multiprocess mode keeps
  them in one memory-mapped file per worker in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets
  it before any worker exists); a scrape, answered by whichever worker gets it, adds up every
  worker's files, the dead ones' included, so the totals are right across workers and
  restarts. Outside gunicorn (tests, ``flask run``) each app has a registry in its process.
* Gauges of the current state (queued and running jobs, the oldest queued job's age, live
  workers and their slots) are read from the database by the scraping process, once per
  scrape (DatabaseCollector). They are the same whichever worker or host answers.

When a worker exits, gunicorn's child_exit hook (in the master) calls worker_exited, which
adds the dead worker's counters into one archive file per type and removes its files, so a
long-running server with worker recycling (MAX_REQUESTS) does not pile up a file per worker
ever started for every scrape to read. A scrape reads the files under a shared lock, the
archiving holds it exclusively, so no scrape sees a dead worker's counts twice or not at all.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client import values as _prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8

# prometheus_client chooses between per-process values and memory-mapped files once, when it is
# first imported, from PROMETHEUS_MULTIPROC_DIR; follow that choice rather than the variable
# now (it may have been set or unset since).
MULTIPROCESS = bool(getattr(_prometheus_values.ValueClass, "_multiprocess", False))

# Requests take about a millisecond to a few seconds (a large file is streamed after the timing
# ends: the duration is until the response's headers are ready). Jobs take 1 ms to 1 h.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # a path no route matched (404, or 405 for a wrong method)
MAX_LABEL = 64  # error codes come from job kinds: keep a stray long one from bloating every scrape

ARCHIVE = "archive"  # <type>_archive.db holds the counts of workers that exited
LOCK_FILE = ".ilgun-metrics.lock"
ARCHIVE_LOCK_SECONDS = 2.0  # the master never waits longer than this for a scrape to finish

# ``_created`` series are only produced outside multiprocess mode; leave them out everywhere so a
# scrape looks the same in tests and under gunicorn (rate() does not need them).
disable_created_metrics()


def endpoint_label(request) -> str:
    """The route that matched (``/api/v1/jobs/<job_id>``), never the raw path: ids in labels
    would make a new series per job."""
    rule = getattr(request, "url_rule", None) if request is not None else None
    return rule.rule if rule is not None else UNMATCHED


class Metrics:
    """The counters and histograms of one process. Also the engine's JobObserver
    (service/engine/events.py): the dispatcher calls job_finished and job_retried."""

    def __init__(self, registry: CollectorRegistry | None):
        self.registry = registry
        self.http_duration = Histogram(
            "ilgun_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response headers are ready), by route, "
            "method and status; its _count is the number of requests.",
            ["endpoint", "method", "status"], buckets=HTTP_BUCKETS, registry=registry)
        self.rate_limit_rejections = Counter(
            "ilgun_rate_limit_rejections_total", "Requests refused by a rate limit (429 RATE_LIMITED), by route.",
            ["endpoint"], registry=registry)
        self.jobs_finished = Counter(
            "ilgun_jobs_finished_total",
            "Final states recorded by this service's executions, by kind and status "
            "(succeeded, failed, cancelled).", ["kind", "status"], registry=registry)
        self.job_duration = Histogram(
            "ilgun_job_duration_seconds", "Run time of the execution that reached a final state, by kind and status.",
            ["kind", "status"], buckets=JOB_BUCKETS, registry=registry)
        self.job_failures = Counter(
            "ilgun_job_failures_total", "Jobs that ended failed, by kind and error code.",
            ["kind", "error_code"], registry=registry)
        self.job_retries = Counter(
            "ilgun_job_retries_total", "Transient failures that sent a job back to the queue, by kind and error code.",
            ["kind", "error_code"], registry=registry)
        # labels() takes a lock and builds a key on every call; the request path looks its child
        # up here instead (a racing first use creates the same child twice, which is harmless).
        self._http_children: dict[tuple[str, str, str], Any] = {}

    # -- requests -------------------------------------------------------------------------
    def observe_request(self, endpoint: str, method: str, status: str, seconds: float) -> None:
        key = (endpoint, method, status)
        child = self._http_children.get(key)
        if child is None:
            if method not in HTTP_METHODS:
                key = (endpoint, "OTHER", status)
            child = self._http_children[key] = self.http_duration.labels(*key)
        child.observe(seconds)

    def rate_limited(self, endpoint: str) -> None:
        self.rate_limit_rejections.labels(endpoint).inc()

    # -- JobObserver ----------------------------------------------------------------------
    def job_finished(self, kind: str, status: str, error_code: str | None, duration: float | None) -> None:
        self.jobs_finished.labels(kind, status).inc()
        if duration is not None:  # None: it never ran here (cancelled while queued, abandoned)
            self.job_duration.labels(kind, status).observe(max(0.0, duration))
        if status == "failed":
            self.job_failures.labels(kind, (error_code or "UNKNOWN")[:MAX_LABEL]).inc()

    def job_retried(self, kind: str, error_code: str) -> None:
        self.job_retries.labels(kind, (error_code or "UNKNOWN")[:MAX_LABEL]).inc()


_process_metrics: Metrics | None = None


def metrics_for_app() -> Metrics:
    """The Metrics an app should count into. In multiprocess mode there is one per process,
    written to this process's files (and collected from the files, not from a registry);
    otherwise every app gets its own registry, so apps side by side in one process (tests)
    count apart."""
    global _process_metrics
    if not MULTIPROCESS:
        return Metrics(CollectorRegistry(auto_describe=False))
    if _process_metrics is None:
        _process_metrics = Metrics(None)
    return _process_metrics


# -- gauges from the database ---------------------------------------------------------------

class DatabaseCollector:
    """Gauges of the current state, read from the database when a scrape asks for them.

    ``snapshot`` is JobService.metrics_snapshot. A failed read gives ilgun_database_up 0 and no
    other gauge, rather than failing the scrape (the counters are still worth having)."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily("ilgun_database_up", "1 if the gauges below could be read from the database.")
        try:
            snap = self.snapshot()
        except Exception:  # noqa: BLE001 - reported as a gauge and in the log
            log.exception("metrics: reading the gauges from the database failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("ilgun_jobs", "Jobs queued or running now, by kind and status (the same on every "
                                 "worker and host).", labels=["kind", "status"])
        oldest = GaugeMetricFamily("ilgun_queue_oldest_age_seconds",
                                   "Seconds the oldest claimable queued job of a kind has waited (0 if none).",
                                   labels=["kind"])
        now = snap["now"]
        for kind, row in sorted(snap["jobs"].items()):
            jobs.add_metric([kind, "queued"], row["queued"])
            jobs.add_metric([kind, "running"], row["running"])
            since = row["oldest_queued_at"]
            oldest.add_metric([kind], max(0.0, now - since) if since is not None else 0.0)
        yield jobs
        yield oldest
        per_host: dict[str, list[int]] = {}
        for w in snap["workers"]:
            counts = per_host.setdefault(w["host"], [0, 0])
            counts[0] += 1
            counts[1] += int(w["slots"])
        workers = GaugeMetricFamily("ilgun_workers", "Live job workers (heartbeat within 2 x LEASE_SECONDS), by host.",
                                    labels=["host"])
        slots = GaugeMetricFamily("ilgun_worker_slots", "Executor slots of the live job workers, by host.",
                                  labels=["host"])
        for host, (n, s) in sorted(per_host.items()):
            workers.add_metric([host], n)
            slots.add_metric([host], s)
        yield workers
        yield slots


class _Collected:
    """Metric families collected earlier, handed to a registry as they are."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return self.families


def render(metrics: Metrics, database: DatabaseCollector) -> bytes:
    """The whole exposition in the Prometheus text format 0.0.4 (CONTENT_TYPE)."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path:
        # Read the files under the shared lock, then the database without it: a slow database
        # must never keep the gunicorn master (worker_exited) waiting.
        with _dir_lock(path, exclusive=False, timeout=None):
            families = list(MultiProcessCollector(None, path=path).collect())
        registry.register(_Collected(families))
    elif metrics.registry is not None:
        registry.register(_Collected(list(metrics.registry.collect())))
    registry.register(database)
    return generate_latest(registry)


# -- multiprocess mode ----------------------------------------------------------------------

def multiprocess_dir() -> str | None:
    """The directory of the per-process files when multiprocess mode is on, else None."""
    if not MULTIPROCESS:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


@contextlib.contextmanager
def _dir_lock(path: str, exclusive: bool, timeout: float | None):
    """flock on a file in the metrics directory: shared for scrapes, exclusive for archiving.
    Released when the file is closed, so also when its holder dies."""
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if timeout is None:
            fcntl.flock(fd, mode)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def worker_exited(pid: int, path: str | None = None) -> int:
    """A worker is gone (gunicorn's child_exit, in the master): drop its live gauges
    (mark_process_dead) and fold its counters and histograms into the archive files. Returns
    the number of values archived. The counts stay in the scrape either way: prometheus_client
    would keep reading the dead worker's files; archiving only keeps their number bounded."""
    path = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or not os.path.isdir(path):
        return 0
    mark_process_dead(pid, path)
    archived = 0
    with _dir_lock(path, exclusive=True, timeout=ARCHIVE_LOCK_SECONDS):
        for typ in ("counter", "histogram"):
            dead = os.path.join(path, f"{typ}_{pid}.db")
            if not os.path.exists(dead):
                continue
            values = [(key, value) for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(dead)]
            archive = MmapedDict(os.path.join(path, f"{typ}_{ARCHIVE}.db"))
            try:
                for key, value in values:
                    if value:
                        total, _ts = archive.read_value(key)
                        archive.write_value(key, total + value, 0.0)
                        archived += 1
            finally:
                archive.close()
            os.remove(dead)
    return archived

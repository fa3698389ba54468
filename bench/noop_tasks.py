"""No-op jobs for the peer systems in bench/engine.py: an RQ function and a Celery task.

The workers import this module by its plain name, so they run with bench/ on their path
(``rq worker -P bench`` and ``celery -A noop_tasks`` from bench/, which bench/engine.py does).

Redis databases: RQ uses db 15 and Celery db 14 (both flushed by the benchmark before and
after its run, and nothing else); override with BENCH_RQ_REDIS_URL / BENCH_CELERY_REDIS_URL.
"""
from __future__ import annotations

import os
import time

from celery import Celery

RQ_REDIS_URL = os.environ.get("BENCH_RQ_REDIS_URL", "redis://127.0.0.1:6379/15")
RQ_QUEUE = "ilgun-bench-rq"

CELERY_REDIS_URL = os.environ.get("BENCH_CELERY_REDIS_URL", "redis://127.0.0.1:6379/14")
CELERY_QUEUE = "ilgun-bench-celery"


def noop() -> None:
    """The RQ job: nothing. RQ itself stamps enqueued_at, started_at and ended_at."""
    return None


celery_app = Celery("ilgun_bench", broker=CELERY_REDIS_URL, backend=CELERY_REDIS_URL)
celery_app.conf.update(
    task_default_queue=CELERY_QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
app = celery_app  # what `celery -A noop_tasks` looks for


@celery_app.task(name="ilgun_bench.noop")
def celery_noop() -> float:
    """The Celery task: returns the time it started, for the submit -> start latency
    (Celery's result meta has date_done but no start time)."""
    return time.time()

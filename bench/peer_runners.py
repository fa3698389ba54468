"""The peers in bench/engine.py: RQ (SimpleWorker, no fork per job) and Celery (threads pool)
on the local Redis, each in a Redis database of its own that is flushed before and after.

Both get the same shape of run as ilgun: workers up and warmed before the clock starts,
``clients`` threads submitting N no-op jobs while the workers run them, and the timings
read back from what each system records about its jobs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import redis

import noop_tasks
from bench_support import (BENCH_DIR, BenchError, CpuMeter, SubmitThreads, start_process, stop_process, summarize,
                           tail, utc_epoch, venv_tool, wait_for)


@dataclass
class PeerOptions:
    jobs: int
    clients: int
    timeout: float          # seconds allowed for submitting and for finishing, each
    log_dir: Path
    worker_processes: int = 2   # RQ: one SimpleWorker process per core
    concurrency: int = 2        # Celery: threads in one worker process


def _env_with_bench_path(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["PYTHONPATH"] = str(BENCH_DIR) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- RQ --------------------------------------------------------------------------------------

def run_rq(opts: PeerOptions, env: dict[str, str], system: str = "rq") -> dict:
    from rq import Queue, Worker
    from rq.job import Job

    conn = redis.Redis.from_url(noop_tasks.RQ_REDIS_URL)
    conn.flushdb()
    queue = Queue(noop_tasks.RQ_QUEUE, connection=conn)
    log_path = opts.log_dir / f"{system}-workers.log"
    workers = []
    submitters = None
    try:
        for i in range(opts.worker_processes):
            workers.append(start_process(
                [venv_tool("rq"), "worker", "--worker-class", "rq.worker.SimpleWorker", "--url",
                 noop_tasks.RQ_REDIS_URL, "--path", str(BENCH_DIR), "--name", f"ilgun-bench-{i}",
                 "--max-idle-time", str(int(opts.timeout * 3)), noop_tasks.RQ_QUEUE],
                env=_env_with_bench_path(env), log_path=log_path))

        def workers_up():
            for w in workers:
                if w.poll() is not None:
                    raise BenchError(f"an RQ worker exited {w.returncode}:\n{tail(log_path)}")
            n = len(Worker.all(connection=conn))
            return n >= opts.worker_processes, f"{n}/{opts.worker_processes} workers"
        wait_for(workers_up, label=f"{system}: waiting for workers", timeout=60)

        def finished() -> int:
            return queue.finished_job_registry.count + queue.failed_job_registry.count

        for _ in range(opts.worker_processes * 2):
            queue.enqueue(noop_tasks.noop)
        wait_for(lambda: (finished() >= opts.worker_processes * 2, "warm-up"), label=f"{system}: warm-up",
                 timeout=60)
        baseline = finished()

        meter = CpuMeter(workers, conn)
        submitters = SubmitThreads(opts.jobs, opts.clients, lambda _i: queue.enqueue(noop_tasks.noop).id).start()

        def progress():
            done = finished() - baseline
            want = submitters.submitted - len(submitters.errors)
            text = f"submitted {submitters.submitted}/{opts.jobs}, queued {queue.count}, finished {done}/{want}"
            return (not submitters.running and done >= want), text
        wait_for(progress, label=system, timeout=opts.timeout * 2, interval=0.5)
        submitters.join(timeout=5)
        cpu = meter.read()

        ids = [i for i in submitters.results if i]
        jobs = []
        for start in range(0, len(ids), 500):
            jobs += [j for j in Job.fetch_many(ids[start:start + 500], connection=conn) if j is not None]
        ok = [j for j in jobs if j.get_status(refresh=False) == "finished"]
        return summarize(
            system, requested=opts.jobs, first_submit=submitters.first_submit_at,
            last_submit=submitters.last_submit_at, finished_at=[utc_epoch(j.ended_at) for j in ok],
            latencies=[utc_epoch(j.started_at) - utc_epoch(j.enqueued_at) for j in ok],
            failed=len(ids) - len(ok), submit_errors=submitters.errors, cpu_seconds=cpu,
            notes={"workers": f"{opts.worker_processes} x rq SimpleWorker processes",
                   "latency_from": "job.enqueued_at -> job.started_at", "redis": noop_tasks.RQ_REDIS_URL})
    finally:
        if submitters is not None:
            submitters.halt()  # no enqueue may land after the flush below
        for w in workers:
            stop_process(w, grace=10.0)
        conn.flushdb()
        conn.close()


# --- Celery ----------------------------------------------------------------------------------

def _task_metas(conn: redis.Redis, ids: list[str]) -> list[dict | None]:
    """The result backend's records of ``ids``, read with MGET (None: no result yet)."""
    out: list[dict | None] = []
    for start in range(0, len(ids), 1000):
        keys = [f"celery-task-meta-{i}" for i in ids[start:start + 1000]]
        out += [json.loads(v) if v else None for v in conn.mget(keys)]
    return out


def run_celery(opts: PeerOptions, env: dict[str, str], system: str = "celery") -> dict:
    app, task = noop_tasks.celery_app, noop_tasks.celery_noop
    conn = redis.Redis.from_url(noop_tasks.CELERY_REDIS_URL)
    conn.flushdb()
    log_path = opts.log_dir / f"{system}-worker.log"
    worker = submitters = None
    try:
        worker = start_process(
            [venv_tool("celery"), "-A", "noop_tasks", "worker", "--pool", "threads",
             "--concurrency", str(opts.concurrency), "--queues", noop_tasks.CELERY_QUEUE,
             "--hostname", "ilgun-bench@%h", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
            env=_env_with_bench_path(env), log_path=log_path, cwd=BENCH_DIR)
        warm = [task.apply_async() for _ in range(opts.concurrency * 2)]
        deadline = time.monotonic() + 60

        def warmed_up():
            if worker.poll() is not None:
                raise BenchError(f"the Celery worker exited {worker.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"the Celery worker ran no task in 60s:\n{tail(log_path)}")
            return all(r.ready() for r in warm), "warm-up"
        wait_for(warmed_up, label=f"{system}: waiting for the worker", timeout=70)

        submitted_at: list[float] = [0.0] * opts.jobs
        meter = CpuMeter([worker], conn)

        def submit_one(i: int) -> str:
            submitted_at[i] = time.time()
            return task.apply_async().id
        submitters = SubmitThreads(opts.jobs, opts.clients, submit_one).start()

        def progress():
            ids = [i for i in submitters.results[:submitters.submitted] if i]
            done = sum(1 for m in _task_metas(conn, ids) if m and m.get("status") in ("SUCCESS", "FAILURE"))
            want = submitters.submitted - len(submitters.errors)
            text = f"submitted {submitters.submitted}/{opts.jobs}, finished {done}/{want}"
            return (not submitters.running and done >= want), text
        wait_for(progress, label=system, timeout=opts.timeout * 2, interval=0.5)
        submitters.join(timeout=5)
        cpu = meter.read()

        sent = [(i, submitted_at[n]) for n, i in enumerate(submitters.results) if i]
        metas = _task_metas(conn, [i for i, _ in sent])
        ok = [(m, at) for m, (_, at) in zip(metas, sent) if m and m.get("status") == "SUCCESS"]
        return summarize(
            system, requested=opts.jobs, first_submit=submitters.first_submit_at,
            last_submit=submitters.last_submit_at, finished_at=[utc_epoch(m["date_done"]) for m, _ in ok],
            latencies=[m["result"] - at for m, at in ok], failed=len(sent) - len(ok),
            submit_errors=submitters.errors, cpu_seconds=cpu,
            notes={"workers": f"1 celery worker, threads pool, concurrency {opts.concurrency}",
                   "latency_from": "time.time() before apply_async -> time.time() at task start",
                   "finished_from": "result meta date_done", "redis": noop_tasks.CELERY_REDIS_URL})
    finally:
        if submitters is not None:
            submitters.halt()  # no task may be sent after the flush below
        if worker is not None:
            stop_process(worker, grace=10.0)
        conn.flushdb()
        conn.close()

"""Stopping and reloading gunicorn with jobs in flight: running jobs finish or are handed back,
nothing is lost, nothing runs twice at once."""
from __future__ import annotations

import random
import signal
import time
import uuid

from gunicorn_harness import dump, group_members, log, overlapping, pid_alive, wait_for

GRACE = 6          # GRACEFUL_TIMEOUT: the job engine waits GRACE - 3 = 3s, then hands back
LONG = 8.0         # downloads that cannot finish within that wait


def _submit_mix(server, slow_files, token, rnd):
    """Two long downloads first (they will be in flight at the signal), then more 2-4s
    downloads and sleeps than there are slots (3 workers x 2)."""
    downloads: dict[str, str] = {}   # job id -> file server path
    sleeps: list[str] = []
    long_ids = []
    for _ in range(2):
        name = f"long-{uuid.uuid4().hex}"
        job_id = server.submit(token, "download", {"url": slow_files.url(name, LONG)})
        downloads[job_id] = name
        long_ids.append(job_id)
    for i in range(14):
        seconds = round(rnd.uniform(2, 4), 2)
        if i % 2:
            name = f"mid-{uuid.uuid4().hex}"
            downloads[server.submit(token, "download", {"url": slow_files.url(name, seconds)})] = name
        else:
            sleeps.append(server.submit(token, "sleep", {"duration": seconds, "steps": 8}))
    return downloads, sleeps, long_ids


def _wait_busy(server, slow_files, downloads, long_ids):
    wait_for(lambda: all(slow_files.for_path(downloads[j]) for j in long_ids), timeout=10,
             what="both long downloads to start")
    wait_for(lambda: sum(len(w["running"]) for w in server.stats()["workers"]) >= 5, timeout=10,
             what="the slots to fill")
    time.sleep(0.5)


def _check_executions(slow_files, downloads, long_ids):
    """Per download job: executions one after the other, exactly one complete, and the long
    ones (in flight at the signal, longer than the engine's wait) fetched exactly twice."""
    problems = []
    for job_id, name in downloads.items():
        fetches = slow_files.for_path(name)
        if overlapping(fetches):
            problems.append(f"{job_id}: two executions at once: {[vars(f) for f in fetches]}")
        if sum(f.complete for f in fetches) != 1:
            problems.append(f"{job_id}: {sum(f.complete for f in fetches)} complete fetches: "
                            f"{[vars(f) for f in fetches]}")
        if job_id in long_ids and len(fetches) != 2:
            problems.append(f"{job_id}: long job fetched {len(fetches)} times (expected: cut off once, "
                            f"then run again): {[vars(f) for f in fetches]}")
    assert not problems, "\n".join(problems)


def _check_all_succeeded_once(final):
    # attempt == 1: a hand-back by a stopping worker refunds the attempt, so a job that was
    # only ever interrupted by shutdowns ends on its first attempt. attempt 2 would mean a
    # worker died with the job (lease expiry recovery).
    bad = {j: (v["status"], v["attempt"], v["message"]) for j, v in final.items()
           if v["status"] != "succeeded" or v["attempt"] != 1}
    assert not bad, f"not succeeded on attempt 1: {dump(bad)}"


def _check_engines_stopped(server, pids):
    """Each of these workers' job engines completed its stop: the last step of a dispatcher's
    stop removes its row from the workers table, so a row left behind by one of these (dead)
    workers means it was killed before its jobs were dealt with. (Checked right after they
    exit: live workers prune such rows after 2 x LEASE_SECONDS.)"""
    left = [w for w in server.db_workers() if w["pid"] in set(pids)]
    assert not left, ("worker(s) exited without finishing the job engine's stop (killed at the end "
                      f"of the graceful timeout?): {dump(left)}")


def _stop_master(server):
    pgid = server.pid
    workers = server.worker_pids()
    server.terminate(signal.SIGTERM)
    t0 = time.monotonic()
    code = server.wait_exit(timeout=GRACE + 15)
    stopped_in = time.monotonic() - t0
    log(f"master exited with {code} after {stopped_in:.1f}s")
    assert code == 0, f"gunicorn exit code {code}"
    assert stopped_in <= GRACE + 3, f"stop took {stopped_in:.1f}s"
    wait_for(lambda: not group_members(pgid), timeout=5, what="every gunicorn process to exit")
    assert not any(pid_alive(p) for p in workers)
    return workers


def _check_graceful_db_state(server, all_ids):
    """A graceful stop leaves no job running under a lease that only expiry could recover:
    every job is finished, or queued (never started, or handed back)."""
    rows = server.db_jobs()
    assert set(rows) == set(all_ids)
    running = {j: (r["status"], r["attempt"], r["lease_owner"], r["message"])
               for j, r in rows.items() if r["status"] == "running"}
    assert not running, f"left running by a graceful stop: {dump(running)}"
    assert server.db_workers() == [], f"workers still registered: {dump(server.db_workers())}"
    return rows


def test_sigterm_with_jobs_in_flight_then_restart(ilgun_factory, slow_files):
    settings = {"GRACEFUL_TIMEOUT": str(GRACE)}
    server = ilgun_factory(settings)
    token = server.register("stopuser")
    downloads, sleeps, long_ids = _submit_mix(server, slow_files, token, random.Random(3))
    all_ids = list(downloads) + sleeps
    _wait_busy(server, slow_files, downloads, long_ids)

    workers = _stop_master(server)
    _check_engines_stopped(server, workers)
    rows = _check_graceful_db_state(server, all_ids)
    for job_id in long_ids:
        r = rows[job_id]
        assert (r["status"], r["attempt"]) == ("queued", 0), f"long job not handed back: {dump(r)}"
    statuses = [r["status"] for r in rows.values()]
    log(f"after stop: {dict((s, statuses.count(s)) for s in set(statuses))}")

    # Start again on the same data: everything finishes, nothing is lost.
    again = ilgun_factory(settings, data_dir=server.data_dir, name="restarted")
    final = again.wait_jobs(all_ids, timeout=40)
    _check_all_succeeded_once(final)
    time.sleep(0.5)
    _check_executions(slow_files, downloads, long_ids)


def test_hup_with_jobs_in_flight(ilgun_factory, slow_files):
    server = ilgun_factory({"GRACEFUL_TIMEOUT": str(GRACE)})
    token = server.register("hupuser")
    downloads, sleeps, long_ids = _submit_mix(server, slow_files, token, random.Random(4))
    all_ids = list(downloads) + sleeps
    _wait_busy(server, slow_files, downloads, long_ids)

    old = server.worker_pids()
    assert len(old) == 3
    server.terminate(signal.SIGHUP)
    t0 = time.monotonic()
    log(f"HUP sent; old workers {sorted(old)}")

    # The old workers leave within the grace period, three new ones serve.
    wait_for(lambda: not any(pid_alive(p) for p in old), timeout=GRACE + 10, what="the old workers to exit")
    gone_in = time.monotonic() - t0
    log(f"old workers gone after {gone_in:.1f}s")
    assert gone_in <= GRACE + 3, f"old workers took {gone_in:.1f}s to leave"
    assert server.running(), "the master survives a HUP"
    _check_engines_stopped(server, old)
    wait_for(lambda: server.live_workers_ok(3), timeout=15, what="3 new live workers")
    new = server.worker_pids()
    assert not (new & old), (old, new)

    final = server.wait_jobs(all_ids, timeout=40)
    _check_all_succeeded_once(final)
    time.sleep(0.5)
    _check_executions(slow_files, downloads, long_ids)


def test_sigterm_while_a_slow_client_holds_a_worker(ilgun_factory, slow_files):
    """A client slowly downloading a result keeps a request in flight on one worker when
    gunicorn is told to stop. That worker must still hand its running jobs back before
    gunicorn's graceful timeout ends, like the others."""
    settings = {"GRACEFUL_TIMEOUT": str(GRACE)}
    server = ilgun_factory(settings)
    token = server.register("slowclient")
    # A result big enough (8 MiB) to fill the socket buffers of a client that reads nothing.
    big = server.submit(token, "download", {"url": slow_files.url("big", 0.5, chunks=128), "filename": "big.bin"})
    assert server.wait_jobs([big], timeout=20, token=token)[big]["status"] == "succeeded"

    # Fill every slot of every worker with jobs that outlast the engine's wait.
    sleeps = [server.submit(token, "sleep", {"duration": 10, "steps": 20}) for _ in range(6)]
    wait_for(lambda: all(server.job(j)["status"] == "running" for j in sleeps), timeout=10,
             what="six running jobs")
    # (so whichever worker the slow client lands on has jobs to hand back)
    wait_for(lambda: sorted(len(w["running"]) for w in server.stats()["workers"]) == [2, 2, 2],
             timeout=5, what="two jobs on each worker")

    reader = server.slow_reader(f"/api/v1/jobs/{big}/files/big.bin", token)
    try:
        time.sleep(1.0)  # the worker is now blocked sending the file
        workers = _stop_master(server)
        # The premise: the response was still unfinished when gunicorn stopped.
        received = 0
        try:
            while chunk := reader.recv(1 << 16):
                received += len(chunk)
        except OSError:
            pass
        assert received < 128 * 64 * 1024, "the slow client got the whole file: no request was in flight"
    finally:
        reader.close()
    _check_engines_stopped(server, workers)
    _check_graceful_db_state(server, [big, *sleeps])

    again = ilgun_factory(settings, data_dir=server.data_dir, name="restarted")
    final = again.wait_jobs(sleeps, timeout=40)
    _check_all_succeeded_once(final)


def test_hup_ends_a_worker_whose_job_ignores_the_stop(ilgun_factory):
    """A job blocked in something that never looks at the stop request (a long library call) is
    handed back at the end of the grace period; after a HUP nothing SIGKILLs the old worker, so
    it must end itself then rather than let the stale run go on beside the new attempt."""
    server = ilgun_factory({"GRACEFUL_TIMEOUT": str(GRACE)})
    token = server.register("stubborn")
    blocked = 25.0
    job_id = server.submit(token, "sleep", {"duration": blocked, "steps": 1, "uninterruptible": True})
    wait_for(lambda: server.job(job_id, token)["status"] == "running", timeout=10, what="the job to start")

    def holder_pid():  # the worker's heartbeat lists the job within a second
        return next((w["pid"] for w in server.stats()["workers"] if job_id in w["running"]), None)
    holder = wait_for(holder_pid, timeout=10, interval=0.2, what="a worker to list the job")
    hup_at = time.time()
    server.terminate(signal.SIGHUP)
    t0 = time.monotonic()
    wait_for(lambda: not pid_alive(holder), timeout=blocked, what="the worker holding the blocked job to exit")
    gone_in = time.monotonic() - t0
    log(f"worker {holder} gone {gone_in:.1f}s after HUP (the job blocks {blocked:.0f}s)")
    assert gone_in <= GRACE + 4, f"the old worker lingered {gone_in:.1f}s with its stale run"
    assert f"worker {holder} exits now: 1 handed-back job(s) still running here: {job_id}" in server.log_text()
    job = server.wait_jobs([job_id], timeout=blocked + 20, token=token)[job_id]
    # the run that finished began after the HUP, on a new worker (a hand-back refunds the attempt)
    assert job["status"] == "succeeded" and job["result"]["began_at"] > hup_at, job

"""A worker killed with SIGKILL in the middle of a job: another worker takes the job over
once the lease expires, and gunicorn replaces the dead worker."""
from __future__ import annotations

import os
import signal
import time
import uuid

from gunicorn_harness import dump, log, pid_alive, wait_for

LEASE = 3.0
SWEEP = 0.5
DOWNLOAD_SECONDS = 4.0


def test_kill_9_of_the_worker_running_a_download(ilgun_factory, slow_files):
    server = ilgun_factory({"LEASE_SECONDS": str(LEASE), "SWEEP_INTERVAL": str(SWEEP)})
    token = server.register("crashuser")
    name = f"crash-{uuid.uuid4().hex}"
    job_id = server.submit(token, "download", {"url": slow_files.url(name, DOWNLOAD_SECONDS)})

    # The worker whose dispatcher runs the job, and proof that the download is under way.
    def runner():
        for w in server.stats()["workers"]:
            if job_id in w["running"]:
                return w["pid"]
        return None
    victim = wait_for(runner, timeout=10, what="a worker listing the job as running")
    wait_for(lambda: slow_files.for_path(name), timeout=5, what="the download request")
    first = slow_files.for_path(name)[0]
    assert first.end is None, "the first fetch must still be streaming when the worker dies"
    workers_before = server.worker_pids()
    assert victim in workers_before

    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    log(f"killed worker {victim} running job {job_id}")
    wait_for(lambda: not pid_alive(victim), timeout=5, what="the killed worker to be gone")

    # Recovered by another worker: the lease (<= LEASE after the last renewal) runs out, a
    # sweep (every SWEEP) requeues the job and a dispatcher claims it again at once.
    wait_for(lambda: len(slow_files.for_path(name)) >= 2, timeout=LEASE + SWEEP + 6,
             what="a second fetch by another worker")
    second = slow_files.for_path(name)[1]
    takeover = second.start - killed_at
    log(f"job taken over {takeover:.2f}s after the kill")
    assert takeover <= LEASE + SWEEP + 3.0, f"takeover took {takeover:.2f}s"

    final = server.wait_jobs([job_id], timeout=DOWNLOAD_SECONDS + 10)[job_id]
    assert final["status"] == "succeeded", dump(final)
    assert final["attempt"] == 2, f"one crashed attempt plus one recovery: {dump(final)}"
    assert final["result"]["size"] == second.size
    assert [f["size"] for f in final["files"]] == [second.size]

    # Exactly two executions: the killed one (cut off) and the recovery (complete), one after
    # the other. Give a stray third fetch a moment to show up before counting.
    time.sleep(1.0)
    fetches = slow_files.for_path(name)
    assert len(fetches) == 2, [vars(f) for f in fetches]
    assert not fetches[0].complete and fetches[0].end is not None
    assert fetches[1].complete
    assert fetches[0].end <= fetches[1].start + 0.5, "the recovery started while the first fetch was alive"

    # gunicorn respawned a worker: three live workers again, none of them the victim, and
    # each of them runs a dispatcher.
    wait_for(lambda: server.live_workers_ok(3), timeout=15, what="3 live workers again")
    after = server.worker_pids()
    assert victim not in after and len(after - workers_before) == 1, (workers_before, after)

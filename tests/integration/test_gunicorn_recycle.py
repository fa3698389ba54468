"""gunicorn's max_requests recycling workers while jobs stream in and clients poll."""
from __future__ import annotations

import random
import threading
import time
import uuid

from gunicorn_harness import TERMINAL, dump, log, overlapping


def test_max_requests_recycling_keeps_every_job_exactly_once(ilgun_factory, slow_files):
    server = ilgun_factory({"MAX_REQUESTS": "20", "MAX_REQUESTS_JITTER": "0"})
    # Every request counts towards max_requests, the readiness checks included.
    token = server.register("recycler")
    rnd = random.Random(6)
    downloads: dict[str, str] = {}
    sleeps: list[str] = []
    seen_workers: set[int] = set(server.worker_pids())
    stop = threading.Event()
    errors = []

    def watch_workers():
        while not stop.is_set():
            seen_workers.update(server.worker_pids())
            time.sleep(0.05)

    def poll():
        # Status reads on fresh connections keep the request counters moving.
        finished = set()
        while not stop.is_set():
            try:
                for job_id in list(downloads) + list(sleeps):
                    if stop.is_set():
                        return
                    if job_id in finished:
                        continue
                    r = server.call("GET", f"/api/v1/jobs/{job_id}", token=token)
                    if r.status != 200:
                        errors.append(f"GET {job_id}: {r}")
                    elif r.data["status"] in TERMINAL:
                        finished.add(job_id)
                time.sleep(0.2)
            except BaseException as exc:  # noqa: BLE001
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=watch_workers, daemon=True), threading.Thread(target=poll, daemon=True)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            seconds = round(rnd.uniform(0.5, 1.0), 2)
            if i % 2:
                name = f"rec-{uuid.uuid4().hex}"
                downloads[server.submit(token, "download", {"url": slow_files.url(name, seconds)})] = name
            else:
                sleeps.append(server.submit(token, "sleep", {"duration": seconds, "steps": 4}))
            time.sleep(0.25)
        all_ids = list(downloads) + sleeps
        final = server.wait_jobs(all_ids, timeout=60, token=token)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:5]
    recycled = len(seen_workers) - 3
    log(f"{len(seen_workers)} worker processes seen ({recycled} replacements)")
    assert recycled >= 3, f"workers were not recycled ({sorted(seen_workers)}); the test proves nothing"

    bad = {j: (v["status"], v["attempt"], v["message"]) for j, v in final.items()
           if v["status"] != "succeeded" or v["attempt"] != 1}
    assert not bad, f"not succeeded exactly once: {dump(bad)}"
    assert all(v["status"] in TERMINAL for v in final.values())
    # A recycled worker waits for its running jobs (here well under the grace period), so no
    # job is handed back or fetched twice.
    time.sleep(0.5)
    problems = {}
    for job_id, name in downloads.items():
        fetches = slow_files.for_path(name)
        if len(fetches) != 1 or not fetches[0].complete or overlapping(fetches):
            problems[job_id] = [vars(f) for f in fetches]
    assert not problems, dump(problems)
    assert "SIGKILL" not in server.log_text()

"""Per-user concurrency limits and rate limits, enforced across gunicorn workers."""
from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from datetime import datetime

from gunicorn_harness import dump, log, run_threads


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_racing_submissions_respect_a_per_user_limit_of_one(ilgun_factory):
    """Queue mode: the second job waits for the first, whichever worker claims it."""
    server = ilgun_factory({"KIND_LIMITS": json.dumps({"sleep": {"per_user": 1}})})
    users = [f"limited{i}" for i in range(3)]
    tokens = {u: server.register(u) for u in users}
    jobs: dict[str, list[str]] = {u: [] for u in users}
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(2 * len(users))

    def submit(user):
        try:
            barrier.wait(timeout=20)
            job_id = server.submit(tokens[user], "sleep", {"duration": 1.2, "steps": 4})
            with lock:
                jobs[user].append(job_id)
        except BaseException as exc:  # noqa: BLE001
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=submit, args=(u,), daemon=True) for u in users for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert all(len(v) == 2 for v in jobs.values()), jobs

    # Watch as fast as we can: never two running jobs of one user in one snapshot. The
    # database is read directly so one snapshot is one consistent read.
    both_running = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = server.db_jobs()
        for user, ids in jobs.items():
            if all(rows[j]["status"] == "running" for j in ids):
                both_running.append((user, time.time()))
        if all(r["status"] in ("succeeded", "failed", "cancelled") for r in rows.values()):
            break
        time.sleep(0.02)
    assert not both_running, f"two jobs of one user running at once: {both_running[:5]}"

    final = server.wait_jobs([j for ids in jobs.values() for j in ids], timeout=20)
    assert all(v["status"] == "succeeded" for v in final.values()), dump(final)
    # And from the recorded times: the second started only after the first finished.
    for user, ids in jobs.items():
        a, b = sorted((final[j] for j in ids), key=lambda v: v["started_at"])
        assert _ts(b["started_at"]) >= _ts(a["finished_at"]), (
            f"{user}: runs overlap: {a['started_at']}..{a['finished_at']} and {b['started_at']}..{b['finished_at']}")
        assert a["attempt"] == b["attempt"] == 1


def test_rate_limit_is_shared_by_all_workers(ilgun_factory):
    server = ilgun_factory({"RATELIMIT_ENABLED": "1", "RATELIMIT_DEFAULT": "30 per minute"})
    token = server.register("ratelimited")
    results = []
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def client(n):
        try:
            barrier.wait(timeout=20)
            for _ in range(6):
                # One connection per pair: /healthz (exempt) says which worker holds the
                # connection, then the counted request goes to that same worker.
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
                try:
                    conn.request("GET", "/healthz")
                    health = conn.getresponse()
                    pid = json.loads(health.read())["data"]["pid"]
                    conn.request("GET", "/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
                    resp = conn.getresponse()
                    body = json.loads(resp.read())
                    with lock:
                        results.append((pid, resp.status, body, dict(resp.getheaders())))
                finally:
                    conn.close()
        except BaseException as exc:  # noqa: BLE001
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(10)]
    elapsed = run_threads(threads, timeout=60)
    assert not errors, errors
    assert len(results) == 60
    assert elapsed < 50, "all requests must fall in one 60s window"

    by_pid = Counter(pid for pid, *_ in results)
    statuses = Counter(status for _, status, *_ in results)
    ok_by_pid = Counter(pid for pid, status, *_ in results if status == 200)
    log(f"answers per worker {dict(by_pid)}, statuses {dict(statuses)}, 200s per worker {dict(ok_by_pid)}")
    assert len(by_pid) > 1, f"all requests landed on one worker ({by_pid}); the test proves nothing"
    assert statuses == Counter({200: 30, 429: 30}), statuses
    for pid, status, body, headers in results:
        if status == 429:
            assert body["error_code"] == "RATE_LIMITED", body
            retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
            assert retry_after is not None and int(retry_after) > 0, headers
        else:
            assert body["success"] is True

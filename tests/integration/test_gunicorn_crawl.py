"""The one-active-crawl rule under racing submissions on a real gunicorn (3 workers), on SQLite
and on PostgreSQL: for each user, two submissions released at once by a barrier, each on a
fresh connection, so they land on different workers; the access log tells which worker served
each (by X-Request-ID), and the test checks that races across workers did happen."""
from __future__ import annotations

import json
import threading
import uuid

import pytest

from gunicorn_harness import dump, log, run_threads, wait_for
from tests.crawl_site import CrawlSite

USERS, MAX_ROUNDS = 6, 4


@pytest.fixture
def site():
    s = CrawlSite()
    yield s
    s.close()


def _served_by(server) -> dict[str, int]:
    """request id -> pid of the worker that answered it, from the JSON access log."""
    out = {}
    for line in server.log_text().splitlines():
        if line.startswith("{") and '"gunicorn.access"' in line:
            record = json.loads(line)
            if record.get("request_id"):
                out[record["request_id"]] = record["pid"]
    return out


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_racing_crawl_submissions_on_different_workers(request, ilgun_factory, site, database):
    settings = {"DATABASE_URL": request.getfixturevalue("pg_database")} if database == "postgresql" else {}
    server = ilgun_factory(settings)
    params = {"url": site.url("/"), "max_depth": 3, "delay": 0.5}  # keeps running while we race
    cross_worker, answers, job_ids = 0, [], []
    for round_no in range(MAX_ROUNDS):
        tokens = {f"r{round_no}u{i}": server.register(f"r{round_no}u{i}") for i in range(USERS)}
        barrier = threading.Barrier(2 * USERS)
        results: dict[str, list] = {user: [] for user in tokens}
        lock = threading.Lock()

        def submit(user):
            rid = uuid.uuid4().hex
            barrier.wait(timeout=20)
            resp = server.call("POST", "/api/v1/jobs", {"kind": "crawl", "params": params}, tokens[user],
                               headers={"X-Request-ID": rid}, retries=0)
            with lock:
                results[user].append((rid, resp))

        run_threads([threading.Thread(target=submit, args=(u,), daemon=True) for u in tokens for _ in range(2)], 60)
        served = wait_for(lambda: (s := _served_by(server)) and all(
            rid in s for pair in results.values() for rid, _r in pair) and s, 10, what="access log lines")
        for user, pair in results.items():
            statuses = sorted(resp.status for _rid, resp in pair)
            answers.append((user, statuses, [served[rid] for rid, _r in pair]))
            assert statuses == [202, 409], (user, [r.body for _i, r in pair])
            refused = next(r for _i, r in pair if r.status == 409)
            assert refused.body["error_code"] == "CRAWL_ALREADY_RUNNING", refused.body
            job_ids += [r.data["id"] for _i, r in pair if r.status == 202]
            cross_worker += len({served[rid] for rid, _r in pair}) == 2
        if cross_worker >= 2:
            break
    log(f"{database}: {cross_worker} races across workers: {dump(answers)}")
    assert cross_worker >= 2, answers
    rows = server.db_jobs()
    crawls = [r for r in rows.values() if r["kind"] == "crawl"]
    assert len(crawls) == len(job_ids)  # a refused submission left no row behind
    running_at_once = [r for r in crawls if r["status"] in ("queued", "running")]
    assert len({r["owner_id"] for r in running_at_once}) == len(running_at_once)
    for job_id in job_ids:
        server.call("POST", f"/api/v1/jobs/{job_id}/cancel", token=server.admin_token)
    final = server.wait_jobs(job_ids, timeout=30)
    assert {j["status"] for j in final.values()} <= {"cancelled", "succeeded"}

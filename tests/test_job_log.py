"""The per-job log: GET /api/v1/jobs/<id>/log, on SQLite and PostgreSQL."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from service.engine.job_log import JobLogBuffer, JobLogCapture
from service import log_context
from tests.conftest import assert_error, assert_ok, running_app
from tests.test_download_api import Origin, PAYLOAD


@pytest.fixture
def database_url(postgresql_or_none):
    return postgresql_or_none


@pytest.fixture
def app_factory(database_url, app_factory):
    if database_url is None:
        return app_factory
    return lambda **overrides: app_factory(**{"DATABASE_URL": database_url, **overrides})


@pytest.fixture
def origin():
    server = Origin()
    yield server
    server.stop()


def _log(api, job_id, **query):
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return api.get(f"/api/v1/jobs/{job_id}/log" + (f"?{qs}" if qs else ""))


def _messages(resp) -> list[str]:
    return [line["message"] for line in assert_ok(resp)["lines"]]


def test_a_download_logs_its_steps_in_order(alice, dispatcher, origin):
    job = alice.submit("download", {"url": f"{origin.url}/data.bin"}).get_json()["data"]
    assert alice.wait(job["id"])["status"] == "succeeded"
    data = assert_ok(_log(alice, job["id"]))
    assert data["job_id"] == job["id"] and data["dropped"] == 0
    messages = [line["message"] for line in data["lines"]]
    assert messages[0].startswith("attempt 1 of ") and " started on " in messages[0]
    assert messages[1] == f"GET {origin.url}/data.bin"
    assert messages[2].startswith("HTTP 200 from ") and f"Content-Length {len(PAYLOAD)}" in messages[2]
    assert messages[3].startswith(f"saved data.bin: {len(PAYLOAD)} bytes, sha256 ")
    assert messages[4].startswith("succeeded in ") and messages[4].endswith("with 1 file(s)")
    seqs = [line["seq"] for line in data["lines"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert {line["level"] for line in data["lines"]} == {"INFO"}
    assert all(line["at"].endswith("+00:00") for line in data["lines"])
    # tail: the last lines; after: only newer ones (for polling)
    assert _messages(_log(alice, job["id"], tail=2)) == messages[-2:]
    assert _messages(_log(alice, job["id"], after=seqs[2])) == messages[3:]
    assert _messages(_log(alice, job["id"], after=seqs[-1])) == []


def test_a_failure_and_its_retries_are_in_the_log(app_factory):
    app, admin = running_app(app_factory)
    kind = app.extensions["ilgun"].kinds["sleep"]
    kind.retry_backoff_seconds, saved = 0.01, kind.retry_backoff_seconds
    try:
        job = admin.submit("sleep", {"duration": 0, "fail": "transient"}).get_json()["data"]
        assert admin.wait(job["id"])["status"] == "failed"
    finally:
        kind.retry_backoff_seconds = saved
    lines = assert_ok(_log(admin, job["id"]))["lines"]
    starts = [l for l in lines if " started on " in l["message"]]
    assert [l["message"].split(" started")[0] for l in starts] == ["attempt 1 of 3", "attempt 2 of 3", "attempt 3 of 3"]
    retries = [l for l in lines if l["level"] == "WARNING"]
    assert len(retries) == 2 and all(l["message"].startswith("SLEEP_TRANSIENT: transient failure on attempt")
                                     and "(retrying in " in l["message"] for l in retries)
    assert lines[-1]["level"] == "ERROR" and lines[-1]["message"].startswith("failed SLEEP_TRANSIENT: ")


def test_a_crash_shows_what_went_wrong_but_no_stack_trace(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 0, "fail": "crash"}).get_json()["data"]
    admin.wait(job["id"])
    lines = assert_ok(_log(admin, job["id"]))["lines"]
    text = "\n".join(l["message"] for l in lines)
    assert "(RuntimeError: deliberate crash)" in text
    assert "Traceback" not in text and "File \"" not in text
    assert lines[-1]["message"] == "failed INTERNAL_ERROR: The job failed unexpectedly (RuntimeError)."


def test_lines_of_a_running_job_show_while_it_runs(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 20, "steps": 40, "log_steps": True}).get_json()["data"]
    deadline = time.monotonic() + 10
    while not any(m.startswith("step ") for m in _messages(_log(admin, job["id"]))):
        assert time.monotonic() < deadline, "no live line within 10 s"
        time.sleep(0.1)
    assert admin.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]["status"] == "running"
    admin.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert admin.wait(job["id"])["status"] == "cancelled"
    messages = _messages(_log(admin, job["id"], tail=1000))
    steps = [m for m in messages if m.startswith("step ")]
    assert steps == [f"step {i} of 40 done" for i in range(1, len(steps) + 1)]  # in order, none twice
    assert messages[-1] == "cancelled"


def test_another_users_job_log_is_not_found_and_bad_queries_are_refused(alice, bob, admin):
    job = alice.submit("download", {"url": "https://example.com/x"}).get_json()["data"]
    assert_error(_log(bob, job["id"]), 404, "JOB_NOT_FOUND")
    assert_error(_log(alice, "no-such-job"), 404, "JOB_NOT_FOUND")
    assert_ok(_log(admin, job["id"]))  # admins see every job
    assert assert_ok(_log(alice, job["id"]))["lines"] == []  # queued: nothing logged yet
    for query in ({"tail": 0}, {"tail": 1001}, {"tail": "x"}, {"after": -1}):
        assert_error(_log(alice, job["id"], **query), 400, "VALIDATION_ERROR")
    resp = alice.client.get(f"/api/v1/jobs/{job['id']}/log")
    assert resp.status_code == 401


def test_deleting_a_job_deletes_its_log(app, alice, dispatcher, origin):
    job = alice.submit("download", {"url": f"{origin.url}/data.bin"}).get_json()["data"]
    alice.wait(job["id"])
    store = app.extensions["ilgun"].job_logs
    assert store.read(job["id"])[0]
    assert alice.delete(f"/api/v1/jobs/{job['id']}").status_code == 200
    assert store.read(job["id"]) == ([], 0)


def test_the_store_keeps_the_last_lines_and_counts_the_rest(app, admin):
    from service.store.job_logs import JobLogStore
    from service.store.claims import ClaimStore
    job = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    svc = app.extensions["ilgun"]
    claimed = ClaimStore(svc.engine).claim("w1", 1, {"sleep": _policy()}, 30)
    assert [j["id"] for j in claimed] == [job["id"]]
    store = JobLogStore(svc.engine, keep=5)
    token = claimed[0]["run_token"]
    for batch in range(3):
        lines = [(time.time(), "INFO", f"line {batch * 4 + i}") for i in range(4)]
        assert store.append_running({job["id"]: (token, lines)}) == set()
    lines, dropped = store.read(job["id"], tail=100)
    assert [l["message"] for l in lines] == [f"line {i}" for i in range(7, 12)] and dropped == 7
    # an execution that lost the job writes nothing
    assert store.append_running({job["id"]: ("stale-token", [(time.time(), "INFO", "late")])}) == {job["id"]}
    assert store.read(job["id"], tail=100)[0][-1]["message"] == "line 11"
    # long lines are cut, not refused
    store.append_running({job["id"]: (token, [(time.time(), "INFO", "x" * 5000)])})
    assert len(store.read(job["id"], tail=1)[0][0]["message"]) == 2000


def test_a_recovered_job_says_so_in_its_log(app, admin):
    from service.store.claims import ClaimStore
    job = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    now = [time.time()]
    claims = ClaimStore(app.extensions["ilgun"].engine, clock=lambda: now[0])
    claims.claim("dead-worker", 1, {"sleep": _policy()}, 30)
    now[0] += 60
    requeued, _ = claims.sweep()
    assert requeued == [job["id"]]
    lines = assert_ok(_log(admin, job["id"]))["lines"]
    assert lines[-1]["level"] == "WARNING"
    assert lines[-1]["message"] == "requeued: worker dead-worker stopped responding"


def _policy():
    from service.store.jobs import KindPolicy
    return KindPolicy("sleep", None, "queue", None, 3, None)


# -- the capture handler, without a database ----------------------------------------------

def test_capture_takes_only_records_made_on_a_registered_jobs_thread():
    capture = JobLogCapture()
    logger = logging.getLogger("tests.job_log_capture")
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    buffer = JobLogBuffer()
    capture.register("job-1", buffer)
    try:
        logger.info("before the job's thread set its id")       # no job id: not captured

        def job_thread():
            token = log_context.job_id.set("job-1")
            try:
                logger.debug("debug is below the handler's level")
                logger.info("fetched %d pages", 3)
                try:
                    raise ValueError("bad page")
                except ValueError:
                    logger.exception("page failed")
            finally:
                log_context.job_id.reset(token)

        def other_job():
            token = log_context.job_id.set("job-2")             # not registered here
            logger.warning("another job's line")
            log_context.job_id.reset(token)

        for target in (job_thread, other_job):
            t = threading.Thread(target=target)
            t.start()
            t.join()
    finally:
        logger.removeHandler(capture)
    lines = buffer.take()
    assert [(level, message) for _, level, message in lines] == [
        ("INFO", "fetched 3 pages"), ("ERROR", "page failed (ValueError: bad page)")]
    assert buffer.take() == [] and not buffer.pending

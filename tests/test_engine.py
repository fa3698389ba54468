"""The dispatcher running real jobs in this process, as one gunicorn worker does.

Every test runs on SQLite and on PostgreSQL (a fresh schema per test, see tests/pg.py)."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.conftest import running_app, sign_up


@pytest.fixture
def database_url(postgresql_or_none):
    return postgresql_or_none


@pytest.fixture
def app_factory(database_url, app_factory):
    """conftest's factory, on this test's database. database_url comes first so it is torn
    down last: the apps' dispatchers stop before their schema is dropped."""
    if database_url is None:
        return app_factory
    return lambda **overrides: app_factory(**{"DATABASE_URL": database_url, **overrides})


def _job_dir(app, job):
    return app.extensions["ilgun"].workspace.job_dir(job["owner_id"], job["id"])


def test_cancel_running_job_stops_within_a_second_and_removes_files(app, admin, dispatcher):
    job = admin.submit("sleep", {"duration": 30, "steps": 30, "write_file": True}).get_json()["data"]
    admin.wait(job["id"], until=("running",))
    deadline = time.monotonic() + 5
    while not (_job_dir(app, job) / "out" / "sleep.txt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    resp = admin.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200
    done = admin.wait(job["id"], timeout=5)
    assert done["status"] == "cancelled"
    assert time.monotonic() - started < 1.5
    assert not _job_dir(app, job).exists()


def test_cancel_queued_job_is_immediate(app_factory):
    app, admin = running_app(app_factory, MAX_WORKERS=1)
    blocker = admin.submit("sleep", {"duration": 30}).get_json()["data"]
    queued = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    admin.wait(blocker["id"], until=("running",))
    resp = admin.post(f"/api/v1/jobs/{queued['id']}/cancel").get_json()
    assert resp["data"]["status"] == "cancelled"
    again = admin.post(f"/api/v1/jobs/{queued['id']}/cancel")
    assert again.status_code == 409 and again.get_json()["error_code"] == "INVALID_STATE"
    admin.post(f"/api/v1/jobs/{blocker['id']}/cancel")


def test_a_direct_start_never_takes_a_slot_a_claim_in_flight_is_filling(app_factory):
    """The claim loop claims outside the dispatcher's lock; a submit that started its job
    directly meanwhile used to leave two jobs running in one slot (seen as a flaky test)."""
    app, admin = running_app(app_factory, MAX_WORKERS=1, POLL_INTERVAL=0.05)
    dispatcher = app.extensions["ilgun"].dispatcher
    claim = dispatcher.claims.claim

    def slow_claim(*args, **kwargs):
        time.sleep(0.1)   # the window: free slots counted, the claim not yet committed
        return claim(*args, **kwargs)
    dispatcher.claims.claim = slow_claim
    ids = [admin.submit("sleep", {"duration": 0.3, "steps": 1}).get_json()["data"]["id"] for _ in range(4)]
    engine = app.extensions["ilgun"].engine
    most = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with engine.connect() as conn:   # one statement: a consistent snapshot
            running = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'running'")).scalar()
        most = max(most, running, len(dispatcher.active_ids()))
        if all(admin.get(f"/api/v1/jobs/{i}").get_json()["data"]["status"] == "succeeded" for i in ids):
            break
        time.sleep(0.01)
    assert all(admin.get(f"/api/v1/jobs/{i}").get_json()["data"]["status"] == "succeeded" for i in ids)
    assert most == 1


def test_transient_failure_is_retried_with_backoff_then_succeeds(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 0, "fail": "transient", "succeed_on_attempt": 2}).get_json()["data"]
    done = admin.wait(job["id"])
    assert done["status"] == "succeeded" and done["attempt"] == 2


def test_transient_failure_fails_after_max_attempts(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 0, "fail": "transient"}).get_json()["data"]
    done = admin.wait(job["id"])
    assert done["status"] == "failed" and done["attempt"] == 3
    assert done["error"]["code"] == "SLEEP_TRANSIENT"


def test_permanent_failure_fails_at_once(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 0, "fail": "permanent"}).get_json()["data"]
    done = admin.wait(job["id"])
    assert done["status"] == "failed" and done["attempt"] == 1
    assert done["error"] == {"code": "SLEEP_FAILED", "message": "failed as asked"}


def test_a_crashing_kind_fails_its_job_and_the_worker_goes_on(admin, dispatcher):
    crash = admin.submit("sleep", {"duration": 0, "fail": "crash"}).get_json()["data"]
    done = admin.wait(crash["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "INTERNAL_ERROR"
    assert "Traceback" not in done["error"]["message"]
    after = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    assert admin.wait(after["id"])["status"] == "succeeded"


def test_kind_timeout(app_factory):
    app, admin = running_app(app_factory, KIND_LIMITS={"sleep": {"timeout": 0.5}})
    job = admin.submit("sleep", {"duration": 20, "steps": 20}).get_json()["data"]
    done = admin.wait(job["id"], timeout=5)
    assert done["status"] == "failed" and done["error"]["code"] == "TIMEOUT"


def test_progress_writes_are_throttled(admin, dispatcher, monkeypatch):
    # every progress write goes through ClaimStore.progress (one UPDATE each)
    from service.store.claims import ClaimStore
    writes = []
    original = ClaimStore.progress

    def counted(self, *args, **kwargs):
        writes.append(time.monotonic())
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ClaimStore, "progress", counted)
    job = admin.submit("sleep", {"duration": 1.0, "steps": 500}).get_json()["data"]
    assert admin.wait(job["id"])["status"] == "succeeded"
    assert 2 <= len(writes) <= 8, len(writes)  # 500 reports over ~1 s, at most ~4 writes/s


def test_progress_is_visible_while_running(admin, dispatcher):
    job = admin.submit("sleep", {"duration": 2, "steps": 4}).get_json()["data"]
    seen = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        j = admin.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]
        seen.add(j["progress"])
        if j["status"] == "succeeded":
            break
        time.sleep(0.05)
    assert {25.0, 50.0, 75.0} & seen, seen
    assert j["progress"] == 100


def test_local_submit_starts_without_waiting_for_a_poll_tick(app_factory):
    app, admin = running_app(app_factory, POLL_INTERVAL=10.0)
    time.sleep(0.3)  # the claim loop is now asleep on its 10 s poll
    job = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    done = admin.wait(job["id"], timeout=3)
    assert done["status"] == "succeeded"


def test_a_job_queued_by_another_worker_starts_without_waiting_for_a_poll_tick(app_factory, database_url):
    """PostgreSQL: the submit's NOTIFY wakes every dispatcher. SQLite has no such channel
    (other workers poll), so there this only checks the poll still finds the job."""
    from service.runtime import start_worker_runtime
    poll = 10.0 if database_url else 0.2
    runner_app = app_factory(POLL_INTERVAL=poll)
    dispatcher = start_worker_runtime(runner_app)
    if dispatcher._listener is not None:
        assert dispatcher._listener.listening.wait(5)
    time.sleep(0.3)  # its claim loop is now asleep on the poll
    front = app_factory(POLL_INTERVAL=poll)  # a worker that serves the request but runs no jobs
    admin = sign_up(front, front.test_client(), "admin", role="admin")
    job = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    assert job["status"] == "queued"
    started = time.monotonic()
    done = admin.wait(job["id"], timeout=5)
    assert done["status"] == "succeeded"
    assert time.monotonic() - started < 2.0  # well under the 10 s poll


def test_stop_hands_unfinished_jobs_back_and_another_worker_finishes_them(app_factory):
    first = app_factory()
    client = first.test_client()
    admin = sign_up(first, client, "admin", role="admin")
    from service.runtime import start_worker_runtime, stop_worker_runtime
    start_worker_runtime(first)
    job = admin.submit("sleep", {"duration": 4, "steps": 8}).get_json()["data"]  # long enough to still be running under load
    admin.wait(job["id"], until=("running",))
    handed_back = stop_worker_runtime(first, timeout=0.2)
    assert handed_back == [job["id"]]
    back = admin.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]
    assert back["status"] == "queued" and back["attempt"] == 0
    second = app_factory()  # another worker on the same database
    start_worker_runtime(second)
    done = admin.wait(job["id"], timeout=20)
    assert done["status"] == "succeeded" and done["attempt"] == 1


def test_queued_jobs_have_position_and_eta(app_factory):
    app, admin = running_app(app_factory, MAX_WORKERS=1)
    first = admin.submit("sleep", {"duration": 30}).get_json()["data"]
    admin.wait(first["id"], until=("running",))
    waiting = [admin.submit("sleep", {"duration": 0}).get_json()["data"] for _ in range(3)]
    views = [admin.get(f"/api/v1/jobs/{j['id']}").get_json()["data"] for j in waiting]
    assert [v["position"] for v in views] == [1, 2, 3]
    etas = [v["eta_seconds"] for v in views]
    assert all(e is not None and e > 0 for e in etas) and etas == sorted(etas) and etas[0] < etas[2]
    running = admin.get(f"/api/v1/jobs/{first['id']}").get_json()["data"]
    assert running["position"] is None
    for j in [first, *waiting]:
        admin.post(f"/api/v1/jobs/{j['id']}/cancel")


def test_per_user_limit_queues_the_second_job(app_factory):
    app, admin = running_app(app_factory, KIND_LIMITS={"sleep": {"per_user": 1}}, MAX_WORKERS=2)
    a = admin.submit("sleep", {"duration": 0.6}).get_json()["data"]
    b = admin.submit("sleep", {"duration": 0.6}).get_json()["data"]
    da, db = admin.wait(a["id"]), admin.wait(b["id"])
    assert da["status"] == db["status"] == "succeeded"
    assert db["started_at"] >= da["finished_at"]


def test_startup_sweep_recovers_jobs_of_a_dead_worker(app, admin):
    """A job left running by a process that died: the next dispatcher recovers it at start."""
    svc = app.extensions["ilgun"]
    job = admin.submit("sleep", {"duration": 0}).get_json()["data"]
    from service.store.claims import ClaimStore
    from service.engine.dispatcher import policy_for
    policies = {"sleep": policy_for(svc.kinds["sleep"], app.config)}
    ClaimStore(svc.engine).claim("dead-worker", 1, policies, lease_seconds=0.01)
    time.sleep(0.05)
    from service.runtime import start_worker_runtime
    start_worker_runtime(app)
    done = admin.wait(job["id"], timeout=5)
    assert done["status"] == "succeeded" and done["attempt"] == 2


def test_finished_jobs_leave_no_lock_files_or_empty_folders(app, admin, dispatcher):
    svc = app.extensions["ilgun"]
    ids = [admin.submit("sleep", {"duration": 0}).get_json()["data"]["id"] for _ in range(5)]
    failing = admin.submit("sleep", {"duration": 0, "fail": "permanent"}).get_json()["data"]["id"]
    kept = admin.submit("sleep", {"duration": 0, "write_file": True}).get_json()["data"]
    for job_id in ids + [failing, kept["id"]]:
        admin.wait(job_id)
    locks = svc.workspace.root / "locks"
    assert not locks.exists() or list(locks.iterdir()) == []
    jobs_root = svc.workspace.user_dir(kept["owner_id"]) / "jobs"
    assert [p.name for p in jobs_root.iterdir()] == [kept["id"]]  # only the job with a file


def test_stop_hands_back_a_job_claimed_just_before_the_stop(app_factory, monkeypatch):
    """The claim commits (the API shows running) a moment before the dispatcher registers the
    job; a stop in that window must still hand it back, not leave it to lease expiry."""
    from service.engine.dispatcher import Dispatcher
    from service.runtime import start_worker_runtime, stop_worker_runtime
    register = Dispatcher._start

    def slow_register(self, job, **kwargs):
        time.sleep(0.5)  # widen the window between the claim and the registration
        register(self, job, **kwargs)

    monkeypatch.setattr(Dispatcher, "_start", slow_register)
    monkeypatch.setattr(Dispatcher, "reserve_slot", lambda self, kind=None: False)  # through the claim loop
    app = app_factory()
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    start_worker_runtime(app)
    job = admin.submit("sleep", {"duration": 5, "steps": 10}).get_json()["data"]
    admin.wait(job["id"], until=("running",))
    assert stop_worker_runtime(app, timeout=0.1) == [job["id"]]
    back = admin.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]
    assert back["status"] == "queued" and back["attempt"] == 0


def test_stop_hands_back_a_job_started_directly_by_its_submit(app_factory, monkeypatch):
    """A submit to a worker with a free slot inserts the job already running for that worker
    and registers it after the commit; a stop in that window must still hand it back."""
    import threading
    from service.engine.dispatcher import Dispatcher
    from service.runtime import start_worker_runtime, stop_worker_runtime
    register = Dispatcher._start
    committed = threading.Event()

    def slow_register(self, job, **kwargs):
        assert kwargs.get("reserved"), "expected the direct-start path"
        committed.set()
        time.sleep(0.5)
        register(self, job, **kwargs)

    monkeypatch.setattr(Dispatcher, "_start", slow_register)
    app = app_factory()
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    start_worker_runtime(app)
    answers = []
    submitter = threading.Thread(target=lambda: answers.append(
        admin.submit("sleep", {"duration": 5, "steps": 10}).get_json()["data"]))
    submitter.start()
    assert committed.wait(5)
    handed_back = stop_worker_runtime(app, timeout=0.1)
    submitter.join(5)
    job = answers[0]
    assert job["status"] == "running" and handed_back == [job["id"]]
    back = admin.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]
    assert back["status"] == "queued" and back["attempt"] == 0


def test_a_submit_to_a_free_slot_starts_at_once_and_never_jumps_the_queue(app_factory):
    """Direct start only when nothing is queued: a queued job is never passed over."""
    from service.runtime import start_worker_runtime
    app = app_factory(MAX_WORKERS=1)
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    start_worker_runtime(app)
    first = admin.submit("sleep", {"duration": 1.0, "steps": 2}).get_json()
    assert first["data"]["status"] == "running" and first["message"] == "Job started."
    second = admin.submit("sleep", {"duration": 0, "steps": 1}).get_json()["data"]
    assert second["status"] == "queued" and second["position"] == 1  # the only slot is busy
    for job in (first["data"], second):
        assert admin.wait(job["id"])["status"] == "succeeded"
    done = [admin.get(f"/api/v1/jobs/{j['id']}").get_json()["data"] for j in (first["data"], second)]
    assert done[0]["finished_at"] <= done[1]["started_at"]
    assert all(d["attempt"] == 1 for d in done)


def test_a_kind_that_ignores_its_timeout_is_recorded_failed_anyway(app_factory, monkeypatch):
    """Threads cannot be killed; the job must still not look running forever."""
    import service.jobs_service as jobs_service
    from service.engine.kind import JobKind
    from service.runtime import start_worker_runtime

    class Stubborn(JobKind):
        name = "stubborn"

        def validate(self, params, config):
            return {}

        def run(self, ctx):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # never looks at ctx.cancelled
                time.sleep(0.01)
            return {"late": True}

    app = app_factory(KIND_LIMITS={"stubborn": {"timeout": 0.3}}, TIMEOUT_GRACE=0.5)
    svc = app.extensions["ilgun"]
    svc.kinds = {**svc.kinds, "stubborn": Stubborn()}
    monkeypatch.setattr(jobs_service, "get_kind", lambda name: svc.kinds[name])
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    start_worker_runtime(app)
    job = admin.submit("stubborn").get_json()["data"]
    started = time.monotonic()
    done = admin.wait(job["id"], timeout=5)
    assert done["status"] == "failed" and done["error"]["code"] == "TIMEOUT"
    assert time.monotonic() - started < 2.5  # before the kind itself returned
    time.sleep(3)  # the thread returns late: its result must not overwrite the record
    assert admin.get(f"/api/v1/jobs/{job['id']}").get_json()["data"]["status"] == "failed"


def test_job_folders_are_locked_in_the_database_on_postgresql(app, admin, dispatcher, database_url):
    """Hosts sharing FILES_ROOT must not rely on file locks: on PostgreSQL the folder lock is an
    advisory lock, and a job that writes files leaves no lock file behind at any point."""
    from filelock import FileLock

    from service.store.folder_lock import AdvisoryFolderLock
    workspace = app.extensions["ilgun"].workspace
    lock = workspace.job_lock("0f8e6c1a-3b2d-4c5e-9f10-112233445566")
    assert isinstance(lock, AdvisoryFolderLock if database_url else FileLock)
    job = admin.submit("sleep", {"duration": 0.3, "steps": 3, "write_file": True}).get_json()["data"]
    assert admin.wait(job["id"])["status"] == "succeeded"
    if database_url:
        assert not (workspace.root / "locks").exists()
    assert (workspace.output_dir(job["owner_id"], job["id"]) / "sleep.txt").is_file()


def _overlaps(jobs: list[dict], duration: float) -> int:
    """The most jobs whose [began, began + duration) intervals overlap."""
    edges = sorted([(j["result"]["began_at"], 1) for j in jobs] +
                   [(j["result"]["began_at"] + duration - 0.01, -1) for j in jobs], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("per_process,expected", [(1, 1), (None, 2)])
def test_a_per_process_limit_runs_one_job_of_the_kind_at_a_time_here(app_factory, per_process, expected):
    limits = {"sleep": {"per_process": per_process}} if per_process else {}
    app, admin = running_app(app_factory, MAX_WORKERS=2, KIND_LIMITS=limits)
    ids = [admin.submit("sleep", {"duration": 0.4, "steps": 2}).get_json()["data"]["id"] for _ in range(4)]
    done = [admin.wait(i, timeout=20) for i in ids]
    assert all(j["status"] == "succeeded" for j in done)
    assert _overlaps(done, 0.4) == expected


def test_local_room_hands_out_each_place_once():
    from service.engine.local_room import LocalRoom
    room = LocalRoom({"ocr": 1, "crawl": 2, "free": None})
    assert room.take(["ocr"]) == {"ocr": 0, "crawl": 2}
    assert room.take([]) == {"ocr": 1, "crawl": 0}       # the first claim still holds both crawl places
    assert room.reserve_one("crawl", []) is False and room.reserve_one("free", []) is True
    room.give_back({"ocr": 0, "crawl": 2})
    assert room.reserve_one("crawl", ["crawl"]) is True   # one running, one reserved now
    assert room.reserve_one("crawl", ["crawl"]) is False
    room.release_one("crawl")
    assert room.take(["crawl"], finishing="crawl") == {"ocr": 0, "crawl": 2}

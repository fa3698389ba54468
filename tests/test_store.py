"""The job store's contract: atomic claims, limits, fencing, recovery.

Every contract test runs against a real SQLite file and a real PostgreSQL (a fresh schema per
test, see tests/pg.py); the few about SQLite's own settings and planner run on SQLite only."""
from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from service.errors import ConcurrencyLimit, InvalidState, NotFound, QueueFull, ServiceBusy
from service.store import database
from service.store.claims import ClaimStore
from service.store.jobs import JobStore, KindPolicy, QueueBounds
from service.store.schema import jobs, metadata
from service.store.users import UserStore

BOUNDS = QueueBounds(per_user=10_000, total=100_000)
SLEEP = KindPolicy("sleep", max_attempts=2)


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = database.make_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def db_url(postgresql_or_none, sqlite_url):
    return postgresql_or_none or sqlite_url


@pytest.fixture
def engine(db_url):
    engine = database.make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = database.make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_users(sqlite_engine):
    store = UserStore(sqlite_engine)
    return [store.create(f"user{i}", "password123")["id"] for i in range(3)]


@pytest.fixture
def users(engine):
    store = UserStore(engine)
    return [store.create(f"user{i}", "password123")["id"] for i in range(3)]


def race(db_url: str, n: int, body, timeout: float = 60) -> list[str]:
    """Run ``body(i, engine)`` in n threads released at once, each with an engine of its own (as
    separate gunicorn workers or hosts have); returns what they raised."""
    barrier, errors = threading.Barrier(n), []

    def run(i):
        engine = database.make_engine(db_url)
        try:
            barrier.wait()
            body(i, engine)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(exc))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def test_wal_mode_and_pragmas(sqlite_engine):
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == database.WAL_AUTOCHECKPOINT_PAGES == 10_000


def test_concurrent_claims_never_hand_out_a_job_twice(db_url, users):
    engine = database.make_engine(db_url)
    store = JobStore(engine)
    for _ in range(200):
        store.submit(users[0], SLEEP, {}, BOUNDS)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n):
        # each thread has its own engine, like a separate gunicorn worker
        claims = ClaimStore(database.make_engine(db_url))
        while True:
            got = claims.claim(f"w{n}", 3, {"sleep": SLEEP}, 30)
            if not got:
                return
            with lock:
                claimed.extend(j["id"] for j in got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(claimed) == 200
    assert len(set(claimed)) == 200


def test_claim_order_priority_then_age(engine, users):
    store, claims = JobStore(engine), ClaimStore(engine)
    first, _ = store.submit(users[0], SLEEP, {"n": 1}, BOUNDS)
    second, _ = store.submit(users[0], SLEEP, {"n": 2}, BOUNDS)
    urgent, _ = store.submit(users[0], SLEEP, {"n": 3}, BOUNDS, priority=5)
    order = [j["id"] for j in claims.claim("w", 3, {"sleep": SLEEP}, 30)]
    assert order == [urgent["id"], first["id"], second["id"]]


def test_per_user_running_limit_waits_in_queue(engine, users):
    store, claims = JobStore(engine), ClaimStore(engine)
    policy = KindPolicy("sleep", per_user_limit=1)
    a1, _ = store.submit(users[0], policy, {}, BOUNDS)
    store.submit(users[0], policy, {}, BOUNDS)
    b1, _ = store.submit(users[1], policy, {}, BOUNDS)
    got = claims.claim("w", 10, {"sleep": policy}, 30)
    # user0's second job waits; user1 is not held up by user0's backlog
    assert sorted(j["id"] for j in got) == sorted([a1["id"], b1["id"]])
    assert claims.claim("w", 10, {"sleep": policy}, 30) == []
    claims.finish(a1["id"], got[0]["run_token"] if got[0]["id"] == a1["id"] else got[1]["run_token"],
                  __import__("service.engine.status", fromlist=["JobStatus"]).JobStatus.SUCCEEDED)
    assert len(claims.claim("w", 10, {"sleep": policy}, 30)) == 1


def test_global_limit_across_claimers(engine, users):
    store, claims = JobStore(engine), ClaimStore(engine)
    policy = KindPolicy("sleep", global_limit=2)
    for u in users:
        store.submit(u, policy, {}, BOUNDS)
        store.submit(u, policy, {}, BOUNDS)
    assert len(claims.claim("w1", 5, {"sleep": policy}, 30)) == 2
    assert claims.claim("w2", 5, {"sleep": policy}, 30) == []


@pytest.mark.parametrize("limit, running_before, expected_limited", [(2, 0, 2), (2, 1, 1), (1, 1, 0)])
def test_limits_hold_when_unlimited_jobs_are_claimed_first_in_the_same_claim(engine, users, limit, running_before,
                                                                            expected_limited):
    """On SQLite the running jobs are counted only when a limited kind's job comes up: the count
    must see what this claim took before it (the jobs claimed in the same transaction) exactly
    once, and what was running already."""
    store, claims = JobStore(engine), ClaimStore(engine)
    limited = KindPolicy("limited", global_limit=limit)
    policies = {"sleep": SLEEP, "limited": limited}
    for _ in range(running_before):
        store.submit(users[0], limited, {}, BOUNDS)
        assert len(claims.claim("w0", 1, {"limited": limited}, 30)) == 1
    store.submit(users[0], SLEEP, {}, BOUNDS)
    store.submit(users[1], SLEEP, {}, BOUNDS)
    for u in users:
        store.submit(u, limited, {}, BOUNDS)
    got = claims.claim("w1", 10, policies, 30)
    kinds = [j["kind"] for j in got]
    assert kinds.count("sleep") == 2 and kinds.count("limited") == expected_limited, kinds
    with engine.connect() as conn:
        running = conn.exec_driver_sql("SELECT count(*) FROM jobs WHERE kind = 'limited' AND status = 'running'")
        assert running.scalar_one() == running_before + expected_limited <= limit


def test_refuse_mode_limit_is_atomic_under_racing_submits(db_url, users):
    policy = KindPolicy("crawlish", per_user_limit=1, over_limit="refuse")
    results = []

    def submit(_i, engine):
        try:
            JobStore(engine).submit(users[0], policy, {}, BOUNDS)
            results.append("ok")
        except ConcurrencyLimit:
            results.append("refused")

    assert race(db_url, 8, submit, timeout=30) == []
    assert sorted(results) == ["ok"] + ["refused"] * 7


def test_queue_bounds(engine, users):
    store = JobStore(engine)
    small = QueueBounds(per_user=2, total=3, retry_after=7)
    store.submit(users[0], SLEEP, {}, small)
    store.submit(users[0], SLEEP, {}, small)
    with pytest.raises(QueueFull) as err:
        store.submit(users[0], SLEEP, {}, small)
    assert err.value.retry_after == 7
    store.submit(users[1], SLEEP, {}, small)
    with pytest.raises(ServiceBusy):
        store.submit(users[2], SLEEP, {}, small)


def test_idempotency_key_returns_same_job_even_when_racing(db_url, users):
    ids = []

    def submit(_i, engine):
        job, _ = JobStore(engine).submit(users[0], SLEEP, {}, BOUNDS, idempotency_key="k-1")
        ids.append(job["id"])

    assert race(db_url, 6, submit, timeout=30) == []
    assert len(ids) == 6 and len(set(ids)) == 1
    # the same key from another user is another job
    other, created = JobStore(database.make_engine(db_url)).submit(users[1], SLEEP, {}, BOUNDS, idempotency_key="k-1")
    assert created and other["id"] != ids[0]


def test_stale_execution_cannot_write_after_takeover(engine, users):
    from service.engine.status import JobStatus
    clock = [1000.0]
    store, claims = JobStore(engine, clock=lambda: clock[0]), ClaimStore(engine, clock=lambda: clock[0])
    job, _ = store.submit(users[0], SLEEP, {}, BOUNDS)
    old = claims.claim("w1", 1, {"sleep": SLEEP}, lease_seconds=10)[0]
    clock[0] += 11  # w1 stops heartbeating: its lease expires
    requeued, abandoned = claims.sweep()
    assert requeued == [job["id"]] and abandoned == []
    new = claims.claim("w2", 1, {"sleep": SLEEP}, lease_seconds=10)[0]
    assert new["attempt"] == 2 and new["run_token"] != old["run_token"]
    # the old execution wakes up: every write is refused
    assert claims.progress(job["id"], old["run_token"], 50, "late") is False
    assert claims.renew({job["id"]: old["run_token"]}, 10) == {job["id"]}
    assert claims.finish(job["id"], old["run_token"], JobStatus.SUCCEEDED, result={"x": 1}) is False
    assert claims.finish(job["id"], new["run_token"], JobStatus.SUCCEEDED, result={"x": 2}) is True
    assert store.get(job["id"], None)["result"] == {"x": 2}


def test_sweep_abandons_after_max_attempts(engine, users):
    clock = [1000.0]
    store, claims = JobStore(engine, clock=lambda: clock[0]), ClaimStore(engine, clock=lambda: clock[0])
    job, _ = store.submit(users[0], SLEEP, {}, BOUNDS)  # max_attempts=2
    for _ in range(2):
        assert claims.claim("w", 1, {"sleep": SLEEP}, lease_seconds=5)
        clock[0] += 6
        claims.sweep()
    final = store.get(job["id"], None)
    assert final["status"] == "failed" and final["error_code"] == "ABANDONED"


@pytest.mark.parametrize("attempts_left", [True, False])
def test_sweep_recovers_only_what_it_changed(engine, users, attempts_left):
    """The worker finishes the job between the sweep's SELECT of expired leases and its UPDATE
    (possible on PostgreSQL, where the SELECT locks no row): the sweep must neither log a
    recovery nor report the job as requeued or ABANDONED (the caller would delete its files)."""
    from service.engine.status import JobStatus
    from service.store import job_logs
    clock = [1000.0]
    store, claims = JobStore(engine, clock=lambda: clock[0]), ClaimStore(engine, clock=lambda: clock[0])
    job, _ = store.submit(users[0], SLEEP, {}, BOUNDS)  # max_attempts=2
    if not attempts_left:  # a first attempt lost, so this is the last one
        claims.claim("w0", 1, {"sleep": SLEEP}, lease_seconds=5)
        clock[0] += 6
        assert claims.sweep()[0] == [job["id"]]
    run = claims.claim("w1", 1, {"sleep": SLEEP}, lease_seconds=5)[0]
    clock[0] += 6
    finished = []

    def finish_first(conn, cursor, statement, parameters, context, executemany):
        # runs in the sweep's own transaction, just before its UPDATE: the row it read is stale
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not finished:
            finished.append(True)
            conn.execute(jobs.update().where(jobs.c.id == job["id"]).values(
                status=JobStatus.SUCCEEDED.value, run_token=None, lease_owner=None, lease_expires_at=None,
                finished_at=clock[0], updated_at=clock[0]))
    sa.event.listen(engine, "before_cursor_execute", finish_first)
    try:
        assert claims.sweep() == ([], [])
    finally:
        sa.event.remove(engine, "before_cursor_execute", finish_first)
    assert finished and store.get(job["id"], None)["status"] == "succeeded"
    lines = [line["message"] for line in job_logs.JobLogStore(engine).read(job["id"], after=0, tail=100)[0]]
    assert sum("requeued" in m or "ABANDONED" in m for m in lines) == (0 if attempts_left else 1), lines
    assert run["run_token"]


def test_requeue_with_refund_keeps_attempts(engine, users):
    store, claims = JobStore(engine), ClaimStore(engine)
    job, _ = store.submit(users[0], SLEEP, {}, BOUNDS)
    run = claims.claim("w", 1, {"sleep": SLEEP}, 30)[0]
    assert claims.requeue(job["id"], run["run_token"], run_after=time.time(), refund_attempt=True)
    assert store.get(job["id"], None)["attempt"] == 0


def test_owner_scoping_and_state_errors(engine, users):
    store, claims = JobStore(engine), ClaimStore(engine)
    job, _ = store.submit(users[0], SLEEP, {}, BOUNDS)
    with pytest.raises(NotFound):
        store.get(job["id"], users[1])
    with pytest.raises(NotFound):
        store.request_cancel(job["id"], users[1])
    with pytest.raises(NotFound):
        store.delete(job["id"], users[1])
    assert store.get(job["id"], None)["id"] == job["id"]  # admin scope
    with pytest.raises(InvalidState):
        store.retry(job["id"], users[0])  # queued jobs cannot be retried
    claims.claim("w", 1, {"sleep": SLEEP}, 30)
    with pytest.raises(InvalidState):
        store.delete(job["id"], users[0])  # running: cancel first
    assert store.request_cancel(job["id"], users[0])["cancel_requested"]


def test_queue_position(engine, users):
    store = JobStore(engine)
    made = [store.submit(users[i % 3], SLEEP, {}, BOUNDS)[0] for i in range(5)]
    assert [store.queue_position(j) for j in made] == [1, 2, 3, 4, 5]


def test_claim_query_uses_the_index_with_a_million_finished_jobs(sqlite_engine, sqlite_users):
    """The claim reads only queued rows: the plan must search the claim index, not scan."""
    engine, users = sqlite_engine, sqlite_users
    now = time.time()
    rows = [dict(id=f"{i:036d}", owner_id=users[0], kind="sleep", params={}, status="succeeded",
                 priority=0, progress=100.0, attempt=1, max_attempts=3, run_after=now,
                 cancel_requested=False, created_at=now - i, updated_at=now) for i in range(1_000_000)]
    with engine.begin() as conn:
        for start in range(0, len(rows), 50_000):
            conn.execute(jobs.insert(), rows[start:start + 50_000])
        conn.exec_driver_sql("ANALYZE")
    store, claims = JobStore(engine), ClaimStore(engine)
    job, _ = store.submit(users[1], SLEEP, {}, BOUNDS)
    query, params = ClaimStore._next_query(time.time(), {"sleep": SLEEP}, {}, {})
    with engine.connect() as conn:
        plan = " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}", params))
    # walking the partial index (queued rows only) in claim order is the point; a table scan
    # or a sort of all rows is what must not happen
    assert "USING INDEX ix_jobs_queued" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    started = time.perf_counter()
    got = claims.claim("w", 1, {"sleep": SLEEP}, 30)
    assert [j["id"] for j in got] == [job["id"]]
    assert store.queue_position(store.get(job["id"], None)) is None
    # not a timing assertion: recorded for the reader of a failure
    print(f"claim with 1M finished jobs: {1000 * (time.perf_counter() - started):.1f} ms")


def test_fresh_database_gets_planner_stats_that_pick_the_partial_indexes(sqlite_engine, sqlite_users):
    """Before any ANALYZE, SQLite guessed wrong (the claim walked every finished job of the
    kind). ensure_planner_stats gives it steady-state estimates."""
    engine, users = sqlite_engine, sqlite_users
    from service.store.planner import ensure_planner_stats
    assert ensure_planner_stats(engine) is True
    assert ensure_planner_stats(engine) is False  # only once
    now = time.time()
    rows = [dict(id=f"{i:036d}", owner_id=users[i % 3], kind="sleep", params={},
                 status="queued" if i < 2000 else "succeeded", priority=0, progress=0.0, attempt=1,
                 max_attempts=3, run_after=now, cancel_requested=False, created_at=now + i, updated_at=now)
            for i in range(22_000)]
    with engine.begin() as conn:
        conn.execute(jobs.insert(), rows)
    fresh = database.make_engine(str(engine.url))  # statistics load when a connection opens

    def plan(query) -> str:
        sql, params = query if isinstance(query, tuple) else (query.compile(
            fresh, compile_kwargs={"literal_binds": True}), {})
        with fresh.connect() as conn:
            return " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))

    claim = plan(ClaimStore._next_query(now, {"sleep": SLEEP}, {}, {}))
    assert "ix_jobs_queued" in claim and "TEMP B-TREE" not in claim, claim
    # the submit's two bounds, one statement: both counts read the queued rows' partial index
    from service.store.jobs import _COUNT_QUEUED_MINE_AND_ALL
    bounds = plan((_COUNT_QUEUED_MINE_AND_ALL, {"owner": users[0]}))
    assert "SEARCH jobs USING INDEX ix_jobs_queued_owner (owner_id=?)" in bounds, bounds
    assert bounds.count("ix_jobs_queued") == 2 and "SCAN jobs " not in bounds.replace(
        "SCAN jobs USING INDEX ix_jobs_queued", ""), bounds
    listing = plan(sa.select(jobs).where(jobs.c.owner_id == users[0]).order_by(jobs.c.created_at.desc()).limit(20))
    assert "ix_jobs_owner_created" in listing and "TEMP B-TREE" not in listing, listing
    fresh.dispose()


def test_a_burst_of_50_writers_never_sees_database_is_locked(db_url, users):
    """50 threads, each with its own engine (like separate processes), submit and claim at
    once: every write waits its turn; none fails with "database is locked"."""
    done = []

    def writer(n, engine):
        store, claims = JobStore(engine), ClaimStore(engine)
        for _ in range(4):
            store.submit(users[n % 3], SLEEP, {"n": n}, BOUNDS)
            claims.claim(f"w{n}", 1, {"sleep": SLEEP}, 30)
        done.append(n)

    errors = race(db_url, 50, writer, timeout=120)
    assert errors == [] and len(done) == 50
    check = database.make_engine(db_url)
    if check.dialect.name == "postgresql":
        # SKIP LOCKED: a claim that found every queued row locked by other claimers takes
        # nothing (the dispatcher polls again); drain what is left, nothing may be lost
        claims = ClaimStore(check)
        while claims.claim("drain", 10, {"sleep": SLEEP}, 30):
            pass
    assert JobStore(check).counts(None)["sleep"] == {"running": 200}
    check.dispose()


def test_racing_claimers_never_break_running_limits(db_url, users):
    """Claimers in separate engines race (on PostgreSQL without a global lock: SKIP LOCKED rows,
    a recount under the kind's advisory lock); the limits hold however the race goes."""
    policy = KindPolicy("sleep", per_user_limit=1, global_limit=2)
    setup = database.make_engine(db_url)
    store = JobStore(setup)
    for i in range(30):
        store.submit(users[i % 3], policy, {}, BOUNDS)
    claimed = []

    def claimer(n, engine):
        for _ in range(5):
            claimed.extend(ClaimStore(engine).claim(f"w{n}", 2, {"sleep": policy}, 30))

    assert race(db_url, 6, claimer) == []
    assert len(claimed) == 2 and len({j["owner_id"] for j in claimed}) == 2
    with database.read(setup) as conn:
        running = conn.execute(sa.text("SELECT owner_id FROM jobs WHERE status = 'running'")).scalars().all()
    assert sorted(running) == sorted(j["owner_id"] for j in claimed)
    setup.dispose()


def test_first_finishes_of_a_kind_at_once_both_record(db_url, users):
    """The run-time average's row is created by whichever finish comes first; two at once must
    not fail either finish (on PostgreSQL nothing else serialises them)."""
    from service.engine.status import JobStatus
    setup = database.make_engine(db_url)
    store, claims = JobStore(setup), ClaimStore(setup)
    for round_ in range(10):
        kind = f"fresh{round_}"
        policy = KindPolicy(kind)
        for _ in range(2):
            store.submit(users[0], policy, {}, BOUNDS)
        running = claims.claim("w", 2, {kind: policy}, 30)
        results = []

        def finish(i, engine, running=running, kind=kind):
            job = running[i]
            results.append(ClaimStore(engine).finish(job["id"], job["run_token"], JobStatus.SUCCEEDED,
                                                     result={}, duration=0.5, kind=kind, message="done"))

        assert race(db_url, 2, finish, timeout=30) == []
        assert results == [True, True]
        with database.read(setup) as conn:
            samples = conn.execute(sa.text("SELECT samples FROM kind_stats WHERE kind = :k"), {"k": kind}).scalar()
        assert samples == 2
    setup.dispose()

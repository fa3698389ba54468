"""Group commit of SQLite writes (service/store/write_group.py, rawsql.write): the writes waiting
in one process share a transaction, and each caller still sees exactly its own outcome."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from service.store import database, rawsql
from service.store.write_group import WriteGroup


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


# -- the group on its own (a recording commit function) -----------------------------------------
class Recorder:
    """commit_batch for WriteGroup: runs the requests, records each batch; the first call can be
    held back to make the others queue."""

    def __init__(self, hold_first: bool = False):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first

    def __call__(self, take):
        self.entered.set()
        if self.hold_first and not self.batches:
            assert self.release.wait(5)
        requests = take()
        self.batches.append([r.fn.__name__ for r in requests])
        for r in requests:
            try:
                r.result = r.fn()
            except Exception as exc:
                r.error = exc
            r.done = True
        return requests


def _named(name, result=None, error=None):
    def fn():
        if error is not None:
            raise error
        return result if result is not None else name
    fn.__name__ = name
    return fn


def _run_all(requests):
    """What a commit function does for requests that all succeed."""
    for r in requests:
        r.result, r.done = r.fn(), True
    return requests


def _in_thread(group, fn, out, key):
    def target():
        try:
            out[key] = ("ok", group.run(fn))
        except BaseException as exc:  # noqa: BLE001 - the test inspects what each caller got
            out[key] = ("error", exc)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def test_writes_that_queue_behind_the_leader_share_its_next_transaction_in_order():
    rec = Recorder(hold_first=True)
    group = WriteGroup(rec, wait_limit=5)
    out = {}
    threads = [_in_thread(group, _named("a"), out, "a")]
    assert rec.entered.wait(5)   # "a" leads and waits for the lock
    for name in "bcd":
        threads.append(_in_thread(group, _named(name), out, name))
        _wait_for(lambda n=name: any(r.fn.__name__ == n for r in group._pending))
    rec.release.set()
    for t in threads:
        t.join(5)
    # the leader takes the waiting writes only once it holds the lock: all four in one go
    assert rec.batches == [["a", "b", "c", "d"]]
    assert out == {n: ("ok", n) for n in "abcd"}
    assert group.stats == {"transactions": 1, "writes": 4}


def test_each_caller_gets_its_own_error_and_the_others_their_results():
    rec = Recorder(hold_first=True)
    group = WriteGroup(rec, wait_limit=5)
    out = {}
    threads = [_in_thread(group, _named("a"), out, "a")]
    assert rec.entered.wait(5)
    threads.append(_in_thread(group, _named("b", error=ValueError("b's own")), out, "b"))
    _wait_for(lambda: len(group._pending) == 2)
    threads.append(_in_thread(group, _named("c"), out, "c"))
    _wait_for(lambda: len(group._pending) == 3)
    rec.release.set()
    for t in threads:
        t.join(5)
    assert out["a"] == ("ok", "a") and out["c"] == ("ok", "c")
    assert out["b"][0] == "error" and str(out["b"][1]) == "b's own"


def test_the_lead_passes_to_a_writer_that_arrived_during_the_leaders_transaction():
    started, release = threading.Event(), threading.Event()
    batches = []

    def commit(take):
        requests = take()
        batches.append(len(requests))
        if len(batches) == 1:
            started.set()
            assert release.wait(5)   # "b" arrives while "a"'s transaction runs
        return _run_all(requests)
    group = WriteGroup(commit, wait_limit=5)
    out = {}
    a = _in_thread(group, _named("a"), out, "a")
    assert started.wait(5)
    b = _in_thread(group, _named("b"), out, "b")
    _wait_for(lambda: len(group._pending) == 1)
    release.set()
    a.join(5)
    b.join(5)
    assert batches == [1, 1] and out == {"a": ("ok", "a"), "b": ("ok", "b")}
    assert not group._leading and not group._pending


def test_an_interrupt_in_the_leader_reaches_every_write_of_its_batch_and_nobody_hangs():
    calls = []

    def commit(take):
        requests = take()
        calls.append(len(requests))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return _run_all(requests)
    group = WriteGroup(commit, wait_limit=5)
    with pytest.raises(KeyboardInterrupt):
        group.run(_named("a"))
    assert group.run(_named("b")) == "b"   # the group is usable again
    assert not group._leading


def test_a_writer_behind_a_stuck_leader_goes_alone_after_the_wait_limit():
    release = threading.Event()
    alone = []

    def commit(take):
        requests = take()
        if requests[0].fn.__name__ == "stuck":
            assert release.wait(10)
        else:
            alone.append([r.fn.__name__ for r in requests])
        return _run_all(requests)
    group = WriteGroup(commit, wait_limit=0.2)
    out = {}
    stuck = _in_thread(group, _named("stuck"), out, "stuck")
    _wait_for(lambda: group._taken)
    began = time.monotonic()
    assert group.run(_named("late")) == "late"
    assert 0.15 < time.monotonic() - began < 3
    assert alone == [["late"]]
    release.set()
    stuck.join(5)
    assert out["stuck"] == ("ok", "stuck")


# -- on a real SQLite file through rawsql.write ---------------------------------------------------
@pytest.fixture
def engine(tmp_path):
    engine = database.make_engine(f"sqlite:///{tmp_path / 'group.db'}")
    database.write(engine, lambda c: c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)"))
    database.write(engine, lambda c: c.exec_driver_sql("INSERT INTO t VALUES ('counter', 0)"))
    yield engine
    engine.dispose()


def _rows(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql("SELECT k, n FROM t").all())


def _queue_writes_behind_a_held_turn(engine, fns: dict) -> dict:
    """Hold this process's turn while the writes start, so they queue in one group, in the
    order given; then let them run. Returns what each caller got."""
    group = rawsql._group_for(engine)
    out, threads, held, release = {}, [], threading.Event(), threading.Event()

    def hold():
        with database.writer_turn(engine):
            held.set()
            release.wait(10)
    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    for i, (key, fn) in enumerate(fns.items()):
        def target(key=key, fn=fn):
            try:
                out[key] = ("ok", rawsql.write(engine, fn))
            except Exception as exc:  # noqa: BLE001
                out[key] = ("error", exc)
        threads.append(threading.Thread(target=target, daemon=True))
        threads[-1].start()
        _wait_for(lambda n=i + 1: len(group._pending) == n)
    release.set()
    for t in threads + [holder]:
        t.join(10)
    return out


def test_a_failing_write_in_a_shared_transaction_leaves_no_trace_and_the_others_commit(engine):
    def insert(key):
        return lambda tx: tx.rowcount("INSERT INTO t VALUES (:k, 1)", {"k": key})

    def insert_then_fail(tx):
        tx.rowcount("INSERT INTO t VALUES ('b', 1)")
        tx.rowcount("UPDATE t SET n = n + 100 WHERE k = 'counter'")
        raise ValueError("refused after writing")
    before = rawsql._group_for(engine).stats["transactions"]
    out = _queue_writes_behind_a_held_turn(engine, {"a": insert("a"), "b": insert_then_fail, "c": insert("c")})
    assert out["a"] == ("ok", 1) and out["c"] == ("ok", 1)
    assert out["b"][0] == "error" and isinstance(out["b"][1], ValueError)
    assert _rows(engine) == {"counter": 0, "a": 1, "c": 1}
    assert rawsql._group_for(engine).stats["transactions"] - before == 1


def test_a_lock_error_inside_a_batch_runs_the_whole_batch_again(engine):
    tries = []

    def bump(tx):
        tx.rowcount("UPDATE t SET n = n + 1 WHERE k = 'counter'")

    def busy_once(tx):
        tx.rowcount("UPDATE t SET n = n + 10 WHERE k = 'counter'")
        tries.append(1)
        if len(tries) == 1:
            raise sqlite3.OperationalError("database is locked")
    out = _queue_writes_behind_a_held_turn(engine, {"a": bump, "b": busy_once, "c": bump})
    assert [v[0] for v in out.values()] == ["ok", "ok", "ok"]
    assert _rows(engine)["counter"] == 12   # the first, rolled-back try left nothing
    assert len(tries) == 2


def test_a_commit_that_fails_fails_every_write_of_its_batch(engine):
    """A deferred foreign key is checked at COMMIT: no caller may be told its write was kept."""
    database.write(engine, lambda c: c.exec_driver_sql(
        "CREATE TABLE child (id INTEGER, parent TEXT REFERENCES t(k) DEFERRABLE INITIALLY DEFERRED)"))

    def ok(tx):
        return tx.rowcount("INSERT INTO t VALUES ('kept?', 1)")

    def orphan(tx):
        return tx.rowcount("INSERT INTO child VALUES (1, 'no such parent')")
    out = _queue_writes_behind_a_held_turn(engine, {"a": ok, "b": orphan})
    assert out["a"][0] == "error" and out["b"][0] == "error"
    assert "FOREIGN KEY" in str(out["a"][1])
    assert "kept?" not in _rows(engine)


def test_a_write_after_which_sqlite_rolled_back_the_whole_transaction_fails_the_batch_with_its_error(engine):
    """SQLite rolls a whole transaction back on some errors (a full disk, an I/O error): the
    batch cannot go on past that write, and nothing of it may be half kept."""
    def ok(tx):
        return tx.rowcount("INSERT INTO t VALUES ('kept?', 1)")

    def lost_transaction(tx):
        tx.dbapi.execute("ROLLBACK")   # what SQLite does by itself on such an error
        raise sqlite3.OperationalError("database or disk is full")
    out = _queue_writes_behind_a_held_turn(engine, {"a": ok, "b": lost_transaction})
    assert [v[0] for v in out.values()] == ["error", "error"]
    assert all("disk is full" in str(v[1]) for v in out.values())
    assert "kept?" not in _rows(engine)
    assert rawsql.write(engine, ok) == 1   # and the next write works


def test_many_threads_lose_no_update_and_share_transactions(engine):
    group = rawsql._group_for(engine)
    before = dict(group.stats)

    def increment(tx):   # read, then write: a lost update would show in the total
        n = tx.scalar("SELECT n FROM t WHERE k = 'counter'")
        tx.rowcount("UPDATE t SET n = :n WHERE k = 'counter'", {"n": n + 1})
    threads = [threading.Thread(target=lambda: [rawsql.write(engine, increment) for _ in range(150)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert _rows(engine)["counter"] == 1200
    assert group.stats["writes"] - before["writes"] == 1200
    assert group.stats["transactions"] - before["transactions"] < 1200


def test_a_write_nested_in_a_write_fails_instead_of_waiting_for_itself(engine, monkeypatch):
    monkeypatch.setattr(database, "LOCK_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(database, "WRITE_RETRIES", 1)
    other = database.make_engine(str(engine.url))   # a second engine on the same file
    outcome = []

    def nested():
        try:
            rawsql.write(engine, lambda tx: rawsql.write(other, lambda t2: t2.rowcount("DELETE FROM t")))
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and outcome and "locked" in outcome[0]
    assert _rows(engine)["counter"] == 0
    other.dispose()


def test_a_forked_child_writes_through_a_group_of_its_own(engine):
    """gunicorn forks workers from a master that may have written already (preload): a child
    must not inherit the parent's group, whose state belongs to the parent's threads."""
    import multiprocessing
    rawsql.write(engine, lambda tx: tx.rowcount("UPDATE t SET n = 1 WHERE k = 'counter'"))
    parent_group = rawsql._group_for(engine)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child():
        rawsql.write(engine, lambda tx: tx.rowcount("UPDATE t SET n = n + 1 WHERE k = 'counter'"))
        out.put(rawsql._group_for(engine) is not parent_group and rawsql._group_for(engine).stats["writes"])
    p = ctx.Process(target=child)
    p.start()
    assert out.get(timeout=20) == 1
    p.join(10)
    assert p.exitcode == 0
    assert _rows(engine)["counter"] == 2

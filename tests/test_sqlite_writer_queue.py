"""SQLite writers take turns on a file lock (service/store/database.py, WriterQueue) instead of
retrying BEGIN IMMEDIATE: real processes on a real database file."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from service.store import database, rawsql

WRITERS, WRITES = 3, 150


def _setup(url: str) -> None:
    engine = database.make_engine(url)
    database.write(engine, lambda conn: conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS counter (n INTEGER)"))
    database.write(engine, lambda conn: conn.exec_driver_sql("INSERT INTO counter VALUES (0)"))
    # a rawsql write too, so the parent's write group exists before the children fork: each
    # child must start a group (and a lock descriptor) of its own
    rawsql.write(engine, lambda tx: tx.rowcount("UPDATE counter SET n = 0"))
    engine.dispose()


def _writer(url: str, queued: bool, start, out) -> None:
    """Increment the counter WRITES times, read-then-write in one transaction (a lost update
    would show in the total), half through rawsql, half through SQLAlchemy."""
    if not queued:
        database._queue_for = lambda engine: None
    engine = database.make_engine(url)
    database.lock_stats["begin_retries"] = 0   # the fork copied the parent's count from earlier tests
    start.wait(10)

    def raw(tx):
        n = tx.scalar("SELECT n FROM counter")
        tx.execute("UPDATE counter SET n = :n", {"n": n + 1}).close()

    def core(conn):
        n = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
        conn.exec_driver_sql(f"UPDATE counter SET n = {n + 1}")
    for i in range(WRITES):
        rawsql.write(engine, raw) if i % 2 else database.write(engine, core)
    out.put(database.lock_stats["begin_retries"])


def _race(url: str, queued: bool) -> tuple[int, int]:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, queued, start, out)) for _ in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    retries = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    engine = database.make_engine(url)
    with engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
    engine.dispose()
    return total, retries


def test_writers_of_several_processes_take_turns_without_failed_tries(tmp_path):
    url = f"sqlite:///{tmp_path / 'queued.db'}"
    _setup(url)
    # the parent has written (and so opened its descriptor) before forking: each child must
    # take turns on a descriptor of its own, or the children would share one lock
    total, retries = _race(url, queued=True)
    assert total == WRITERS * WRITES
    assert retries == 0
    assert (tmp_path / "queued.db-writers.lock").exists()


def test_without_the_queue_the_same_race_retries(tmp_path):
    """The control: what the queue saves (and proof the race above is a race)."""
    url = f"sqlite:///{tmp_path / 'unqueued.db'}"
    _setup(url)
    total, retries = _race(url, queued=False)
    assert total == WRITERS * WRITES
    assert retries > 0


def _hold_turn(url: str, held) -> None:
    engine = database.make_engine(url)
    with database.writer_turn(engine):
        held.set()
        time.sleep(60)


def test_a_killed_holder_does_not_keep_the_turn(tmp_path):
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    _setup(url)
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_turn, args=(url, held))
    holder.start()
    try:
        assert held.wait(10)
        engine = database.make_engine(url)
        done = threading.Event()
        threading.Thread(target=lambda: (database.write(engine, lambda c: c.exec_driver_sql(
            "UPDATE counter SET n = 7")), done.set()), daemon=True).start()
        assert not done.wait(0.5)              # waiting its turn behind the holder
        os.kill(holder.pid, signal.SIGKILL)
        assert done.wait(5)                    # the kernel dropped the dead process's lock
    finally:
        holder.kill()
        holder.join(5)


def test_a_write_inside_a_write_of_the_same_thread_fails_instead_of_waiting_for_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "LOCK_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(database, "WRITE_RETRIES", 1)
    url = f"sqlite:///{tmp_path / 'nested.db'}"
    _setup(url)
    outer, inner = database.make_engine(url), database.make_engine(url)   # two engines, one file
    outcome = []

    def nested():
        try:
            rawsql.write(outer, lambda tx: database.write(inner, lambda c: c.exec_driver_sql("DELETE FROM counter")))
        except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:  # raised in the begin event: unwrapped
            outcome.append(str(exc))
    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and outcome and "locked" in outcome[0]


def test_threads_of_one_process_take_turns(tmp_path):
    url = f"sqlite:///{tmp_path / 'threads.db'}"
    _setup(url)
    engine = database.make_engine(url)
    before = database.lock_stats["begin_retries"]

    def bump(tx):
        tx.execute("UPDATE counter SET n = n + 1").close()
    threads = [threading.Thread(target=lambda: [rawsql.write(engine, bump) for _ in range(100)]) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 600
    assert database.lock_stats["begin_retries"] == before


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_no_queue_for_an_in_memory_database(url):
    assert database._queue_for(sa.create_engine(url)) is None


def test_no_lock_file_no_queue(tmp_path, monkeypatch):
    """A database whose folder takes no new file still works: writers retry on SQLite's lock."""
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(database.os, "open", refuse)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = database.make_engine(url)
    assert database._queue_for(engine) is None
    database.write(engine, lambda conn: conn.exec_driver_sql("CREATE TABLE t (x)"))
    rawsql.write(engine, lambda tx: tx.execute("INSERT INTO t VALUES (1)").close())
    assert not (tmp_path / "x.db-writers.lock").exists()

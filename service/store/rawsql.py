"""Hot-path SQL straight on the pooled DB-API connection.

Why: a job costs a handful of statements (the token check and the insert on submit; the
claim, the finish and the next claim on the worker), and going through SQLAlchemy's
Connection — events, compiled-cache lookup, result proxy — cost 5–10× the statement itself
(measured: 137 µs against 19 µs for a one-row UPDATE transaction on SQLite; 198 µs against
23 µs for a one-row read). These few statements therefore run here, on the same pooled
connections, the same lock handling (database._begin_immediate) and the same retry rules as
database.write(). Everything else keeps using SQLAlchemy Core.

SQL is written once with ``:name`` parameters (sqlite3's own style) and rewritten to
``%(name)s`` for psycopg. JSON columns go in through ``Tx.json()`` and come out decoded.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import time

import sqlalchemy as sa

from service.store import database
from service.store.write_group import WriteGroup

log = logging.getLogger(__name__)

JSON_COLUMNS = frozenset({"params", "result"})
BOOL_COLUMNS = frozenset({"cancel_requested", "is_active"})
_NAMED = re.compile(r"(?<!:):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


class Tx:
    """One transaction on a raw connection; rows come back as dicts of the job/user shape
    SQLAlchemy would give (JSON decoded, booleans as bool)."""

    def __init__(self, dbapi_conn, sqlite: bool):
        self.dbapi = dbapi_conn
        self.sqlite = sqlite

    def execute(self, sql: str, params: dict | None = None):
        cur = self.dbapi.cursor()
        cur.execute(sql if self.sqlite else _pyformat(sql), params or {})
        return cur

    def executemany(self, sql: str, rows: list[dict]) -> None:
        cur = self.dbapi.cursor()
        cur.executemany(sql if self.sqlite else _pyformat(sql), rows)
        cur.close()

    def rowcount(self, sql: str, params: dict | None = None) -> int:
        cur = self.execute(sql, params)
        n = cur.rowcount
        cur.close()
        return n

    def fetchall(self, sql: str, params: dict | None = None) -> list[tuple]:
        cur = self.execute(sql, params)
        rows = cur.fetchall()
        cur.close()
        return rows

    def scalar(self, sql: str, params: dict | None = None):
        cur = self.execute(sql, params)
        row = cur.fetchone()
        cur.close()
        return None if row is None else row[0]

    def rows(self, sql: str, params: dict | None = None) -> list[dict]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        out = [self._decode(dict(zip(names, r))) for r in cur.fetchall()]
        cur.close()
        return out

    def first(self, sql: str, params: dict | None = None) -> dict | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def json(self, value):
        """A JSON column's parameter (SQLAlchemy's JSON type stores None as 'null' too)."""
        if self.sqlite:
            return json.dumps(value)
        from psycopg.types.json import Json
        return Json(value)

    def pg_lock(self, key: int) -> None:
        """Serialise a critical section across hosts on PostgreSQL (see jobs.pg_lock)."""
        if not self.sqlite:
            self.execute("SELECT pg_advisory_xact_lock(:k)", {"k": key}).close()

    @staticmethod
    def _decode(row: dict) -> dict:
        for key in JSON_COLUMNS & row.keys():
            if isinstance(row[key], str):
                row[key] = json.loads(row[key])
        for key in BOOL_COLUMNS & row.keys():
            if row[key] is not None:
                row[key] = bool(row[key])
        return row


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text or "could not serialize" in text


def _set_busy_timeout(fairy, dbapi, ms: int) -> None:
    # the same bookkeeping as database._on_begin, on the same per-connection info dict
    if fairy.info.get("busy_timeout") != ms:
        dbapi.execute(f"PRAGMA busy_timeout={ms}")
        fairy.info["busy_timeout"] = ms


def write(engine: sa.Engine, fn, *args, **kwargs):
    """Run ``fn(tx, *args, **kwargs)`` in a write transaction, retrying lock errors like
    database.write(); ``fn`` must be safe to re-run from the start. On SQLite the writes waiting
    in this process share one transaction (write_group.py); ``fn`` must then not depend on the
    thread it runs on."""
    group = _group_for(engine)
    if group is None:
        return _write_alone(engine, fn, *args, **kwargs)
    return group.run(functools.partial(fn, *args, **kwargs) if args or kwargs else fn)


def _group_for(engine: sa.Engine) -> WriteGroup | None:
    """This process's write group for ``engine`` (SQLite with a WriterQueue), else None. None
    too inside a turn: a write nested in another fails on SQLite's lock, as it always did,
    instead of waiting for itself."""
    queue = database.writer_queue(engine)
    if queue is None or queue.held_here():
        return None
    group = engine.__dict__.get("_ilgun_write_group")
    if group is None or group[0] != os.getpid():   # a forked child starts its own
        group = engine._ilgun_write_group = (os.getpid(), WriteGroup(
            functools.partial(_commit_batch, engine), database.LOCK_WAIT_SECONDS))
    return group[1]


def _write_alone(engine: sa.Engine, fn, *args, **kwargs):
    sqlite = database.is_sqlite(engine)
    delay = 0.01
    for attempt in range(database.WRITE_RETRIES):
        fairy = engine.raw_connection()
        dbapi = fairy.dbapi_connection
        try:
            with database.writer_turn(engine):
                if sqlite:
                    _set_busy_timeout(fairy, dbapi, 0)   # writers wait in the queue and _begin_immediate
                    database._begin_immediate(dbapi)
                try:
                    out = fn(Tx(dbapi, sqlite), *args, **kwargs)
                    if sqlite:
                        dbapi.execute("COMMIT")
                    else:
                        dbapi.commit()
                    return out
                except BaseException:
                    _rollback(dbapi, sqlite)
                    raise
        except Exception as exc:
            if not _is_db_error(exc) or not _is_lock_error(exc) or attempt == database.WRITE_RETRIES - 1:
                raise
            log.warning("database busy, retrying write (%s)", exc)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        finally:
            fairy.close()
    raise AssertionError("unreachable")


class _Retry(Exception):
    """A write of the batch met a lock error: the whole batch rolls back and is tried again."""


def _commit_batch(engine: sa.Engine, take) -> None:
    """One SQLite write transaction for the requests ``take()`` hands over once the write lock
    is held (write_group), run in their order. Fills in each one's result or error; lock errors
    retry the batch like _write_alone."""
    requests = None
    delay = 0.01
    for attempt in range(database.WRITE_RETRIES):
        try:
            fairy = engine.raw_connection()
        except Exception as error:
            exc = error
        else:
            dbapi = fairy.dbapi_connection
            try:
                with database.writer_turn(engine):
                    _set_busy_timeout(fairy, dbapi, 0)
                    database._begin_immediate(dbapi)
                    if requests is None:
                        requests = take()
                    try:
                        _commit_in_turn(dbapi, requests)
                    except BaseException:
                        _rollback(dbapi, True)
                        raise
                for r in requests:
                    r.done = True
                return
            except _Retry as retry:
                exc = retry.__cause__
            except Exception as error:
                exc = error
            finally:
                fairy.close()
        if not _is_db_error(exc) or not _is_lock_error(exc) or attempt == database.WRITE_RETRIES - 1:
            requests = take() if requests is None else requests
            for r in requests:   # the transaction did not commit: every write of it failed
                r.result, r.error, r.done = None, exc, True
            return
        log.warning("database busy, retrying write (%s)", exc)
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


def _commit_in_turn(dbapi, requests: list) -> None:
    if _run_batch(dbapi, requests, savepoints=False):
        dbapi.execute("COMMIT")
    elif len(requests) > 1:
        # a write failed: undo the batch and run it again with each write in a savepoint, so
        # only the failing one is rolled back
        _rollback(dbapi, True)
        database._begin_immediate(dbapi)
        _run_batch(dbapi, requests, savepoints=True)
        dbapi.execute("COMMIT")
    else:
        _rollback(dbapi, True)   # the only write failed: nothing to keep


def _run_batch(dbapi, requests: list, savepoints: bool) -> bool:
    """Run each request's write; False (fast path) as soon as one raises."""
    tx = Tx(dbapi, True)
    for r in requests:
        r.result, r.error = None, None
        if savepoints:
            dbapi.execute("SAVEPOINT ilgun_write")
        try:
            r.result = r.fn(tx)
        except Exception as exc:
            if _is_db_error(exc) and _is_lock_error(exc):
                raise _Retry() from exc
            if not savepoints:
                r.error = exc
                return False
            if not dbapi.in_transaction:
                raise   # SQLite rolled the whole transaction back (disk full, I/O error): all fail with it
            dbapi.execute("ROLLBACK TO ilgun_write")
            r.error = exc
        if savepoints:
            dbapi.execute("RELEASE ilgun_write")
    return True


def read(engine: sa.Engine, fn, *args, **kwargs):
    """Run ``fn(tx, ...)`` for reads. On SQLite each statement is its own snapshot (no BEGIN:
    the callers here read one statement's worth). A WAL reader is almost never busy (only
    while a checkpoint resets the log); when it is, it retries in short steps, whatever busy
    timeout the pooled connection was last left with (switching it costs a statement)."""
    sqlite = database.is_sqlite(engine)
    fairy = engine.raw_connection()
    dbapi = fairy.dbapi_connection
    try:
        if not sqlite:
            try:
                return fn(Tx(dbapi, sqlite), *args, **kwargs)
            finally:
                dbapi.rollback()
        deadline = time.monotonic() + database.SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return fn(Tx(dbapi, sqlite), *args, **kwargs)
            except Exception as exc:
                if not (_is_db_error(exc) and _is_lock_error(exc)) or time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(0.0005, 0.002))
    finally:
        fairy.close()


def _rollback(dbapi, sqlite: bool) -> None:
    try:
        if sqlite:
            if dbapi.in_transaction:
                dbapi.execute("ROLLBACK")
        else:
            dbapi.rollback()
    except Exception:  # the connection is broken; the pool will find out
        log.debug("rollback failed", exc_info=True)


def _is_db_error(exc: Exception) -> bool:
    module = type(exc).__module__
    return module.startswith("sqlite3") or module.startswith("psycopg")

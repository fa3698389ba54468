"""Engine creation and transactions that survive SQLite lock contention.

Why BEGIN IMMEDIATE: a deferred SQLite transaction that reads and then writes must upgrade
its lock, and an upgrade that collides with another writer fails at once with "database is
locked" — busy_timeout does not help there. Taking the write lock up front makes every write
transaction wait its turn instead, which is what makes read-check-write (claims, limits,
idempotency) atomic across gunicorn workers.
"""
from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
WRITE_RETRIES = 8
# Waiting for SQLite's write lock. SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms
# between tries, so under contention from several processes a writer oversleeps the lock by
# tens of milliseconds and the lock sits idle: the job engine measured 85–95 % of its time
# there. Write transactions therefore start with busy_timeout=0 and wait here in short,
# jittered steps instead.
LOCK_WAIT_SECONDS = 30.0
LOCK_STEP_MIN, LOCK_STEP_MAX = 0.0005, 0.004


def db_pool_size(config) -> int:
    """Connections one serving process may hold at once: each request thread and executor slot
    one, the claim loop and the monitor one each, plus spare (config DB_POOL_SIZE overrides)."""
    configured = int(config.get("DB_POOL_SIZE") or 0)
    if configured > 0:
        return configured
    return int(config.get("WEB_THREADS", 2)) + int(config.get("MAX_WORKERS", 2)) + 2 + 2


def make_engine(url: str, pool_size: int = 5) -> sa.Engine:
    """Create an engine for ``url`` with the settings ilgun relies on."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=pool_size + 5,
            max_overflow=20,
            pool_pre_ping=False,
        )
        _configure_sqlite(engine)
        return engine
    # PostgreSQL: the pool is the budget (see db_pool_size); a short overflow absorbs bursts
    # (a cleanup run, an admin page) without letting one process exhaust max_connections.
    return sa.create_engine(url, pool_size=pool_size, max_overflow=max(2, pool_size // 2), pool_pre_ping=True,
                            pool_timeout=30)


def _configure_sqlite(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Hand transaction control to SQLAlchemy's begin event below (pysqlite would
        # otherwise issue a deferred BEGIN of its own).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = bool(conn.get_execution_options().get("ilgun_write"))
        info = conn.connection.info
        busy = 0 if write else SQLITE_BUSY_TIMEOUT_MS  # writers wait in write(), see above
        if info.get("busy_timeout") != busy:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={busy}")
            info["busy_timeout"] = busy
        if write:
            _begin_immediate(conn.connection.dbapi_connection)
        else:
            conn.exec_driver_sql("BEGIN")


def _begin_immediate(dbapi_conn) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in short jittered steps (see
    LOCK_WAIT_SECONDS). On the raw sqlite3 connection: a failed try costs microseconds here,
    where going through SQLAlchemy's error handling and rollback cost far more CPU."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    step = LOCK_STEP_MIN
    while True:
        try:
            dbapi_conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(step * random.uniform(0.5, 1.5))
        step = min(step * 1.5, LOCK_STEP_MAX)


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _is_lock_error(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text or "could not serialize" in text


@contextlib.contextmanager
def read(engine: sa.Engine):
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def write(engine: sa.Engine, fn, *args, **kwargs):
    """Run ``fn(conn, *args, **kwargs)`` in one write transaction, retrying lock errors.

    ``fn`` must be safe to re-run from the start: it sees a fresh transaction each time.
    """
    delay = 0.01
    for attempt in range(WRITE_RETRIES):
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(ilgun_write=True)
                with conn.begin():
                    return fn(conn, *args, **kwargs)
        except OperationalError as exc:
            if not _is_lock_error(exc) or attempt == WRITE_RETRIES - 1:
                raise
            log.warning("database busy, retrying write (%s)", exc.orig)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")

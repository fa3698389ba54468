"""Engine creation and transactions that survive SQLite lock contention.

Why BEGIN IMMEDIATE: a deferred SQLite transaction that reads and then writes must upgrade
its lock, and an upgrade that collides with another writer fails at once with "database is
locked" — busy_timeout does not help there. Taking the write lock up front makes every write
transaction wait its turn instead, which is what makes read-check-write (claims, limits,
idempotency) atomic across gunicorn workers.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
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
# SQLite checkpoints the WAL into the database (two fsyncs, inside a writer's turn, every other
# writer waiting) once it holds this many pages; its default is 1000 (~4 MB). A job's submit and
# finish write ~20 pages, mostly the same hot index pages, so a checkpoint came every ~50 jobs
# and wrote those pages again each time. At 10000 (WAL up to ~40 MB) the engine benchmark's
# workers used 1.32–1.35 against 1.44–1.54 ms of CPU per job (three runs each, alternating).
WAL_AUTOCHECKPOINT_PAGES = 10_000


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
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
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
    where going through SQLAlchemy's error handling and rollback cost far more CPU. Writers
    that went through the WriterQueue almost never fail a try."""
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
            lock_stats["begin_retries"] += 1
        time.sleep(step * random.uniform(0.5, 1.5))
        step = min(step * 1.5, LOCK_STEP_MAX)


# failed BEGIN IMMEDIATE tries in this process (tests; not exact under threads)
lock_stats = {"begin_retries": 0}


class WriterQueue:
    """The writers of one SQLite file take turns on a file lock (flock) around BEGIN IMMEDIATE …
    COMMIT.

    Why: SQLite has no queue for its write lock, so writers of several gunicorn workers that
    find it taken can only retry (_begin_immediate's steps). In the engine benchmark 1.5 tries
    failed per write transaction, each an exception and a sleep, and a writer that woke found
    the lock taken again or had slept past its release: ~20 % of the workers' CPU per job. A
    writer blocked in flock is woken by the kernel as the holder lets go, with no failed try.
    (The filelock package cannot wait like this: it polls with non-blocking tries.)

    The kernel drops a dead process's flock, so a killed worker never holds up the others. The
    turn covers one short write transaction: BEGIN IMMEDIATE (itself bounded by
    LOCK_WAIT_SECONDS against writers outside the queue: alembic, the sqlite3 shell) and our
    statements. A write started by a thread inside its own turn (none does) skips the queue,
    so it fails as it always would have, on SQLite's lock, instead of waiting for itself."""

    def __init__(self, path: str):
        self.path = path
        self._thread_lock = threading.Lock()  # threads of a process queue here, then on the file
        self._local = threading.local()
        self._fd: int | None = None
        self._pid: int | None = None

    def held_here(self) -> bool:
        """True on a thread inside its turn."""
        return getattr(self._local, "holding", False)

    def _file(self) -> int:
        if self._pid != os.getpid():  # a forked child: a descriptor of its own, not the parent's
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
        return self._fd

    @contextlib.contextmanager
    def turn(self):
        if self.held_here():
            yield
            return
        if not self._thread_lock.acquire(timeout=LOCK_WAIT_SECONDS):
            yield  # a thread stuck in its turn: go on without the queue, on SQLite's own lock
            return
        try:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.holding = True
            try:
                yield
            finally:
                self._local.holding = False
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_queues: dict[str, WriterQueue] = {}
_queues_lock = threading.Lock()


def writer_turn(engine: sa.Engine):
    """A context manager holding this process's turn to write to ``engine``'s SQLite file (one
    WriterQueue per file, whichever engine opened it); a no-op on PostgreSQL, for an in-memory
    database, or where the lock file cannot be made."""
    queue = writer_queue(engine)
    return queue.turn() if queue is not None else contextlib.nullcontext()


def writer_queue(engine: sa.Engine) -> "WriterQueue | None":
    queue = engine.__dict__.get("_ilgun_writer_queue", False)
    if queue is False:
        queue = engine._ilgun_writer_queue = _queue_for(engine)
    return queue


def _queue_for(engine: sa.Engine) -> WriterQueue | None:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    lock_path = os.path.abspath(path) + "-writers.lock"
    with _queues_lock:
        queue = _queues.get(lock_path)
        if queue is None:
            queue = _queues[lock_path] = WriterQueue(lock_path)
    try:
        queue._file()
    except OSError:
        log.warning("cannot open %s; SQLite writers retry on the database lock instead", lock_path, exc_info=True)
        return None
    return queue


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
            with engine.connect() as conn, writer_turn(engine):
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

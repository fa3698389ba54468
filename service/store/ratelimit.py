"""A ``limits`` storage backend on the app's own database, shared by every gunicorn worker.

Flask-Limiter's memory storage counts per process, so with N gunicorn workers a client could
make N times the limit. ``limits`` ships no SQL storage, so this one keeps the counters in the
``rate_limits`` table (``key``, ``count``, ``expires_at`` as epoch seconds) that the app's
migrations create.

Use it by importing this module (importing registers the URI schemes with ``limits``) and
pointing Flask-Limiter at the database with an ``ilgun+`` prefix::

    RATELIMIT_STORAGE_URI = "ilgun+sqlite:////var/lib/ilgun/ilgun.db"
    RATELIMIT_STORAGE_URI = "ilgun+postgresql+psycopg://user@host/db"
    RATELIMIT_STRATEGY = "fixed-window"

Only the fixed-window strategy is supported. The moving window needs one timestamp per hit,
which a single counter row cannot hold, so ``MovingWindowSupport`` is deliberately not
implemented (``limits`` then refuses the moving-window strategy at start-up instead of
counting wrongly). The sliding-window counter is left out too: ``limits`` implements it
with a check-then-increment-then-decrement dance that is only approximate under concurrency.

Clocks: windows are measured with the app host's ``time.time()``, the same clock the rest of
the schema uses. With several hosts on one PostgreSQL database keep their clocks in sync
(NTP); a skew of s seconds moves a window's end by at most s.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time

import sqlalchemy as sa
from limits.errors import ConfigurationError
from limits.storage import Storage
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from service.store import database
from service.store.schema import rate_limits

URI_PREFIX = "ilgun+"

# Longest key the column holds. Flask-Limiter keys embed the client identity and the endpoint
# name, so they can exceed it; PostgreSQL would then reject the row, so long keys are hashed.
KEY_MAX_LENGTH = rate_limits.c.key.type.length or 255
_KEY_DIGEST_LENGTH = 64  # sha256 hex

# One engine per database URL per process: every Storage instance for the same URL shares a
# pool, and a forked child (gunicorn worker) never reuses connections opened by its parent.
_engines: dict[tuple[int, str], sa.Engine] = {}
_engines_lock = threading.Lock()


def database_url_from_storage_uri(uri: str) -> str:
    """Turn ``ilgun+<sqlalchemy url>`` into the SQLAlchemy URL it wraps."""
    if not uri.startswith(URI_PREFIX):
        raise ConfigurationError(f"rate limit storage URI must start with {URI_PREFIX!r}: {uri!r}")
    url = uri[len(URI_PREFIX):]
    # Plain "postgresql://" means psycopg2 to SQLAlchemy; psycopg 3 is the driver ilgun ships.
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite") and _is_sqlite_memory(url):
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared between processes; "
            "give the rate limit storage a database file"
        )
    return url


def _is_sqlite_memory(url: str) -> bool:
    database_part = sa.make_url(url).database
    return not database_part or database_part == ":memory:" or "mode=memory" in url


def engine_for_url(url: str) -> sa.Engine:
    """The process-wide engine for ``url``, created with ``make_engine`` on first use."""
    cache_key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(cache_key)
        if engine is None:
            engine = database.make_engine(url)
            _engines[cache_key] = engine
        return engine


def dispose_cached_engines() -> None:
    """Close the pools this module opened in the current process (tests, shutdown)."""
    with _engines_lock:
        pid = os.getpid()
        for (owner_pid, url) in list(_engines):
            if owner_pid == pid:
                _engines.pop((owner_pid, url)).dispose()


def storage_key(key: str) -> str:
    """The primary-key value stored for a ``limits`` key: the key itself, or, when it is too
    long for the column, a readable prefix plus the sha256 of the whole key."""
    if len(key) <= KEY_MAX_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key[: KEY_MAX_LENGTH - _KEY_DIGEST_LENGTH - 1] + "#" + digest


def _upsert_for(engine: sa.Engine):
    if engine.dialect.name == "sqlite":
        return sqlite_dialect.insert
    if engine.dialect.name == "postgresql":
        return pg_dialect.insert
    raise ConfigurationError(f"rate limit storage supports SQLite and PostgreSQL, not {engine.dialect.name}")


def increment_statement(engine: sa.Engine, key: str, amount: int, now: float, expiry: float):
    """One ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING count``.

    A single statement is atomic on both databases, so concurrent workers can never lose an
    increment or both start a fresh window. A row whose window has ended is restarted in place
    (count = amount, new expiry) rather than deleted first, which would race. Both CASEs read
    the row as it was before the update, as SQL requires, so their order does not matter.
    """
    insert = _upsert_for(engine)
    stmt = insert(rate_limits).values(key=key, count=amount, expires_at=now + expiry)
    window_over = rate_limits.c.expires_at <= now
    return stmt.on_conflict_do_update(
        index_elements=[rate_limits.c.key],
        set_={
            "count": sa.case((window_over, stmt.excluded.count),
                             else_=rate_limits.c.count + stmt.excluded.count),
            "expires_at": sa.case((window_over, stmt.excluded.expires_at),
                                  else_=rate_limits.c.expires_at),
        },
    ).returning(rate_limits.c.count)


class DatabaseRateLimitStorage(Storage):
    """Fixed-window counters in the ``rate_limits`` table (SQLite >= 3.35 or PostgreSQL)."""

    STORAGE_SCHEME = ["ilgun+sqlite", "ilgun+postgresql", "ilgun+postgresql+psycopg"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool):
        if options:
            # Flask-Limiter passes RATELIMIT_STORAGE_OPTIONS here; none are understood, and a
            # silently ignored option is worse than a start-up error.
            raise ConfigurationError(f"unknown rate limit storage options: {sorted(options)}")
        self.database_url = database_url_from_storage_uri(uri)
        self.engine = engine_for_url(self.database_url)
        _upsert_for(self.engine)  # fail at start-up, not on the first request
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sa.exc.SQLAlchemyError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the key's window, starting a new window of ``expiry`` seconds if
        there is none or it has ended; returns the count after the increment."""
        statement = increment_statement(self.engine, storage_key(key), amount, time.time(), expiry)
        return int(database.write(self.engine, lambda conn: conn.execute(statement).scalar_one()))

    def get(self, key: str) -> int:
        query = sa.select(rate_limits.c.count).where(
            rate_limits.c.key == storage_key(key), rate_limits.c.expires_at > time.time()
        )
        with database.read(self.engine) as conn:
            return int(conn.execute(query).scalar() or 0)

    def get_expiry(self, key: str) -> float:
        """Epoch time the key's window ends; now if it has no live window (as the memory
        storage does, so Flask-Limiter's reset headers say "now")."""
        now = time.time()
        query = sa.select(rate_limits.c.expires_at).where(
            rate_limits.c.key == storage_key(key), rate_limits.c.expires_at > now
        )
        with database.read(self.engine) as conn:
            expires_at = conn.execute(query).scalar()
        return float(expires_at) if expires_at is not None else now

    def check(self) -> bool:
        """Healthy when the table can be read: a reachable database without the table (no
        migrations yet) is as useless for limiting as an unreachable one."""
        try:
            with database.read(self.engine) as conn:
                conn.execute(sa.select(rate_limits.c.key).limit(1)).all()
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def reset(self) -> int | None:
        """Forget every counter; returns how many rows were removed."""
        return database.write(self.engine, lambda conn: conn.execute(sa.delete(rate_limits)).rowcount)

    def clear(self, key: str) -> None:
        delete = sa.delete(rate_limits).where(rate_limits.c.key == storage_key(key))
        database.write(self.engine, lambda conn: conn.execute(delete))


def count_expired(engine: sa.Engine, now: float | None = None) -> int:
    """How many counters purge_expired would delete now."""
    with database.read(engine) as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(rate_limits).where(
            rate_limits.c.expires_at <= (time.time() if now is None else now))).scalar_one()


def purge_expired(engine: sa.Engine, now: float | None = None, batch_size: int = 5000) -> int:
    """Delete counters whose window has ended; returns how many were deleted.

    Expired rows are already invisible to the storage (it compares ``expires_at`` with now),
    so this only keeps the table small. It deletes in batches, each its own short write
    transaction, because on SQLite a write transaction blocks every request's ``incr``.
    """
    if now is None:
        now = time.time()
    expired_keys = (
        sa.select(rate_limits.c.key).where(rate_limits.c.expires_at <= now).limit(batch_size)
    )
    delete_batch = sa.delete(rate_limits).where(rate_limits.c.key.in_(expired_keys))
    deleted = 0
    while True:
        count = database.write(engine, lambda conn: conn.execute(delete_batch).rowcount)
        deleted += count
        if count < batch_size:
            return deleted

"""PostgreSQL and Redis for the multi-host integration tests.

PostgreSQL: the server on 127.0.0.1:5432 (ILGUN_TEST_PG_URL overrides, as for the unit tests in
tests/pg.py), a whole fresh database per test (the servers under test run the real migrations
into it), dropped afterwards with its connections terminated first. Redis: 127.0.0.1:6379, one
numbered database flushed before and after.

Unreachable: the test is skipped with the reason, except under CI=true, where it fails.
"""
from __future__ import annotations

import contextlib
import os
import uuid

import pytest

PG_URL = os.environ.get("ILGUN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = "redis://127.0.0.1:6379"

# The audit trigger installed by ``install_job_audit``: one row per execution start (a claim or
# a submit that started its job) and per execution end (finish, requeue by the sweep or a
# hand-back), written in the same transaction as the change itself. The service clears
# lease_owner when a job finishes, so this is the only record of which worker ran what.
JOB_AUDIT_DDL = """
CREATE TABLE it_job_events (
    seq bigserial PRIMARY KEY,
    job_id text NOT NULL,
    event text NOT NULL,            -- 'start' or 'end'
    op text NOT NULL,               -- INSERT: a submit that started its job itself; UPDATE: a claim
    status text NOT NULL,           -- the job's status after the change
    attempt integer NOT NULL,
    worker text,                    -- lease_owner of the execution (host:pid:hex)
    run_token text,
    message text,
    at double precision NOT NULL    -- clock_timestamp() as epoch seconds
);
CREATE FUNCTION it_job_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'running' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'running'
                                   OR OLD.run_token IS DISTINCT FROM NEW.run_token) THEN
        INSERT INTO it_job_events (job_id, event, op, status, attempt, worker, run_token, message, at)
        VALUES (NEW.id, 'start', TG_OP, NEW.status, NEW.attempt, NEW.lease_owner, NEW.run_token, NEW.message,
                extract(epoch FROM clock_timestamp()));
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = 'running' AND (NEW.status IS DISTINCT FROM 'running'
                                                         OR OLD.run_token IS DISTINCT FROM NEW.run_token) THEN
        INSERT INTO it_job_events (job_id, event, op, status, attempt, worker, run_token, message, at)
        VALUES (OLD.id, 'end', TG_OP, NEW.status, OLD.attempt, OLD.lease_owner, OLD.run_token, NEW.message,
                extract(epoch FROM clock_timestamp()));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER it_job_audit AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION it_job_audit();
"""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run, not skip)")
    pytest.skip(reason)


def psycopg_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq URL for psycopg."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (same scheme, user, host, port and query)."""
    import sqlalchemy as sa
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)


def postgres_or_skip(url: str = PG_URL) -> None:
    import psycopg
    try:
        with psycopg.connect(psycopg_url(url), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        _skip_or_fail(f"PostgreSQL not reachable at {url}: {str(exc).strip()}")


def redis_or_skip(url: str) -> None:
    import redis
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5).ping()
    except redis.exceptions.ConnectionError as exc:
        _skip_or_fail(f"Redis not reachable at {url}: {exc}")


def drop_database(admin_url: str, name: str) -> None:
    """Terminate every connection to ``name`` (a killed host's may linger) and drop it."""
    import psycopg
    with psycopg.connect(psycopg_url(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextlib.contextmanager
def fresh_database(prefix: str = "ilgun_it", admin_url: str = PG_URL):
    """Yield the SQLAlchemy URL of a new, empty database; dropped afterwards in any case."""
    import psycopg
    postgres_or_skip(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(psycopg_url(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(admin_url, name)


@contextlib.contextmanager
def flushed_redis_db(db: int):
    """Yield the URL of Redis database ``db``, flushed before and after."""
    import redis
    url = f"{REDIS_URL}/{db}"
    redis_or_skip(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    client.flushdb()
    try:
        yield url
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


def install_job_audit(url: str) -> None:
    """Add the it_job_events table and its trigger on jobs (after the migrations ran)."""
    import psycopg
    with psycopg.connect(psycopg_url(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(JOB_AUDIT_DDL)


def select(url: str, sql: str, params=None) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row
    with psycopg.connect(psycopg_url(url), autocommit=True, connect_timeout=5, row_factory=dict_row) as conn:
        return list(conn.execute(sql, params))

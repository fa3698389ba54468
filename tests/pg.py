"""PostgreSQL for tests: the server on 127.0.0.1:5432 (ILGUN_TEST_PG_URL overrides), one fresh
schema per test holding the ilgun tables, dropped afterwards, so parallel runs and other suites
never share a table. Unreachable: skip with the reason, except under CI=true, where it fails."""
from __future__ import annotations

import contextlib
import os
import uuid

import pytest
import sqlalchemy as sa

from service.store import database, schema

PG_URL = os.environ.get("ILGUN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_or_skip() -> None:
    probe = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with probe.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {PG_URL}: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run, not skip)")
        pytest.skip(reason)
    finally:
        probe.dispose()


@contextlib.contextmanager
def fresh_schema_url(prefix: str = "ilgun_test", create_tables: bool = True):
    """Yield a URL whose search_path is a new schema (with the ilgun tables unless told not to)."""
    postgres_or_skip()
    schema_name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema_name}"'))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema_name}"})
    url_text = url.render_as_string(hide_password=False)
    if create_tables:
        setup = database.make_engine(url_text)
        schema.metadata.create_all(setup)
        setup.dispose()
    try:
        yield url_text
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema_name}" CASCADE'))
        admin.dispose()

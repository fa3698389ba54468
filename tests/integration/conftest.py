"""Fixtures for the gunicorn integration tests: real gunicorn masters on tmp data folders and a
slow loopback file server. Every process started here is killed by process group at teardown,
whether the test passed or not."""
from __future__ import annotations

import sys

import pytest

from gunicorn_harness import IlgunServer, SlowFileServer

if not sys.platform.startswith("linux"):  # /proc, process groups and fork-based gunicorn
    pytest.skip("the gunicorn integration tests need Linux", allow_module_level=True)


@pytest.fixture
def ilgun_factory(tmp_path, request):
    """``factory(settings=None, data_dir=None, start=True)`` → a running IlgunServer.

    With ``data_dir`` of an earlier server, the new one reuses its database (no migration)."""
    servers: list[IlgunServer] = []

    def factory(settings: dict | None = None, data_dir=None, start: bool = True, name: str | None = None):
        fresh = data_dir is None
        data = data_dir or tmp_path / f"data{len(servers)}"
        server = IlgunServer(data, settings, name=name or f"gunicorn{len(servers)}")
        servers.append(server)
        if fresh:
            server.prepare()
        if start:
            server.start()
        return server

    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for server in servers:
        server.kill_group()
    if failed:
        for server in servers:
            print(f"\n----- log tail of {server.name} ({server.data_dir})", file=sys.stderr)
            print(server.log_tail(150), file=sys.stderr)


@pytest.fixture
def pg_database():
    """The SQLAlchemy URL of a fresh PostgreSQL database, dropped afterwards (its connections
    terminated first). Request it before ``ilgun_factory`` so the servers stop before the drop.
    Skips when PostgreSQL is unreachable; fails instead under CI=true."""
    from pg_support import fresh_database
    with fresh_database("ilgun_it") as url:
        yield url


@pytest.fixture
def redis_db12():
    """redis://127.0.0.1:6379/12, flushed before and after (13-15 belong to other suites and
    the benchmark). Skips when Redis is unreachable; fails instead under CI=true."""
    from pg_support import flushed_redis_db
    with flushed_redis_db(12) as url:
        yield url


@pytest.fixture
def slow_files():
    server = SlowFileServer().start()
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep

"""Shared fixtures: a real SQLite file per test (migrated by Alembic once, then copied)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from service import create_app

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"
ERROR_KEYS = {"success", "error_code", "message", "details"}


@pytest.fixture(autouse=True)
def fast_password_hashing(request, monkeypatch):
    """scrypt (werkzeug's default) costs ~0.2 s a hash; tests about the API, not the hash's
    cost, hash new passwords with a cheap pbkdf2. Verification reads the method from the stored
    hash, so it is unchanged. Mark a test ``real_password_hashing`` to keep scrypt."""
    if request.node.get_closest_marker("real_password_hashing"):
        return
    from werkzeug.security import generate_password_hash
    monkeypatch.setattr("service.store.users.generate_password_hash",
                        lambda password: generate_password_hash(password, method="pbkdf2:sha256:1000"))


def assert_error(resp, status: int, code: str | set[str]) -> dict:
    """An error answer: the exact status and code, the error envelope, and no stack trace."""
    assert b"Traceback" not in resp.data
    body = resp.get_json(silent=True)
    assert resp.status_code == status, (resp.status_code, body if body is not None else resp.data[:300])
    assert resp.mimetype == "application/json", resp.data[:300]
    assert set(body) == ERROR_KEYS, body
    assert body["success"] is False
    codes = {code} if isinstance(code, str) else code
    assert body["error_code"] in codes, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def assert_ok(resp, status: int = 200):
    """A success answer in the envelope; returns its data."""
    body = resp.get_json()
    assert resp.status_code == status, (resp.status_code, body)
    assert set(body) == {"success", "message", "data"}, body
    assert body["success"] is True and isinstance(body["message"], str)
    return body["data"]


@pytest.fixture
def loopback_only(monkeypatch):
    """Fails any connection this process makes to an address that is not loopback: belt and braces
    for tests that send generated or hostile URLs through the app."""
    import ipaddress
    import socket
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            assert ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback, f"connect to {address}"
        return real_connect(sock, address)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """Run the real migrations once; each test gets a copy of the result."""
    import flask_migrate
    data = tmp_path_factory.mktemp("template")
    app = create_app({"TESTING": True, "ILGUN_DATA": str(data)})
    with app.app_context():
        flask_migrate.upgrade()
    app.extensions["ilgun"].engine.dispose()
    with app.app_context():
        from service.extensions import db
        db.engine.dispose()
    return data / "ilgun.db"


def make_app(tmp_path: Path, migrated_db: Path, **overrides):
    db = tmp_path / "ilgun.db"
    if not db.exists():
        # SQLite's backup API, not a file copy: the template is in WAL mode and part of it
        # may still live in its -wal file
        source, target = sqlite3.connect(migrated_db), sqlite3.connect(db)
        with target:
            source.backup(target)
        source.close()
        target.close()
    config = {
        "TESTING": True, "ILGUN_DATA": str(tmp_path), "DATABASE_URL": f"sqlite:///{db}",
        "RATELIMIT_ENABLED": False, "LEASE_SECONDS": 5.0, "POLL_INTERVAL": 0.1, "SWEEP_INTERVAL": 0.5,
        "DOWNLOAD_ALLOW_PRIVATE_URLS": True, "MAX_WORKERS": 2,
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture(params=["sqlite", "postgresql"])
def postgresql_or_none(request):
    """Runs a test on both databases: None for SQLite (the test's own file), else the URL of a
    fresh PostgreSQL schema holding the tables (tests/pg.py)."""
    if request.param == "sqlite":
        yield None
        return
    from tests.pg import fresh_schema_url
    with fresh_schema_url(f"ilgun_{request.module.__name__.rsplit('.', 1)[-1]}") as url:
        yield url


@pytest.fixture
def app_factory(tmp_path, migrated_db):
    apps = []

    def factory(**overrides):
        app = make_app(tmp_path, migrated_db, **overrides)
        apps.append(app)
        return app
    yield factory
    from service.runtime import stop_worker_runtime
    for app in apps:
        stop_worker_runtime(app, timeout=2)
        app.extensions["ilgun"].engine.dispose()


@pytest.fixture
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def dispatcher(app):
    """Run jobs in this process, as a gunicorn worker would."""
    from service.runtime import start_worker_runtime
    return start_worker_runtime(app, label="test")


class Api:
    """A small client for the JSON API used by tests."""

    def __init__(self, client, token: str | None = None):
        self.client, self.token = client, token

    def headers(self, extra=None):
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(extra or {})
        return h

    def get(self, url, **kw):
        return self.client.get(url, headers=self.headers(kw.pop("headers", None)), **kw)

    def post(self, url, json=None, **kw):
        return self.client.post(url, json=json, headers=self.headers(kw.pop("headers", None)), **kw)

    def delete(self, url, **kw):
        return self.client.delete(url, headers=self.headers(kw.pop("headers", None)), **kw)

    def submit(self, kind, params=None, **kw):
        return self.post("/api/v1/jobs", {"kind": kind, "params": params or {}}, **kw)

    def wait(self, job_id, until=("succeeded", "failed", "cancelled"), timeout=15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/api/v1/jobs/{job_id}").get_json()["data"]
            if job["status"] in until:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
            time.sleep(0.05)


def sign_up(app, client, username: str, role: str = "user") -> Api:
    svc = app.extensions["ilgun"]
    if svc.users.by_username(username) is None:
        svc.users.create(username, PASSWORD, role=role)
    resp = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert resp.status_code == 200, resp.get_json()
    return Api(client, resp.get_json()["data"]["access_token"])


def running_app(app_factory, **config):
    """(app, admin Api) with a dispatcher running in this process."""
    from service.runtime import start_worker_runtime
    app = app_factory(**config)
    admin = sign_up(app, app.test_client(), "admin", role="admin")
    start_worker_runtime(app)
    return app, admin


@pytest.fixture
def admin(app, client) -> Api:
    return sign_up(app, client, "admin", role="admin")


@pytest.fixture
def alice(app, client) -> Api:
    return sign_up(app, client, "alice")


@pytest.fixture
def bob(app, client) -> Api:
    return sign_up(app, client, "bob")

"""Shared fixtures: a real SQLite file per test (migrated by Alembic once, then copied)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from service import create_app

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """Run the real migrations once; each test gets a copy of the result."""
    import flask_migrate
    data = tmp_path_factory.mktemp("template")
    app = create_app({"TESTING": True, "ILGUN_DATA": str(data)})
    with app.app_context():
        flask_migrate.upgrade()
    app.extensions["ilgun"].engine.dispose()
    return data / "ilgun.db"


def make_app(tmp_path: Path, migrated_db: Path, **overrides):
    db = tmp_path / "ilgun.db"
    if not db.exists():
        shutil.copy(migrated_db, db)
    config = {
        "TESTING": True, "ILGUN_DATA": str(tmp_path), "DATABASE_URL": f"sqlite:///{db}",
        "RATELIMIT_ENABLED": False, "LEASE_SECONDS": 5.0, "POLL_INTERVAL": 0.1, "SWEEP_INTERVAL": 0.5,
        "DOWNLOAD_ALLOW_PRIVATE_URLS": True, "MAX_WORKERS": 2,
    }
    config.update(overrides)
    return create_app(config)


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


@pytest.fixture
def admin(app, client) -> Api:
    return sign_up(app, client, "admin", role="admin")


@pytest.fixture
def alice(app, client) -> Api:
    return sign_up(app, client, "alice")


@pytest.fixture
def bob(app, client) -> Api:
    return sign_up(app, client, "bob")

"""Rate limits through the API: shared by every process on the database, or on Redis."""
from __future__ import annotations

import os
import uuid

import pytest

from tests.conftest import sign_up


def _hits(api, n):
    return [api.get("/api/v1/jobs").status_code for _ in range(n)]


def test_limit_is_shared_by_two_app_processes_on_one_database(app_factory):
    """Two apps on one SQLite file stand for two gunicorn workers: together they allow the
    limit once, not once each (the per-process memory storage would allow 10 here)."""
    a = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="5 per minute")
    b = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="5 per minute")
    alice_a = sign_up(a, a.test_client(), "alice")
    alice_b = sign_up(b, b.test_client(), "alice")
    codes = _hits(alice_a, 3) + _hits(alice_b, 4)
    assert codes.count(200) == 5 and codes.count(429) == 2
    limited = alice_b.get("/api/v1/jobs")
    body = limited.get_json()
    assert limited.status_code == 429 and body["error_code"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) > 0
    # the request id is set before the limiter answers: even a refused request can be traced
    traced = alice_b.get("/api/v1/jobs", headers={"X-Request-ID": "limited-1"})
    assert traced.status_code == 429 and traced.headers["X-Request-ID"] == "limited-1"


def test_limits_are_per_user(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute")
    client = app.test_client()
    alice, bob = sign_up(app, client, "alice"), sign_up(app, client, "bob")
    assert _hits(alice, 3) == [200, 200, 429]
    assert _hits(bob, 2) == [200, 200]


def _redis_or_skip(url: str):
    import redis
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {url} is required in CI: {exc}")
        pytest.skip(f"no Redis at {url} ({exc}); start redis-server to run this test")


def test_redis_storage_uri(app_factory):
    url = "redis://127.0.0.1:6379/13"
    _redis_or_skip(url)
    prefix = f"ilgun-test-{uuid.uuid4().hex[:8]}"
    a = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="4 per minute", RATELIMIT_STORAGE_URI=url)
    b = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="4 per minute", RATELIMIT_STORAGE_URI=url)
    for app in (a, b):
        app.config["RATELIMIT_KEY_PREFIX"] = prefix
        app.extensions["limiter"]  # noqa: B018 - present when the limiter is bound
    alice_a, alice_b = sign_up(a, a.test_client(), "alice"), sign_up(b, b.test_client(), "alice")
    codes = _hits(alice_a, 3) + _hits(alice_b, 3)
    assert codes.count(200) == 4 and codes.count(429) == 2
    import redis
    r = redis.Redis.from_url(url)
    assert any(True for _ in r.scan_iter("LIMITS*"))
    for key in r.scan_iter("LIMITS*"):
        r.delete(key)

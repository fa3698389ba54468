"""The verified-token cache (service/web/jwt_manager.py) must never accept what a full
verification would refuse: an expired token, a token under another key, a revoked token."""
from __future__ import annotations

import time

from tests.conftest import assert_error, assert_ok, sign_up


def test_a_cached_token_still_expires(app_factory):
    import jwt as pyjwt
    app = app_factory(JWT_ACCESS_TOKEN_EXPIRES=5)  # seconds; room for a slow machine before expiry
    alice = sign_up(app, app.test_client(), "alice")
    for _ in range(3):  # verified once, then served from the cache
        assert_ok(alice.get("/api/v1/auth/me"))
    exp = pyjwt.decode(alice.token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.2)
    assert_error(alice.get("/api/v1/auth/me"), 401, "TOKEN_EXPIRED")


def test_a_token_verified_under_one_key_is_refused_under_another(app_factory, tmp_path):
    first = app_factory(JWT_SECRET_KEY="k" * 40)
    alice = sign_up(first, first.test_client(), "alice")
    assert_ok(alice.get("/api/v1/auth/me"))        # now in the process-wide cache
    second = app_factory(JWT_SECRET_KEY="other-" + "x" * 40)  # same database, another key
    resp = second.test_client().get("/api/v1/auth/me", headers={"Authorization": f"Bearer {alice.token}"})
    assert_error(resp, 401, "TOKEN_INVALID")


def test_a_cached_token_is_refused_once_revoked(app, client, alice):
    assert_ok(alice.get("/api/v1/auth/me"))
    assert_ok(alice.post("/api/v1/auth/logout"))
    assert_error(alice.get("/api/v1/auth/me"), 401, "TOKEN_REVOKED")


def test_a_tampered_copy_of_a_cached_token_is_refused(app, client, alice):
    assert_ok(alice.get("/api/v1/auth/me"))
    head, body, sig = alice.token.split(".")
    forged = ".".join([head, body, sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")])
    resp = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert_error(resp, 401, "TOKEN_INVALID")

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


def test_the_token_header_is_decoded_once_per_token(app, client, alice, monkeypatch):
    """flask-jwt-extended decodes the header again after the claims; ours remembers it. If an
    upgrade stops calling the module global we replaced, this fails and the cache is gone."""
    from flask_jwt_extended import view_decorators

    from service.web import jwt_manager
    assert view_decorators.get_unverified_jwt_headers is jwt_manager.cached_unverified_header
    jwt_manager._header_of.cache_clear()
    decoded = []
    real = jwt_manager.pyjwt.get_unverified_header
    monkeypatch.setattr(jwt_manager.pyjwt, "get_unverified_header", lambda t: decoded.append(t) or real(t))
    assert_ok(alice.get("/api/v1/auth/me"))        # verified (which reads the header too), then cached
    first = len(decoded)
    assert first >= 1 and set(decoded) == {alice.token}
    for _ in range(3):
        assert_ok(alice.get("/api/v1/auth/me"))
    assert len(decoded) == first                    # neither verified nor its header decoded again
    header = jwt_manager.cached_unverified_header(alice.token)
    header["alg"] = "none"                          # a caller changing its copy changes nothing
    assert jwt_manager.cached_unverified_header(alice.token)["alg"] == "HS256"
    head, body, sig = alice.token.split(".")       # a forged token is refused before its header is read
    assert_error(client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {head}.{body}.{sig[:-2]}AB"}),
                 401, "TOKEN_INVALID")
    assert jwt_manager._header_of.cache_info().currsize == 1

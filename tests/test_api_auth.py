"""The /api/v1/auth endpoints as a client sees them: register, login, me, refresh rotation,
logout revocation, token-type confusion and the login brute-force limit."""
from __future__ import annotations

import time

import pytest

from tests.conftest import PASSWORD, assert_error, assert_ok, sign_up

AUTH = "/api/v1/auth"





def register(client, **fields):
    return client.post(f"{AUTH}/register", json=fields)


def login(client, username, password=PASSWORD, **kw):
    return client.post(f"{AUTH}/login", json={"username": username, "password": password}, **kw)


def tokens(client, username, password=PASSWORD) -> dict:
    return assert_ok(login(client, username, password))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- register -------------------------------------------------------------------------------

def test_register_answers_201_with_the_public_user(client):
    resp = register(client, username="carol", password=PASSWORD, email="carol@example.org")
    user = assert_ok(resp, 201)
    assert set(user) == {"id", "username", "email", "role"}  # never a password or its hash
    assert user["username"] == "carol" and user["email"] == "carol@example.org" and user["role"] == "user"
    assert isinstance(user["id"], int)
    assert PASSWORD not in resp.get_data(as_text=True)


def test_register_without_email_and_cannot_choose_its_role(client):
    user = assert_ok(register(client, username="mallory", password=PASSWORD, role="admin", is_active=True), 201)
    assert user["role"] == "user" and user["email"] is None
    token = tokens(client, "mallory")["access_token"]
    me = assert_ok(client.get(f"{AUTH}/me", headers=bearer(token)))
    assert me["role"] == "user"


@pytest.mark.parametrize("username", [
    "", "ab", "a" * 33, "al ice", "al/ice", "../etc", "<script>", "ålice", "alice\x00", "al@ce",
    12345678, True, None, ["alice"], {"name": "alice"},
])
def test_register_refuses_bad_usernames(client, username):
    body = assert_error(register(client, username=username, password=PASSWORD), 400, "VALIDATION_ERROR")
    assert set(body["details"]) == {"username"}


@pytest.mark.parametrize("password", ["", "short", "1234567", "x" * 257, 12345678901, None, ["a" * 10]])
def test_register_refuses_bad_passwords(client, password):
    body = assert_error(register(client, username="erin", password=password), 400, "VALIDATION_ERROR")
    assert set(body["details"]) == {"password"}


def test_register_password_bounds_are_inclusive(client):
    assert_ok(register(client, username="minpw", password="x" * 8), 201)
    assert_ok(register(client, username="maxpw", password="x" * 256), 201)


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "a b@example.org", "@example.org", "a@@example.org",
                                   "a@example.c", 42, ["a@example.org"], "a@example.org\n", False, 0, {}, []])
def test_register_refuses_bad_emails(client, email):
    body = assert_error(register(client, username="frank", password=PASSWORD, email=email), 400,
                        "VALIDATION_ERROR")
    assert set(body["details"]) == {"email"}


def test_register_names_every_bad_field_and_creates_nothing(app, client):
    body = assert_error(register(client, username="x", password="y", email="z"), 400, "VALIDATION_ERROR")
    assert set(body["details"]) == {"username", "password", "email"}
    assert app.extensions["ilgun"].users.by_username("x") is None


def test_register_missing_body_or_wrong_type(client):
    assert_error(client.post(f"{AUTH}/register"), 400, "INVALID_JSON")
    assert_error(client.post(f"{AUTH}/register", data="username=a", content_type="text/plain"), 400,
                 "UNSUPPORTED_MEDIA_TYPE")
    assert_error(client.post(f"{AUTH}/register", json=["alice", PASSWORD]), 400, "INVALID_JSON")


@pytest.mark.parametrize("again", ["grace", "GRACE", "Grace", "gRaCe"])
def test_register_duplicate_username_any_case_is_409(client, again):
    assert_ok(register(client, username="grace", password=PASSWORD), 201)
    assert_error(register(client, username=again, password=PASSWORD + "!"), 409, "USERNAME_TAKEN")
    # the original account is untouched: its password still works, the second one does not
    assert_ok(login(client, "grace"))
    assert_error(login(client, "grace", PASSWORD + "!"), 401, "AUTH_FAILED")


def test_registration_closed(app_factory):
    app = app_factory(ALLOW_REGISTRATION=False)
    client = app.test_client()
    assert_error(register(client, username="heidi", password=PASSWORD), 400, "REGISTRATION_CLOSED")
    assert app.extensions["ilgun"].users.by_username("heidi") is None
    assert_error(login(client, "heidi"), 401, "AUTH_FAILED")


# -- login ----------------------------------------------------------------------------------

def _check_tokens(data: dict) -> None:
    assert set(data) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert data["token_type"] == "bearer"
    assert data["expires_in"] == 900  # JWT_ACCESS_TOKEN_EXPIRES default, in seconds
    assert data["access_token"] != data["refresh_token"]
    assert data["access_token"].count(".") == 2 and data["refresh_token"].count(".") == 2


def test_login_with_json(app, client):
    sign_up(app, client, "alice")
    data = tokens(client, "alice")
    _check_tokens(data)
    me = assert_ok(client.get(f"{AUTH}/me", headers=bearer(data["access_token"])))
    assert me["username"] == "alice" and me["role"] == "user"


def test_login_with_a_form_body(app, client):
    sign_up(app, client, "alice")
    resp = client.post(f"{AUTH}/login", data={"username": "alice", "password": PASSWORD})
    data = assert_ok(resp)
    _check_tokens(data)
    assert assert_ok(client.get(f"{AUTH}/me", headers=bearer(data["access_token"])))["username"] == "alice"


def test_login_username_is_case_insensitive(app, client):
    sign_up(app, client, "alice")
    data = tokens(client, "ALICE")
    assert assert_ok(client.get(f"{AUTH}/me", headers=bearer(data["access_token"])))["username"] == "alice"


def test_wrong_password_and_unknown_user_look_the_same(app, client):
    sign_up(app, client, "alice")
    wrong = assert_error(login(client, "alice", "not-the-password"), 401, "AUTH_FAILED")
    unknown = assert_error(login(client, "nobody-here", "not-the-password"), 401, "AUTH_FAILED")
    assert wrong["message"] == unknown["message"]
    assert wrong["details"] == unknown["details"]
    form = client.post(f"{AUTH}/login", data={"username": "alice", "password": "nope-nope"})
    assert assert_error(form, 401, "AUTH_FAILED")["message"] == wrong["message"]


def test_disabled_user_cannot_sign_in(app, client):
    from service.store.schema import users
    sign_up(app, client, "alice")
    with app.extensions["ilgun"].engine.begin() as conn:
        conn.execute(users.update().where(users.c.username == "alice").values(is_active=False))
    assert_error(login(client, "alice"), 401, "AUTH_FAILED")


@pytest.mark.parametrize("body", [{}, {"username": "alice"}, {"password": PASSWORD}, {"username": "", "password": ""},
                                  {"username": ["alice"], "password": PASSWORD},
                                  {"username": "alice", "password": 12345678}])
def test_login_requires_both_fields_as_strings(app, client, body):
    sign_up(app, client, "alice")
    assert_error(client.post(f"{AUTH}/login", json=body), 400, "VALIDATION_ERROR")


def test_login_bad_bodies(client):
    assert_error(client.post(f"{AUTH}/login"), 400, "INVALID_JSON")
    assert_error(client.post(f"{AUTH}/login", data=b"{not json", content_type="application/json"), 400,
                 "INVALID_JSON")
    assert_error(client.post(f"{AUTH}/login", data=b'{"username": "a"}', content_type="text/plain"), 400,
                 "UNSUPPORTED_MEDIA_TYPE")


# -- me -------------------------------------------------------------------------------------

def test_me_needs_a_token(client):
    assert_error(client.get(f"{AUTH}/me"), 401, "AUTH_REQUIRED")


def test_me_shows_who_is_signed_in(app, client):
    user = app.extensions["ilgun"].users.create("ivan", PASSWORD, email="ivan@example.org")
    me = assert_ok(client.get(f"{AUTH}/me", headers=bearer(tokens(client, "ivan")["access_token"])))
    assert me == {"id": user["id"], "username": "ivan", "email": "ivan@example.org", "role": "user"}


# -- refresh --------------------------------------------------------------------------------

def test_refresh_rotates_and_the_old_refresh_token_is_revoked(app, client):
    sign_up(app, client, "alice")
    first = tokens(client, "alice")
    second = assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(first["refresh_token"])))
    _check_tokens(second)
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert assert_ok(client.get(f"{AUTH}/me", headers=bearer(second["access_token"])))["username"] == "alice"
    # the used refresh token works at most once
    assert_error(client.post(f"{AUTH}/refresh", headers=bearer(first["refresh_token"])), 401, "TOKEN_REVOKED")
    # the new one still works, and rotates in turn
    third = assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(second["refresh_token"])))
    assert_error(client.post(f"{AUTH}/refresh", headers=bearer(second["refresh_token"])), 401, "TOKEN_REVOKED")
    assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(third["refresh_token"])))


def test_refresh_needs_a_token(client):
    assert_error(client.post(f"{AUTH}/refresh"), 401, "AUTH_REQUIRED")


def test_access_token_is_refused_as_refresh_token(app, client):
    sign_up(app, client, "alice")
    access = tokens(client, "alice")["access_token"]
    assert_error(client.post(f"{AUTH}/refresh", headers=bearer(access)), 401, "TOKEN_INVALID")
    # and nothing was revoked by the refused call: the access token still works
    assert_ok(client.get(f"{AUTH}/me", headers=bearer(access)))


def test_refresh_token_is_refused_as_access_token(app, client):
    sign_up(app, client, "alice")
    refresh = tokens(client, "alice")["refresh_token"]
    assert_error(client.get(f"{AUTH}/me", headers=bearer(refresh)), 401, "TOKEN_INVALID")
    assert_error(client.get("/api/v1/jobs", headers=bearer(refresh)), 401, "TOKEN_INVALID")
    assert_error(client.post("/api/v1/jobs", json={"kind": "sleep"}, headers=bearer(refresh)), 401,
                 "TOKEN_INVALID")
    assert_error(client.post(f"{AUTH}/logout", headers=bearer(refresh)), 401, "TOKEN_INVALID")
    # the refresh token itself is still good
    assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(refresh)))


# -- logout ---------------------------------------------------------------------------------

def test_logout_revokes_the_access_token_and_the_given_refresh_token(app, client):
    sign_up(app, client, "alice")
    session = tokens(client, "alice")
    other = tokens(client, "alice")  # a second session on another device
    resp = client.post(f"{AUTH}/logout", json={"refresh_token": session["refresh_token"]},
                       headers=bearer(session["access_token"]))
    assert assert_ok(resp) is None
    assert_error(client.get(f"{AUTH}/me", headers=bearer(session["access_token"])), 401, "TOKEN_REVOKED")
    assert_error(client.get("/api/v1/jobs", headers=bearer(session["access_token"])), 401, "TOKEN_REVOKED")
    assert_error(client.post(f"{AUTH}/refresh", headers=bearer(session["refresh_token"])), 401, "TOKEN_REVOKED")
    assert_error(client.post(f"{AUTH}/logout", headers=bearer(session["access_token"])), 401, "TOKEN_REVOKED")
    # the other session is not affected
    assert_ok(client.get(f"{AUTH}/me", headers=bearer(other["access_token"])))
    assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(other["refresh_token"])))


def test_logout_without_a_body_revokes_only_the_access_token(app, client):
    sign_up(app, client, "alice")
    session = tokens(client, "alice")
    assert_ok(client.post(f"{AUTH}/logout", headers=bearer(session["access_token"])))
    assert_error(client.get(f"{AUTH}/me", headers=bearer(session["access_token"])), 401, "TOKEN_REVOKED")
    assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(session["refresh_token"])))


def test_logout_ignores_junk_and_other_users_refresh_tokens(app, client):
    sign_up(app, client, "alice")
    sign_up(app, client, "bob")
    alice, bob = tokens(client, "alice"), tokens(client, "bob")
    resp = client.post(f"{AUTH}/logout", json={"refresh_token": bob["refresh_token"]},
                       headers=bearer(alice["access_token"]))
    assert_ok(resp)
    assert_ok(client.post(f"{AUTH}/refresh", headers=bearer(bob["refresh_token"])))  # alice cannot end bob's session
    again = tokens(client, "alice")
    for junk in ({"refresh_token": "garbage"}, {"refresh_token": 5}, {"refresh_token": again["access_token"]}):
        fresh = tokens(client, "alice")
        assert_ok(client.post(f"{AUTH}/logout", json=junk, headers=bearer(fresh["access_token"])))
    # an access token passed as "refresh_token" is ignored: it stays valid until used to log out
    assert_ok(client.get(f"{AUTH}/me", headers=bearer(again["access_token"])))
    assert_ok(client.post(f"{AUTH}/logout", data=b"{broken", content_type="application/json",
                          headers=bearer(again["access_token"])))
    assert_error(client.get(f"{AUTH}/me", headers=bearer(again["access_token"])), 401, "TOKEN_REVOKED")


def test_logout_needs_a_token(client):
    assert_error(client.post(f"{AUTH}/logout"), 401, "AUTH_REQUIRED")


# -- login brute force ----------------------------------------------------------------------

def test_login_brute_force_is_limited_per_address_and_username(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="5 per minute")
    client = app.test_client()
    app.extensions["ilgun"].users.create("alice", PASSWORD)
    app.extensions["ilgun"].users.create("bob", PASSWORD)
    for _ in range(5):
        assert_error(login(client, "alice", "guess-guess"), 401, "AUTH_FAILED")
    limited = login(client, "alice", "guess-guess")
    assert_error(limited, 429, "RATE_LIMITED")
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # the limit holds for the right password too, for other spellings and for form bodies
    assert_error(login(client, "alice"), 429, "RATE_LIMITED")
    assert_error(login(client, "ALICE", "guess-guess"), 429, "RATE_LIMITED")
    form = client.post(f"{AUTH}/login", data={"username": "alice", "password": "guess-guess"})
    assert_error(form, 429, "RATE_LIMITED")
    # another username from the same address is counted separately...
    assert_error(login(client, "bob", "guess-guess"), 401, "AUTH_FAILED")
    assert_ok(login(client, "bob"))
    # ...and so is the same username from another address
    other = {"REMOTE_ADDR": "10.9.8.7"}
    assert_error(login(client, "alice", "guess-guess", environ_base=other), 401, "AUTH_FAILED")
    assert_ok(login(client, "alice", environ_base=other))


def test_login_limit_counts_form_and_json_attempts_together(app_factory):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="5 per minute")
    client = app.test_client()
    app.extensions["ilgun"].users.create("alice", PASSWORD)
    for i in range(5):
        if i % 2:
            assert_error(login(client, "alice", "guess-guess"), 401, "AUTH_FAILED")
        else:
            resp = client.post(f"{AUTH}/login", data={"username": "Alice", "password": "guess-guess"})
            assert_error(resp, 401, "AUTH_FAILED")
    assert_error(login(client, "alice", "guess-guess"), 429, "RATE_LIMITED")


def test_using_the_service_counts_as_active_at_most_one_write_per_ten_minutes(app, client):
    """The admin dashboard's "active in the last 24 h" counts users of a long-lived session too."""
    import sqlalchemy as sa

    from service.store.schema import users
    alice = sign_up(app, client, "alice")
    engine = app.extensions["ilgun"].engine

    def set_seen(value):
        with engine.begin() as conn:
            conn.execute(users.update().where(users.c.username == "alice").values(last_seen_at=value))

    def seen():
        with engine.connect() as conn:
            return conn.execute(sa.select(users.c.last_seen_at).where(users.c.username == "alice")).scalar_one()
    set_seen(time.time() - 2 * 86400)  # signed in two days ago, token still valid
    assert app.extensions["ilgun"].users.counts(active_since=time.time() - 86400)["active_24h"] == 0
    assert alice.get("/api/v1/jobs").status_code == 200
    first = seen()
    assert first > time.time() - 60
    assert app.extensions["ilgun"].users.counts(active_since=time.time() - 86400)["active_24h"] == 1
    set_seen(first - 300)  # five minutes ago: no new write yet
    assert alice.get("/api/v1/jobs").status_code == 200
    assert seen() == first - 300

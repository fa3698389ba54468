"""The API under attack: bad tokens, other users' jobs (IDOR), hostile input and path traversal.

Every test here runs on an app with SLEEP_KIND_FOR_EVERYONE=True (the ``app`` fixture below
overrides conftest's) so plain users can own sleep jobs; the one test about the admin-only
default builds its own app.
"""
from __future__ import annotations

import base64
import json
import os
import time
import uuid

import jwt
import pytest

from service.store.schema import users as users_table
from tests.conftest import PASSWORD, Api, assert_error, assert_ok, sign_up




@pytest.fixture
def app(app_factory):
    return app_factory(SLEEP_KIND_FOR_EVERYONE=True)


# -- helpers ----------------------------------------------------------------------------------



def job_count(app) -> int:
    return app.extensions["ilgun"].jobs.list(None, page_size=1000)[1]


def secret(app) -> str:
    return app.config["JWT_SECRET_KEY"]


def claims_of(app, token: str) -> dict:
    return jwt.decode(token, secret(app), algorithms=["HS256"])


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def delete_user(app, username: str) -> None:
    with app.extensions["ilgun"].engine.begin() as conn:
        conn.execute(users_table.delete().where(users_table.c.username == username))


JOB_ENDPOINTS = [  # (method, path under /api/v1/jobs/<id>)
    ("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("DELETE", ""), ("GET", "/files"),
    ("GET", "/files/sleep.txt"),
]


def call(api: Api, method: str, url: str):
    if method == "GET":
        return api.get(url)
    if method == "POST":
        return api.post(url)
    return api.delete(url)


# -- tokens -----------------------------------------------------------------------------------

@pytest.fixture
def queued_job(app, alice):
    """A job of alice's left queued (no dispatcher), to see that refused requests change nothing."""
    return assert_ok(alice.submit("sleep", {"duration": 0}), 202)


def _bad_tokens(app, client, alice: Api, admin: Api) -> dict[str, tuple[str, str]]:
    """name -> (Authorization header value, expected error_code)."""
    real = claims_of(app, alice.token)
    admin_id = claims_of(app, admin.token)["sub"]
    now = int(time.time())
    head, payload, sig = alice.token.split(".")

    def signed(**changes):
        return jwt.encode({**real, "jti": str(uuid.uuid4()), **changes}, secret(app), algorithm="HS256")

    sign_up(app, client, "zed")
    zed = client.post("/api/v1/auth/login", json={"username": "zed", "password": PASSWORD}).get_json()["data"]
    delete_user(app, "zed")
    sign_up(app, client, "olga")
    olga = client.post("/api/v1/auth/login", json={"username": "olga", "password": PASSWORD}).get_json()["data"]
    with app.extensions["ilgun"].engine.begin() as conn:
        conn.execute(users_table.update().where(users_table.c.username == "olga").values(is_active=False))
    logged_out = client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}).get_json()
    logged_out = logged_out["data"]["access_token"]
    assert client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {logged_out}"}).status_code == 200
    refresh = client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}).get_json()
    return {
        "garbage": ("Bearer garbage", "TOKEN_INVALID"),
        "three-junk-parts": ("Bearer aaa.bbb.ccc", "TOKEN_INVALID"),
        "huge": ("Bearer " + "A" * 8000, "TOKEN_INVALID"),
        "bearer-without-token": ("Bearer", "TOKEN_INVALID"),
        "forged-other-secret": (
            "Bearer " + jwt.encode({**real, "sub": admin_id, "role": "admin"}, "not-the-real-secret-" * 3,
                                   algorithm="HS256"), "TOKEN_INVALID"),
        "alg-none": ("Bearer " + jwt.encode({**real, "sub": admin_id, "role": "admin"}, None, algorithm="none"),
                     "TOKEN_INVALID"),
        "alg-none-empty-signature": (f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64({**real, 'sub': admin_id})}.",
                                     "TOKEN_INVALID"),
        "hs512-real-secret": ("Bearer " + jwt.encode(real, secret(app), algorithm="HS512"), "TOKEN_INVALID"),
        "tampered-payload": (f"Bearer {head}.{b64({**real, 'sub': admin_id, 'role': 'admin'})}.{sig}",
                             "TOKEN_INVALID"),
        "stripped-signature": (f"Bearer {head}.{payload}.", "TOKEN_INVALID"),
        "expired": ("Bearer " + signed(iat=now - 3600, nbf=now - 3600, exp=now - 60), "TOKEN_EXPIRED"),
        "unknown-user-id": ("Bearer " + signed(sub="999999"), "USER_NOT_FOUND"),
        "deleted-user": (f"Bearer {zed['access_token']}", "USER_NOT_FOUND"),
        "disabled-user": (f"Bearer {olga['access_token']}", "USER_NOT_FOUND"),
        "logged-out": (f"Bearer {logged_out}", "TOKEN_REVOKED"),
        "refresh-as-access": (f"Bearer {refresh['data']['refresh_token']}", "TOKEN_INVALID"),
    }


TOKEN_CASES = ["garbage", "three-junk-parts", "huge", "bearer-without-token", "forged-other-secret", "alg-none",
               "alg-none-empty-signature", "hs512-real-secret", "tampered-payload", "stripped-signature",
               "expired", "unknown-user-id", "deleted-user", "disabled-user", "logged-out", "refresh-as-access"]


@pytest.mark.parametrize("case", TOKEN_CASES)
def test_bad_token_is_refused_everywhere_and_changes_nothing(app, client, alice, admin, queued_job, case):
    header, code = _bad_tokens(app, client, alice, admin)[case]
    before = job_count(app)
    h = {"Authorization": header}
    jid = queued_job["id"]
    responses = [
        client.get("/api/v1/auth/me", headers=h),
        client.get("/api/v1/jobs", headers=h),
        client.post("/api/v1/jobs", json={"kind": "sleep", "params": {"duration": 0}}, headers=h),
        client.get("/api/v1/stats", headers=h),
        *(client.open(f"/api/v1/jobs/{jid}{suffix}", method=method, headers=h) for method, suffix in JOB_ENDPOINTS),
    ]
    for resp in responses:
        body = assert_error(resp, 401, code)
        assert jid not in json.dumps(body)
    assert job_count(app) == before
    still = assert_ok(alice.get(f"/api/v1/jobs/{jid}"))
    assert still["status"] == "queued" and still["cancel_requested"] is False and still["attempt"] == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "Basic YWxpY2U6cHc="},
                                     {"Authorization": "Token abc"}])
def test_missing_token_is_auth_required(app, client, queued_job, headers):
    before = job_count(app)
    jid = queued_job["id"]
    urls = [("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/stats"),
            ("GET", "/api/v1/auth/me"), ("POST", "/api/v1/auth/logout"), ("POST", "/api/v1/auth/refresh"),
            *((m, f"/api/v1/jobs/{jid}{s}") for m, s in JOB_ENDPOINTS)]
    for method, url in urls:
        resp = client.open(url, method=method, headers=headers, json={"kind": "sleep", "params": {}})
        assert_error(resp, 401, "AUTH_REQUIRED")
    assert job_count(app) == before


def test_auth_is_checked_before_the_body_is_read(client):
    resp = client.post("/api/v1/jobs", data=b"{not json", content_type="application/json")
    assert_error(resp, 401, "AUTH_REQUIRED")


def test_expired_refresh_token_is_refused(app, client, alice):
    refresh = client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    claims = claims_of(app, refresh.get_json()["data"]["refresh_token"])
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 1}, secret(app),
                         algorithm="HS256")
    assert_error(client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {expired}"}),
                 401, "TOKEN_EXPIRED")


def test_token_whose_subject_is_not_a_user_id_is_401(app, client, alice):
    """Tokens are only ever issued with a numeric ``sub``; any other subject must still be a
    clean 401, not a 500 from ``int(payload["sub"])`` in the user lookup."""
    claims = claims_of(app, alice.token)
    for sub in ("abc", "1.5", "", "1e3"):
        token = jwt.encode({**claims, "sub": sub}, secret(app), algorithm="HS256")
        resp = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert_error(resp, 401, "USER_NOT_FOUND")


def test_deleted_users_token_never_becomes_another_users(app, client, alice):
    """Delete a user, then create another: the deleted user's tokens must not sign in as the
    new account even when the database hands the new row the same id."""
    zed = sign_up(app, client, "zed")
    zed_refresh = client.post("/api/v1/auth/login", json={"username": "zed", "password": PASSWORD}).get_json()
    zed_id = assert_ok(zed.get("/api/v1/auth/me"))["id"]
    delete_user(app, "zed")
    assert_error(zed.get("/api/v1/auth/me"), 401, "USER_NOT_FOUND")
    yara = app.extensions["ilgun"].users.create("yara", PASSWORD)
    reused = yara["id"] == zed_id  # SQLite reuses the highest rowid when the table has no AUTOINCREMENT
    resp = zed.get("/api/v1/auth/me")
    assert resp.status_code == 401, f"id reused: {reused}; zed's token answered {resp.get_json()}"
    assert_error(resp, 401, "USER_NOT_FOUND")
    refreshed = client.post("/api/v1/auth/refresh",
                            headers={"Authorization": f"Bearer {zed_refresh['data']['refresh_token']}"})
    assert_error(refreshed, 401, "USER_NOT_FOUND")


# -- IDOR -------------------------------------------------------------------------------------

@pytest.fixture
def alice_jobs(app, alice, dispatcher):
    done = assert_ok(alice.submit("sleep", {"duration": 0, "write_file": True}), 202)
    failed = assert_ok(alice.submit("sleep", {"duration": 0, "fail": "permanent"}), 202)
    done, failed = alice.wait(done["id"]), alice.wait(failed["id"])
    assert done["status"] == "succeeded" and [f["name"] for f in done["files"]] == ["sleep.txt"]
    assert failed["status"] == "failed"
    content = alice.get(f"/api/v1/jobs/{done['id']}/files/sleep.txt").data
    assert content.startswith(b"job ")
    return {"succeeded": done, "failed": failed, "content": content}


def test_other_users_job_is_not_found_for_every_action(app, alice, bob, admin, alice_jobs):
    done, failed = alice_jobs["succeeded"], alice_jobs["failed"]
    stranger = str(uuid.uuid4())
    for job in (done, failed):
        for method, suffix in JOB_ENDPOINTS:
            resp = call(bob, method, f"/api/v1/jobs/{job['id']}{suffix}")
            body = assert_error(resp, 404, "JOB_NOT_FOUND")
            assert alice_jobs["content"] not in resp.data and job["id"] not in resp.get_data(as_text=True)
            # exactly the answer for a job that does not exist: no way to tell the id is real
            ghost = assert_error(call(bob, method, f"/api/v1/jobs/{stranger}{suffix}"), 404, "JOB_NOT_FOUND")
            assert body == ghost
    # alice's jobs are untouched
    for job in (done, failed):
        now = assert_ok(alice.get(f"/api/v1/jobs/{job['id']}"))
        for field in ("status", "attempt", "finished_at", "result", "error", "files", "cancel_requested"):
            assert now[field] == job[field], field
    assert alice.get(f"/api/v1/jobs/{done['id']}/files/sleep.txt").data == alice_jobs["content"]
    out = app.extensions["ilgun"].workspace.output_dir(done["owner_id"], done["id"])
    assert (out / "sleep.txt").read_bytes() == alice_jobs["content"]
    # the admin sees all of it
    assert assert_ok(admin.get(f"/api/v1/jobs/{done['id']}"))["owner_id"] == done["owner_id"]
    assert [f["name"] for f in assert_ok(admin.get(f"/api/v1/jobs/{done['id']}/files"))] == ["sleep.txt"]
    assert admin.get(f"/api/v1/jobs/{done['id']}/files/sleep.txt").data == alice_jobs["content"]
    listed = {j["id"] for j in assert_ok(admin.get("/api/v1/jobs"))["items"]}
    assert {done["id"], failed["id"]} <= listed


def test_other_users_jobs_are_not_listed_or_counted(alice, bob, alice_jobs):
    for query in ("", "?status=succeeded", "?status=failed", "?kind=sleep", "?page_size=100"):
        page = assert_ok(bob.get(f"/api/v1/jobs{query}"))
        assert page["items"] == [] and page["total"] == 0, query
    stats = assert_ok(bob.get("/api/v1/stats"))
    assert stats["scope"] == "user" and stats["jobs_by_status"] == {} and "users" not in stats
    assert assert_ok(alice.get("/api/v1/jobs"))["total"] == 2


def test_other_user_cannot_cancel_or_delete_a_running_job(alice, bob, dispatcher):
    job = assert_ok(alice.submit("sleep", {"duration": 30, "steps": 300}), 202)
    alice.wait(job["id"], until=("running",))
    for method, suffix in (("POST", "/cancel"), ("DELETE", ""), ("POST", "/retry")):
        assert_error(call(bob, method, f"/api/v1/jobs/{job['id']}{suffix}"), 404, "JOB_NOT_FOUND")
    now = assert_ok(alice.get(f"/api/v1/jobs/{job['id']}"))
    assert now["status"] == "running" and now["cancel_requested"] is False
    assert_ok(alice.post(f"/api/v1/jobs/{job['id']}/cancel"))
    assert alice.wait(job["id"], timeout=5)["status"] == "cancelled"


def test_idempotency_keys_are_per_user(alice, bob):
    mine = assert_ok(alice.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": "same-key"}), 202)
    theirs = bob.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": "same-key"})
    theirs = assert_ok(theirs, 202)  # a new job of bob's, never alice's job replayed
    assert theirs["id"] != mine["id"] and theirs["owner_id"] != mine["owner_id"]


# -- bad input --------------------------------------------------------------------------------

def _post_raw(api: Api, url: str, data: bytes, content_type: str | None = "application/json"):
    headers = api.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    return api.client.post(url, data=data, headers=headers)


@pytest.mark.parametrize("raw", [
    b'{"kind": ', b"{'kind': 'sleep'}", b'{"kind": "sleep",}', b'{"kind": "sleep"} trailing', b"\xff\xfe\x00",
    b'{"kind": "\xff"}', b"{" + b'"a":' + b"1" * 5000 + b"}", b"",
])
def test_malformed_json_is_invalid_json(app, alice, raw):
    before = job_count(app)
    assert_error(_post_raw(alice, "/api/v1/jobs", raw), 400, "INVALID_JSON")
    assert job_count(app) == before


@pytest.mark.parametrize("raw", [b"[]", b'[{"kind": "sleep"}]', b'"sleep"', b"null", b"42", b"true", b"NaN"])
def test_json_that_is_not_an_object_is_invalid_json(app, alice, raw):
    before = job_count(app)
    assert_error(_post_raw(alice, "/api/v1/jobs", raw), 400, "INVALID_JSON")
    assert job_count(app) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml",
                                          "multipart/form-data; boundary=x", None])
def test_wrong_content_type_is_refused(app, alice, content_type):
    before = job_count(app)
    resp = _post_raw(alice, "/api/v1/jobs", b'{"kind": "sleep", "params": {"duration": 0}}', content_type)
    if content_type and content_type.startswith("multipart/"):
        # multipart is a submit with an upload: JSON sent as multipart has no kind part
        assert assert_error(resp, 400, "VALIDATION_ERROR")["details"] == {"field": "kind"}
    else:
        assert_error(resp, 400, "UNSUPPORTED_MEDIA_TYPE")
    assert job_count(app) == before


def _nested(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + closer * levels


@pytest.mark.parametrize("params", [
    _nested(5000), _nested(5000, b'{"a":', b"}"), _nested(50), _nested(50, b'{"a":', b"}"),
])
def test_deeply_nested_json_is_400_never_500(app, alice, params):
    before = job_count(app)
    raw = b'{"kind": "sleep", "params": {"duration": 0, "x": ' + params + b"}}"
    assert_error(_post_raw(alice, "/api/v1/jobs", raw), 400, {"JSON_TOO_DEEP", "INVALID_JSON"})
    assert job_count(app) == before


def test_just_too_deep_json_is_json_too_deep(app, alice):
    limit = app.config["MAX_JSON_DEPTH"]
    ok_body = {"kind": "sleep", "params": {"duration": 0}}
    inner: object = 1
    for _ in range(limit - 3):  # body -> params -> x -> lists: exactly the limit
        inner = [inner]
    ok_body["params"]["x"] = inner
    # deep enough but allowed: it passes the depth check and reaches the kind (which knows no "x")
    assert assert_error(alice.post("/api/v1/jobs", json=ok_body), 400, "VALIDATION_ERROR")["details"] == {"field": "x"}
    ok_body["params"]["x"] = [inner]
    assert_error(alice.post("/api/v1/jobs", json=ok_body), 400, "JSON_TOO_DEEP")


@pytest.mark.parametrize("ratelimit", [False, True])
@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/auth/register"])
def test_deeply_nested_json_on_public_endpoints_is_400(app_factory, ratelimit, path):
    """Login and register parse the body without a token; with rate limiting on (the production
    default) the limiter's key function parses it too."""
    app = app_factory(RATELIMIT_ENABLED=ratelimit)
    client = app.test_client()
    raw = b'{"username": ' + _nested(5000) + b', "password": "correct-horse"}'
    assert_error(client.post(path, data=raw, content_type="application/json"), 400,
                 {"JSON_TOO_DEEP", "INVALID_JSON"})


def test_json_body_over_max_json_bytes(app_factory):
    app = app_factory(MAX_JSON_BYTES=1000, SLEEP_KIND_FOR_EVERYONE=True)
    client = app.test_client()
    alice = sign_up(app, client, "alice")
    big = {"kind": "sleep", "params": {"duration": 0, "pad": "x" * 1200}}
    resp = alice.post("/api/v1/jobs", json=big)
    assert resp.status_code in (400, 413)
    body = assert_error(resp, resp.status_code, "PAYLOAD_TOO_LARGE")
    assert body["details"] == {"limit": 1000}
    assert job_count(app) == 0
    resp = client.post("/api/v1/auth/login", json={"username": "alice" * 300, "password": PASSWORD})
    assert resp.status_code in (400, 413)
    assert_error(resp, resp.status_code, "PAYLOAD_TOO_LARGE")
    # under the limit: parsed, and refused by the kind for its unknown key, not for its size
    under = alice.post("/api/v1/jobs", json={"kind": "sleep", "params": {"pad": "x" * 800}})
    assert assert_error(under, 400, "VALIDATION_ERROR")["details"] == {"field": "pad"}


def test_request_body_over_max_content_length_is_413(app_factory):
    app = app_factory(MAX_CONTENT_LENGTH=2000, SLEEP_KIND_FOR_EVERYONE=True)
    client = app.test_client()
    alice = sign_up(app, client, "alice")
    big = {"kind": "sleep", "params": {"duration": 0, "pad": "x" * 3000}}
    assert_error(alice.post("/api/v1/jobs", json=big), 413, "PAYLOAD_TOO_LARGE")
    assert job_count(app) == 0
    assert_error(client.post("/api/v1/auth/login", json={"username": "alice", "password": "p" * 3000}),
                 413, "PAYLOAD_TOO_LARGE")
    assert_error(client.post("/api/v1/auth/login", data={"username": "alice", "password": "p" * 3000}),
                 413, "PAYLOAD_TOO_LARGE")
    assert_error(client.post("/api/v1/auth/register", json={"username": "mallory", "password": "p" * 3000}),
                 413, "PAYLOAD_TOO_LARGE")
    assert app.extensions["ilgun"].users.by_username("mallory") is None


def test_unknown_kind_is_404(app, alice):
    body = assert_error(alice.submit("no-such-kind", {}), 404, "UNKNOWN_KIND")
    assert "sleep" in body["details"]["kinds"]
    assert job_count(app) == 0


@pytest.mark.parametrize("body", [{}, {"kind": ""}, {"kind": 5}, {"kind": None}, {"kind": ["sleep"]},
                                  {"params": {"duration": 0}}])
def test_kind_is_required_as_a_string(app, alice, body):
    resp = assert_error(alice.post("/api/v1/jobs", json=body), 400, "VALIDATION_ERROR")
    assert resp["details"] == {"field": "kind"}
    assert job_count(app) == 0


@pytest.mark.parametrize("params", [[], [1, 2], "duration=0", 5, True, None])
def test_params_must_be_an_object(app, alice, params):
    resp = assert_error(alice.post("/api/v1/jobs", json={"kind": "sleep", "params": params}), 400,
                        "VALIDATION_ERROR")
    assert resp["details"] == {"field": "params"}
    assert job_count(app) == 0


@pytest.mark.parametrize("params", [{"duration": -1}, {"duration": "soon"}, {"duration": 10 ** 9},
                                    {"steps": 0}, {"fail": "sometimes"}])
def test_bad_sleep_params_are_400(app, alice, params):
    assert_error(alice.submit("sleep", params), 400, "VALIDATION_ERROR")
    assert job_count(app) == 0


def test_non_admin_cannot_submit_sleep_by_default(app_factory):
    app = app_factory()  # SLEEP_KIND_FOR_EVERYONE left at its default (False)
    client = app.test_client()
    carol = sign_up(app, client, "carol")
    assert_error(carol.submit("sleep", {"duration": 0}), 403, "KIND_NOT_ALLOWED")
    assert job_count(app) == 0
    admin = sign_up(app, client, "admin", role="admin")
    assert_ok(admin.submit("sleep", {"duration": 0}), 202)


@pytest.mark.parametrize("query", [
    "page=0", "page=-1", "page=abc", "page=1.5", "page=", "page=10000001", "page_size=0", "page_size=101",
    "page_size=-5", "page_size=ten", "page_size=99999999999999999999", "status=bogus", "status=QUEUED",
    "status=queued'--",
])
def test_bad_list_filters_are_400(alice, query):
    assert_error(alice.get(f"/api/v1/jobs?{query}"), 400, "VALIDATION_ERROR")


def test_good_list_filters_are_accepted(alice):
    for query in ("page=1", "page_size=100", "status=queued", "status=", "kind=nothing", "page=99"):
        assert_ok(alice.get(f"/api/v1/jobs?{query}"))


@pytest.mark.parametrize("url", ["/api/v1/nope", "/api/v2/jobs", "/nope", "/api/v1/jobs/x/y/z", "/api/v1/auth",
                                 "/api/v1/auth/nope", "/static/../secrets.json", "/static/nope.css"])
def test_unknown_url_is_json_404(alice, url):
    assert_error(alice.get(url), 404, "NOT_FOUND")


@pytest.mark.parametrize("method,url", [
    ("PUT", "/api/v1/jobs"), ("DELETE", "/api/v1/jobs"), ("PATCH", "/api/v1/jobs/{id}"),
    ("PUT", "/api/v1/jobs/{id}"), ("GET", "/api/v1/jobs/{id}/cancel"), ("GET", "/api/v1/jobs/{id}/retry"),
    ("POST", "/api/v1/jobs/{id}/files"), ("DELETE", "/api/v1/jobs/{id}/files/sleep.txt"),
    ("GET", "/api/v1/auth/login"), ("GET", "/api/v1/auth/register"), ("POST", "/api/v1/auth/me"),
    ("GET", "/api/v1/auth/logout"), ("POST", "/api/v1/stats"),
])
def test_wrong_method_is_json_405(alice, method, url):
    resp = alice.client.open(url.format(id=uuid.uuid4()), method=method, headers=alice.headers())
    assert_error(resp, 405, "METHOD_NOT_ALLOWED")
    assert resp.headers.get("Allow")
    assert method not in {m.strip() for m in resp.headers["Allow"].split(",")}


@pytest.mark.parametrize("key", ["k" * 300, "k" * 201, ""])
def test_bad_idempotency_key_is_400(app, alice, key):
    resp = alice.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": key})
    assert_error(resp, 400, "INVALID_IDEMPOTENCY_KEY")
    assert job_count(app) == 0


def test_longest_idempotency_key_is_accepted(alice):
    assert_ok(alice.submit("sleep", {"duration": 0}, headers={"Idempotency-Key": "k" * 200}), 202)


# -- path traversal ---------------------------------------------------------------------------

MARKER = "ILGUN-TOP-SECRET-MARKER-7f3a"


@pytest.fixture
def file_job(app, alice, dispatcher, tmp_path):
    """A succeeded job of alice's with sleep.txt, and a secret file outside every workspace."""
    job = alice.wait(assert_ok(alice.submit("sleep", {"duration": 0, "write_file": True}), 202)["id"])
    assert job["status"] == "succeeded"
    outside = tmp_path / "outside-secret.txt"
    outside.write_text(MARKER + "\n")
    return job


def _assert_no_secret(app, resp, tmp_path) -> None:
    text = resp.get_data(as_text=True)
    assert MARKER not in text
    assert secret(app) not in text and app.config["SECRET_KEY"] not in text
    assert "root:" not in text
    secrets_json = tmp_path / "secrets.json"
    if secrets_json.exists():
        assert secrets_json.read_text() not in text


TRAVERSALS = [  # the part after /files/, as sent on the wire
    "..%2F..%2Fsecrets.json", "..%2F..%2F..%2F..%2F..%2F..%2F..%2Fsecrets.json", "../../x", "../../secrets.json",
    "%2e%2e/x", "%2e%2e%2f%2e%2e%2fsecrets.json", "%2E%2E%2F%2E%2E%2Foutside-secret.txt", "..",
    "./sleep.txt", "sleep.txt/../sleep.txt", "sub/sleep.txt", "sleep.txt%00", "sleep.txt%00.png", "%00",
    "..%00/x", "..%5C..%5Csecrets.json", "..\\..\\secrets.json", "sleep.txt%5C", "C:%5Cwindows%5Cwin.ini",
    "C:secrets.json", ".sleep.txt", "%2e%2e%5c%2e%2e%5csecrets.json", "sleep.txt%0D", "sleep.txt%09", "%0A",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_in_file_names_is_refused(app, alice, admin, file_job, tmp_path, name):
    for who in (alice, admin):
        resp = who.get(f"/api/v1/jobs/{file_job['id']}/files/{name}")
        assert_error(resp, 400, "PATH_NOT_ALLOWED")
        _assert_no_secret(app, resp, tmp_path)


@pytest.mark.parametrize("name,code", [
    ("%252e%252e%252fsecrets.json", "FILE_NOT_FOUND"),  # double encoding is just an odd, unknown name
    ("sleep.txt%0A", "NOT_FOUND"),  # a newline after the first character: the <path:name> route does not match
])
def test_other_odd_file_names_are_404(app, alice, file_job, tmp_path, name, code):
    resp = alice.get(f"/api/v1/jobs/{file_job['id']}/files/{name}")
    assert_error(resp, 404, code)
    _assert_no_secret(app, resp, tmp_path)


@pytest.mark.parametrize("name", ["/etc/passwd", "%2Fetc%2Fpasswd", "/" + "%2e%2e/" * 3 + "etc/passwd"])
def test_absolute_file_names_are_refused(app, alice, file_job, tmp_path, name):
    """``files//etc/passwd`` must be answered with a JSON error (400 PATH_NOT_ALLOWED or 404)."""
    resp = alice.get(f"/api/v1/jobs/{file_job['id']}/files/{name}")
    _assert_no_secret(app, resp, tmp_path)
    assert resp.status_code in (400, 404), (resp.status_code, resp.headers.get("Location"), resp.data[:200])
    assert_error(resp, resp.status_code, "PATH_NOT_ALLOWED" if resp.status_code == 400 else "NOT_FOUND")


@pytest.mark.parametrize("name", ["/etc/passwd", "%2Fetc%2Fpasswd", "//etc//passwd"])
def test_absolute_file_names_never_leak_even_following_redirects(app, alice, file_job, tmp_path, name):
    resp = alice.client.get(f"/api/v1/jobs/{file_job['id']}/files/{name}", headers=alice.headers(),
                            follow_redirects=True)
    _assert_no_secret(app, resp, tmp_path)
    assert_error(resp, resp.status_code, {"PATH_NOT_ALLOWED", "NOT_FOUND", "FILE_NOT_FOUND"})
    assert resp.status_code in (400, 404)


def test_symlink_planted_in_out_folder_is_never_followed(app, alice, admin, file_job, tmp_path):
    ws = app.extensions["ilgun"].workspace
    out = ws.output_dir(file_job["owner_id"], file_job["id"])
    outside = tmp_path / "outside-secret.txt"
    # a link under a name the job never produced
    os.symlink(outside, out / "leak.txt")
    os.symlink(tmp_path / "secrets.json", out / "secrets.json")
    # the job's own recorded file swapped for a link pointing out of the workspace
    (out / "sleep.txt").unlink()
    os.symlink(outside, out / "sleep.txt")
    for who in (alice, admin):
        for name, status, code in (("leak.txt", 404, "FILE_NOT_FOUND"), ("secrets.json", 404, "FILE_NOT_FOUND"),
                                   ("sleep.txt", 400, "PATH_NOT_ALLOWED")):
            resp = who.get(f"/api/v1/jobs/{file_job['id']}/files/{name}")
            assert_error(resp, status, code)
            _assert_no_secret(app, resp, tmp_path)
        resp = who.get(f"/api/v1/jobs/{file_job['id']}/files/sleep.txt", headers={"Range": "bytes=0-5"})
        assert_error(resp, 400, "PATH_NOT_ALLOWED")
        _assert_no_secret(app, resp, tmp_path)
    assert outside.read_text() == MARKER + "\n"  # and nothing was written through the link


def test_symlink_to_a_sibling_job_is_refused(app, alice, file_job, tmp_path):
    """A link to another job's file stays inside the files root but leaves this job's folder."""
    other = alice.wait(assert_ok(alice.submit("sleep", {"duration": 0, "write_file": True}), 202)["id"])
    ws = app.extensions["ilgun"].workspace
    out = ws.output_dir(file_job["owner_id"], file_job["id"])
    (out / "sleep.txt").unlink()
    os.symlink(ws.output_dir(other["owner_id"], other["id"]) / "sleep.txt", out / "sleep.txt")
    assert_error(alice.get(f"/api/v1/jobs/{file_job['id']}/files/sleep.txt"), 400, "PATH_NOT_ALLOWED")


@pytest.mark.parametrize("job_id,code", [
    ("..%2Fx", "NOT_FOUND"), ("..%2F..%2Fsecrets.json", "NOT_FOUND"), ("%2e%2e", "JOB_NOT_FOUND"),
    ("..", "JOB_NOT_FOUND"), ("x" * 5000, "JOB_NOT_FOUND"), ("1", "JOB_NOT_FOUND"),
    ("' OR '1'='1", "JOB_NOT_FOUND"), ("%25", "JOB_NOT_FOUND"), ("%00", "JOB_NOT_FOUND"),
    ("00000000-0000-0000-0000-000000000000", "JOB_NOT_FOUND"),
])
def test_job_ids_that_are_not_jobs_are_404(app, alice, admin, file_job, job_id, code):
    for who in (alice, admin):
        for method, suffix in JOB_ENDPOINTS:
            # an encoded slash splits the path so no route matches (NOT_FOUND); others reach the store
            assert_error(call(who, method, f"/api/v1/jobs/{job_id}{suffix}"), 404, code)
    assert assert_ok(alice.get(f"/api/v1/jobs/{file_job['id']}"))["status"] == "succeeded"
    assert job_count(app) == 1


def test_uppercase_job_id_is_not_another_way_in(alice, bob, file_job):
    upper = file_job["id"].upper()
    for method, suffix in JOB_ENDPOINTS:
        assert_error(call(bob, method, f"/api/v1/jobs/{upper}{suffix}"), 404, "JOB_NOT_FOUND")

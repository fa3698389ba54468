"""The server-rendered pages through the test client: cookie sign-in with CSRF, forms, isolation,
actions with confirmation, error pages. (tests/browser/ drives the same pages in Chromium.)"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, assert_error, sign_up

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
ROOT = Path(__file__).resolve().parent.parent


def csrf_of(resp) -> str:
    match = CSRF_FIELD.search(resp.get_data(as_text=True))
    assert match, resp.get_data(as_text=True)[:500]
    return match.group(1)


class Browser:
    """A test client that signs in through the sign-in form, as a browser does."""

    def __init__(self, app):
        self.app, self.client = app, app.test_client()

    def get(self, url, **kw):
        return self.client.get(url, headers={**HTML, **kw.pop("headers", {})}, **kw)

    def post(self, url, data=None, **kw):
        return self.client.post(url, data=data or {}, headers={**HTML, **kw.pop("headers", {})}, **kw)

    def login(self, username: str, password: str = PASSWORD, next_url: str = ""):
        token = csrf_of(self.get("/login"))
        return self.post("/login", {"csrf_token": token, "username": username, "password": password,
                                    "next": next_url})

    def form_token(self, url: str = "/jobs/new") -> str:
        return csrf_of(self.get(url))

    def cookie(self, name: str):
        c = self.client.get_cookie(name)
        return c.value if c else None


def user(app, name: str, role: str = "user") -> Browser:
    app.extensions["ilgun"].users.create(name, PASSWORD, role=role)
    b = Browser(app)
    resp = b.login(name)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return b


def page_text(resp) -> str:
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text
    return text


# -- sign in, register, sign out -----------------------------------------------------------
def test_register_signs_in_with_httponly_cookies_and_a_readable_csrf_cookie(app):
    b = Browser(app)
    token = csrf_of(b.get("/register"))
    resp = b.post("/register", {"csrf_token": token, "username": "carol", "password": "long-password-1",
                                "password_again": "long-password-1", "email": "carol@example.org"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/jobs"
    cookies = {c.split("=", 1)[0]: c for c in resp.headers.getlist("Set-Cookie")}
    for name in ("access_token_cookie", "refresh_token_cookie"):
        assert "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name]
    assert "HttpOnly" not in cookies["csrf_access_token"]  # the double-submit half pages read
    assert "carol" in page_text(b.get("/jobs"))
    assert app.extensions["ilgun"].users.by_username("carol")["email"] == "carol@example.org"


def test_register_shows_each_bad_field_and_keeps_what_was_typed(app):
    b = Browser(app)
    token = csrf_of(b.get("/register"))
    resp = b.post("/register", {"csrf_token": token, "username": "x", "password": "short",
                                "password_again": "short", "email": "not-an-email"})
    text = page_text(resp)
    assert resp.status_code == 400
    assert 'id="username-error"' in text and 'id="password-error"' in text and 'id="email-error"' in text
    assert 'value="not-an-email"' in text
    assert b.cookie("access_token_cookie") is None


def test_register_refuses_mismatched_passwords_and_taken_names(app):
    user(app, "dave")
    b = Browser(app)
    token = csrf_of(b.get("/register"))
    resp = b.post("/register", {"csrf_token": token, "username": "erin", "password": "long-password-1",
                                "password_again": "long-password-2"})
    assert resp.status_code == 400 and "the two passwords differ" in page_text(resp)
    resp = b.post("/register", {"csrf_token": token, "username": "dave", "password": "long-password-1",
                                "password_again": "long-password-1"})
    assert resp.status_code == 409 and app.extensions["ilgun"].users.by_username("erin") is None


def test_registration_closed_shows_a_message(app_factory):
    app = app_factory(ALLOW_REGISTRATION=False)
    resp = Browser(app).get("/register")
    assert resp.status_code == 403 and "Registration is closed" in page_text(resp)


def test_wrong_password_shows_an_error_and_sets_no_cookie(app):
    user(app, "frank")
    b = Browser(app)
    resp = b.login("frank", "wrong-password")
    assert resp.status_code == 401 and 'role="alert"' in page_text(resp)
    assert b.cookie("access_token_cookie") is None


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_sign_in_form_without_its_csrf_token_is_refused(app, token):
    app.extensions["ilgun"].users.create("gina", PASSWORD)
    b = Browser(app)
    b.get("/login")
    data = {"username": "gina", "password": PASSWORD}
    if token:
        data["csrf_token"] = token
    resp = b.post("/login", data)
    assert resp.status_code == 403 and "CSRF_FAILED" in page_text(resp)
    assert b.cookie("access_token_cookie") is None


def test_anonymous_visitor_is_sent_to_sign_in_and_back(app):
    app.extensions["ilgun"].users.create("hank", PASSWORD)
    b = Browser(app)
    resp = b.get("/jobs?status=queued")
    assert resp.status_code == 302 and resp.headers["Location"] == "/login?next=/jobs?status%3Dqueued"
    resp = b.login("hank", next_url="/jobs?status=queued")
    assert resp.headers["Location"] == "/jobs?status=queued"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_sign_in_never_redirects_off_site(app, target):
    app.extensions["ilgun"].users.create("ivan", PASSWORD)
    resp = Browser(app).login("ivan", next_url=target)
    assert resp.status_code == 302 and resp.headers["Location"] == "/jobs"


def test_sign_out_revokes_the_tokens_not_just_the_cookies(app):
    b = user(app, "judy")
    stolen_access, stolen_refresh = b.cookie("access_token_cookie"), b.cookie("refresh_token_cookie")
    resp = b.post("/logout", {"csrf_token": b.form_token()})
    assert resp.status_code == 302 and b.cookie("access_token_cookie") is None
    thief = Browser(app)
    thief.client.set_cookie("access_token_cookie", stolen_access)
    thief.client.set_cookie("refresh_token_cookie", stolen_refresh)
    assert thief.get("/jobs").status_code == 302  # back to sign in
    resp = thief.client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {stolen_access}"})
    assert_error(resp, 401, "TOKEN_REVOKED")


def test_sign_out_without_the_csrf_token_is_refused(app):
    b = user(app, "kim")
    resp = b.post("/logout")
    assert resp.status_code == 403 and b.cookie("access_token_cookie") is not None
    assert b.get("/jobs").status_code == 200


def test_an_expired_access_cookie_is_renewed_from_the_refresh_cookie_with_the_same_csrf(app_factory):
    app = app_factory(JWT_ACCESS_TOKEN_EXPIRES=1)
    b = user(app, "lena")
    old_access, form_token = b.cookie("access_token_cookie"), b.form_token("/jobs/new/download")
    time.sleep(1.2)
    resp = b.get("/jobs")
    assert resp.status_code == 200 and b.cookie("access_token_cookie") != old_access
    # a form rendered before the renewal still posts
    resp = b.post("/jobs/new/download", {"csrf_token": form_token, "url": "http://127.0.0.1:9/file"})
    assert resp.status_code == 303, page_text(resp)[:300]


# -- submitting ------------------------------------------------------------------------------
def test_every_kind_a_user_may_submit_has_a_form(app):
    b = user(app, "mia")
    text = page_text(b.get("/jobs/new"))
    kinds = set(re.findall(r'href="/jobs/new/([a-z_]+)"', text))
    assert kinds == set(app.extensions["ilgun"].kinds) - {"sleep"}  # sleep is admin-only here
    for kind in kinds:
        resp = b.get(f"/jobs/new/{kind}")
        form = page_text(resp)
        assert resp.status_code == 200 and 'name="csrf_token"' in form
        for label_for in re.findall(r'<label for="([^"]+)"', form):  # every label names a real control
            assert f'id="{label_for}"' in form
    assert 'type="file"' in page_text(b.get("/jobs/new/ocr"))
    assert b.get("/jobs/new/sleep").status_code == 404
    assert user(app, "root", role="admin").get("/jobs/new/sleep").status_code == 200


def test_a_download_submitted_by_form_becomes_a_job(app):
    b = user(app, "nina")
    resp = b.post("/jobs/new/download", {"csrf_token": b.form_token(), "url": "http://127.0.0.1:9/a.bin",
                                         "filename": "a.bin", "sha256": ""})
    assert resp.status_code == 303
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    job = app.extensions["ilgun"].jobs.get(job_id, None)
    assert job["kind"] == "download" and job["params"]["url"] == "http://127.0.0.1:9/a.bin"
    assert job["params"]["filename"] == "a.bin" and job["params"].get("sha256") is None  # empty: left out
    page = page_text(b.get(resp.headers["Location"]))
    assert job_id in page and 'data-poll-url="/api/v1/jobs/' in page


def test_a_refused_form_is_shown_again_with_the_reason_and_the_values(app_factory):
    app = app_factory(DOWNLOAD_ALLOW_PRIVATE_URLS=False)
    b = user(app, "omar")
    resp = b.post("/jobs/new/download", {"csrf_token": b.form_token(), "url": "http://10.0.0.1/x"})
    text = page_text(resp)
    assert resp.status_code == 400 and 'role="alert"' in text and 'value="http://10.0.0.1/x"' in text
    assert app.extensions["ilgun"].jobs.list(None)[1] == 0


def test_a_form_post_without_the_csrf_token_is_refused_and_creates_nothing(app):
    b = user(app, "pia")
    for token in (None, "0" * 32):
        data = {"url": "http://127.0.0.1:9/x"} | ({"csrf_token": token} if token else {})
        resp = b.post("/jobs/new/download", data)
        assert resp.status_code == 403 and "CSRF_FAILED" in page_text(resp)
    assert app.extensions["ilgun"].jobs.list(None)[1] == 0


def test_typed_fields_are_parsed_and_bad_numbers_named(app):
    b = user(app, "quinn")
    resp = b.post("/jobs/new/crawl", {"csrf_token": b.form_token(), "url": "http://127.0.0.1:9/",
                                      "max_pages": "many"})
    assert resp.status_code == 400 and 'id="p-max_pages-error"' in page_text(resp)
    resp = b.post("/jobs/new/crawl", {
        "csrf_token": b.form_token(), "url": "http://127.0.0.1:9/", "max_pages": "7", "delay": "0.5",
        "exclude": "\\.pdf$\n\n/private/", "extract": "title: h1\n*links: a@href"})
    assert resp.status_code == 303, page_text(resp)[:500]
    params = app.extensions["ilgun"].jobs.get(resp.headers["Location"].rsplit("/", 1)[1], None)["params"]
    assert params["max_pages"] == 7 and params["delay"] == 0.5 and params["respect_robots"] is False
    assert params["exclude"] == ["\\.pdf$", "/private/"]
    assert params["extract"] == {"title": {"selector": "h1", "all": False}, "links": {"selector": "a@href", "all": True}}


def test_an_upload_form_stores_the_file_and_submits_a_document_job(app):
    import io
    b = user(app, "rita")
    png = (ROOT / "tests" / "fixtures").glob("*.png")
    data = next(png, None)
    body = data.read_bytes() if data else _tiny_png()
    resp = b.post("/jobs/new/report", {"csrf_token": b.form_token(), "file": (io.BytesIO(body), "scan.png"),
                                       "ocr": "1"}, content_type="multipart/form-data")
    assert resp.status_code == 303, page_text(resp)[:500]
    job = app.extensions["ilgun"].jobs.get(resp.headers["Location"].rsplit("/", 1)[1], None)
    assert job["params"]["file_name"] == "scan.png" and job["params"]["ocr"] is True
    resp = b.post("/jobs/new/report", {"csrf_token": b.form_token()}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "Choose a file" in page_text(resp)


def _tiny_png() -> bytes:
    import io
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, "PNG")
    return out.getvalue()


# -- my jobs, a job's page, isolation ----------------------------------------------------------
def _submit_sleep(app, owner: Browser, n: int = 1, **params) -> list[str]:
    """Queued sleep jobs owned by ``owner`` (no dispatcher runs: they stay queued)."""
    svc = app.extensions["ilgun"]
    me = svc.users.by_username(owner.username)
    return [svc.submit(me, "sleep", {"duration": 0, **params})[0]["id"] for _ in range(n)]


@pytest.fixture
def sleepy_app(app_factory):
    return app_factory(SLEEP_KIND_FOR_EVERYONE=True)


def named(app, name) -> Browser:
    b = user(app, name)
    b.username = name
    return b


def test_my_jobs_pages_and_filters(sleepy_app):
    app = sleepy_app
    b = named(app, "sam")
    ids = _submit_sleep(app, b, 23)
    svc = app.extensions["ilgun"]
    svc.cancel(svc.users.by_username("sam"), ids[0])
    first = page_text(b.get("/jobs"))
    assert "23 jobs, page 1 of 2" in first and first.count("<progress") == 20 and 'rel="next"' in first
    assert page_text(b.get("/jobs?page=2")).count("<progress") == 3
    cancelled = page_text(b.get("/jobs?status=cancelled"))
    assert "1 job" in cancelled and ids[0][:8] in cancelled and ids[1][:8] not in cancelled
    assert "No jobs match" in page_text(b.get("/jobs?kind=download"))
    assert page_text(b.get("/jobs?status=bogus&page=x")).count("<progress") == 20  # ignored, not a 500
    queued = page_text(b.get(f"/jobs/{ids[5]}"))
    assert "in queue, starts in ~" in queued


def test_another_users_job_is_a_404_page_everywhere(sleepy_app):
    app = sleepy_app
    alice, mallory = named(app, "alice"), named(app, "mallory")
    job_id = _submit_sleep(app, alice, write_file=True)[0]
    token = mallory.form_token()
    for resp in (mallory.get(f"/jobs/{job_id}"), mallory.get(f"/jobs/{job_id}/files/sleep.txt"),
                 mallory.post(f"/jobs/{job_id}/cancel", {"csrf_token": token, "confirmed": "1"}),
                 mallory.post(f"/jobs/{job_id}/delete", {"csrf_token": token, "confirmed": "1"})):
        assert resp.status_code == 404 and resp.mimetype == "text/html"
        assert job_id not in page_text(resp)
    assert app.extensions["ilgun"].jobs.get(job_id, None)["status"] == "queued"
    assert alice.get(f"/jobs/{job_id}").status_code == 200


def test_actions_ask_for_confirmation_first(sleepy_app):
    app = sleepy_app
    b = named(app, "tom")
    job_id = _submit_sleep(app, b)[0]
    token = b.form_token()
    resp = b.post(f"/jobs/{job_id}/cancel", {"csrf_token": token})
    assert resp.status_code == 200 and 'name="confirmed" value="1"' in page_text(resp)
    assert app.extensions["ilgun"].jobs.get(job_id, None)["status"] == "queued"
    resp = b.post(f"/jobs/{job_id}/cancel", {"csrf_token": token, "confirmed": "1"})
    assert resp.status_code == 303 and app.extensions["ilgun"].jobs.get(job_id, None)["status"] == "cancelled"
    assert "Retry" in page_text(b.get(f"/jobs/{job_id}"))
    resp = b.post(f"/jobs/{job_id}/retry", {"csrf_token": token, "confirmed": "1"})
    assert resp.status_code == 303 and app.extensions["ilgun"].jobs.get(job_id, None)["status"] == "queued"
    b.post(f"/jobs/{job_id}/cancel", {"csrf_token": token, "confirmed": "1"})
    resp = b.post(f"/jobs/{job_id}/delete", {"csrf_token": token, "confirmed": "1"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/jobs"
    assert b.get(f"/jobs/{job_id}").status_code == 404
    assert b.post(f"/jobs/{job_id}/explode", {"csrf_token": token}).status_code == 404


def test_a_finished_jobs_page_shows_its_result_and_serves_its_files(sleepy_app):
    from service.runtime import start_worker_runtime
    app = sleepy_app
    b = named(app, "uma")
    start_worker_runtime(app, label="test")
    job_id = _submit_sleep(app, b, write_file=True, steps=2)[0]
    deadline = time.monotonic() + 15
    while app.extensions["ilgun"].jobs.get(job_id, None)["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    page = page_text(b.get(f"/jobs/{job_id}"))
    assert 'data-final="yes"' in page and "Result" in page and f"/jobs/{job_id}/files/sleep.txt" in page
    resp = b.get(f"/jobs/{job_id}/files/sleep.txt")
    assert resp.status_code == 200 and resp.headers["Content-Disposition"].startswith("attachment")
    assert resp.data


# -- the API keeps its header mode; cookies need the CSRF header --------------------------------
def test_the_api_with_a_bearer_token_needs_no_csrf_but_with_cookies_it_does(app):
    api = sign_up(app, app.test_client(), "vera")
    assert api.submit("download", {"url": "http://127.0.0.1:9/x"}).status_code == 202
    b = user(app, "walt")
    body = {"kind": "download", "params": {"url": "http://127.0.0.1:9/x"}}
    resp = b.client.post("/api/v1/jobs", json=body)
    assert_error(resp, 403, "CSRF_FAILED")
    resp = b.client.post("/api/v1/jobs", json=body, headers={"X-CSRF-TOKEN": b.cookie("csrf_access_token")})
    assert resp.status_code == 202
    # polling a job's JSON from a page: a GET needs no CSRF, and an unchanged job is a 304
    job_url = f"/api/v1/jobs/{resp.get_json()['data']['id']}"
    first = b.client.get(job_url)
    assert first.status_code == 200 and first.headers["ETag"]
    again = b.client.get(job_url, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


# -- errors, headers, assets -------------------------------------------------------------------
def test_an_unexpected_error_is_a_page_without_a_stack_trace(app, monkeypatch):
    b = user(app, "xena")

    def broken(*_a, **_kw):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(app.extensions["ilgun"], "list", broken)
    resp = b.get("/jobs")
    text = page_text(resp)
    assert resp.status_code == 500 and resp.mimetype == "text/html"
    assert "INTERNAL_ERROR" in text and "secret internals" not in text


def test_unknown_pages_are_html_for_browsers_and_json_for_api_clients(app):
    resp = Browser(app).get("/no/such/page")
    assert resp.status_code == 404 and resp.mimetype == "text/html" and "NOT_FOUND" in page_text(resp)
    assert_error(app.test_client().get("/no/such/page"), 404, "NOT_FOUND")
    assert_error(app.test_client().get("/api/v1/nope", headers=HTML), 404, "NOT_FOUND")


def test_pages_carry_a_strict_csp_and_use_no_inline_script_or_style(sleepy_app):
    app = sleepy_app
    b = named(app, "yuri")
    job_id = _submit_sleep(app, b)[0]
    for url in ("/login", "/jobs", "/jobs/new", "/jobs/new/crawl", "/jobs/new/cefr", f"/jobs/{job_id}"):
        resp = b.get(url) if url != "/login" else Browser(app).get(url)
        text = page_text(resp)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert " style=" not in text and "<style" not in text
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), url
        assert re.search(r'<meta name="viewport"', text)


def test_no_asset_comes_from_another_site():
    """Pages must work on machines with no internet: no CDN link in any template or static file."""
    for path in [*(ROOT / "service" / "templates").rglob("*.html"), *(ROOT / "service" / "static").rglob("*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not re.search(r"(src|href)=\"(https?:)?//", text), path
            assert "@import" not in text and "url(http" not in text, path


def test_static_assets_are_served_by_the_app(app):
    c = app.test_client()
    for name, mimetype in (("ilgun.css", "text/css"), ("ilgun.js", "text/javascript")):
        resp = c.get(f"/static/{name}")
        assert resp.status_code == 200 and resp.mimetype == mimetype and resp.data

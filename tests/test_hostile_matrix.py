"""Hostile input as matrices enumerated from app.url_map: IDOR (user B on user A's ids), path
traversal (every path parameter), bad tokens (API bearer and page cookies), SSRF spellings (the
submit-time URL check and the API), CSRF (page forms, and the API with cookies), login brute force.
A route added later is covered without editing this file; a route parameter it does not know fails
test_every_route_parameter_is_known_to_the_matrices. Fixed-list checks of the same themes:
tests/test_api_security.py, tests/test_api_auth.py, tests/test_pages.py and tests/test_ssrf.py
(redirects and DNS names that lead to private addresses, end to end against loopback servers).
Inputs tried and 5xx answers per matrix go to test-artifacts/reliability/hostile.json.

Network rule: no connection leaves loopback (a trap fails any other connect); SSRF addresses are
only classified, and submitted jobs never run (no dispatcher after the fixture's setup).
"""
from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import sqlalchemy as sa

from service.errors import UrlNotAllowed
from service.net.ssrf import UrlGuard, classify_address
from service.pages.jobs import ACTIONS
from service.store import schema
from service.web.openapi import ASSETS
from tests.conftest import PASSWORD, Api, assert_error, assert_ok, make_app, sign_up

# no generated request may make the app connect anywhere but loopback
pytestmark = pytest.mark.usefixtures("loopback_only")

ARTIFACT = Path(__file__).resolve().parent.parent / "test-artifacts" / "reliability" / "hostile.json"
RESULTS: dict[str, dict[str, int]] = {}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
ID_PARAMS = {"job_id": "JOB_NOT_FOUND", "file_id": "FILE_NOT_FOUND"}  # B on A's id: 404 with this code
OUTSIDE_MARKER = "ILGUN-HOSTILE-OUTSIDE-MARKER-41c9"


class Tally:
    """Counts the inputs of one matrix and its 5xx answers; writes them to hostile.json on exit."""

    def __init__(self, matrix: str):
        self.matrix, self.inputs, self.server_errors = matrix, 0, 0

    def __call__(self, resp, what=""):
        self.inputs += 1
        self.server_errors += resp.status_code >= 500
        assert resp.status_code < 500 and b"Traceback" not in resp.data, (what, resp.status_code, resp.data[:300])
        return resp

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        entry = RESULTS.setdefault(self.matrix, {"inputs": 0, "server_errors": 0})
        entry["inputs"] += self.inputs
        entry["server_errors"] += self.server_errors
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(RESULTS, indent=2, sort_keys=True) + "\n")


class Web:
    """A browser: signs in through the sign-in form and keeps the JWT cookies."""

    def __init__(self, app, username: str | None = None):
        self.client = app.test_client()
        if username:
            token = CSRF_FIELD.search(self.open("GET", "/login").get_data(as_text=True)).group(1)
            resp = self.open("POST", "/login", {"csrf_token": token, "username": username, "password": PASSWORD})
            assert resp.status_code == 302, resp.get_data(as_text=True)[:300]

    def open(self, method: str, url: str, data=None, **kw):
        return self.client.open(url, method=method, data=data, headers={**HTML, **kw.pop("headers", {})}, **kw)

    def cookie(self, name: str) -> str | None:
        c = self.client.get_cookie(name)
        return c.value if c else None

    @property
    def csrf(self) -> str:
        return self.cookie("csrf_access_token")


@dataclass
class World:
    app: object
    data: Path
    alice: Api
    bob: Api
    alice_web: Web
    bob_web: Web
    done: dict       # alice's succeeded job, with sleep.txt
    queued: dict     # alice's queued job (no dispatcher runs after setup)
    upload: dict     # alice's upload


@pytest.fixture(scope="module")
def world(tmp_path_factory, migrated_db):
    import io

    from werkzeug.security import generate_password_hash

    from service.runtime import start_worker_runtime, stop_worker_runtime
    data = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:  # cheap hashes, as conftest's fast_password_hashing
        mp.setattr("service.store.users.generate_password_hash",
                   lambda password: generate_password_hash(password, method="pbkdf2:sha256:1000"))
        app = make_app(data, migrated_db, DOWNLOAD_ALLOW_PRIVATE_URLS=False, SLEEP_KIND_FOR_EVERYONE=True)
        client = app.test_client()
        alice, bob = sign_up(app, client, "alice"), sign_up(app, client, "bob")
        sign_up(app, client, "admin", role="admin")
        start_worker_runtime(app, label="hostile-setup")
        done = alice.wait(assert_ok(alice.submit("sleep", {"duration": 0, "write_file": True}), 202)["id"])
        stop_worker_runtime(app, timeout=2)
        assert done["status"] == "succeeded" and [f["name"] for f in done["files"]] == ["sleep.txt"]
        queued = assert_ok(alice.submit("sleep", {"duration": 0}), 202)
        upload = assert_ok(client.post("/api/v1/files", headers=alice.headers(), content_type="multipart/form-data",
                                       data={"file": (io.BytesIO(b"%PDF-1.4\n%%EOF\n"), "a.pdf")}), 201)
        (data / "outside-secret.txt").write_text(OUTSIDE_MARKER)
        yield World(app, data, alice, bob, Web(app, "alice"), Web(app, "bob"), done, queued, upload)
    stop_worker_runtime(app, timeout=2)
    app.extensions["ilgun"].engine.dispose()


# -- the URL map ------------------------------------------------------------------------------

def routes(app):
    """(rule, method) for every route; HEAD and OPTIONS aside."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def is_page(rule) -> bool:
    return rule.endpoint.startswith("pages_")


def values_for(world: World, rule) -> dict:
    """A legitimate value of alice's for each of the rule's parameters; unknown ones fail."""
    values = {"job_id": world.done["id"], "file_id": world.upload["id"], "name": "sleep.txt", "action": "cancel",
              "kind_name": "download"}
    if rule.endpoint == "static":
        values["filename"] = sorted(p.name for p in Path(world.app.static_folder).iterdir())[0]
    elif rule.endpoint == "openapi.docs_asset":
        values["filename"] = sorted(ASSETS)[0]
    unknown = set(rule.arguments) - set(values)
    assert not unknown, f"{rule.rule} ({rule.endpoint}): parameter(s) {sorted(unknown)} unknown to the hostile " \
                        "matrices; give them a legitimate value in values_for (and an id code in ID_PARAMS)"
    return values


def url_of(rule, values: dict) -> str:
    return PARAM.sub(lambda m: values[m.group(1)], rule.rule)


def as_api(api: Api, method: str, url: str, **kw):
    return api.client.open(url, method=method, headers=api.headers(kw.pop("headers", None)), **kw)


def snapshot(world: World) -> dict:
    """Everything a refused request must leave alone: users, jobs, files, uploads, revoked tokens."""
    state = {}
    with world.app.extensions["ilgun"].engine.connect() as conn:
        for table in (schema.users, schema.jobs, schema.job_files, schema.uploads, schema.token_blocklist):
            columns = [c for c in table.c if c.name != "last_seen_at"]
            state[table.name] = sorted(repr(tuple(row)) for row in conn.execute(sa.select(*columns)))
    root = world.app.extensions["ilgun"].workspace.root
    state["files"] = sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*")
                            if p.is_file() and p.relative_to(root).parts[0] != "locks")
    return state


def test_every_route_parameter_is_known_to_the_matrices(world):
    for rule in world.app.url_map.iter_rules():
        values_for(world, rule)


# -- IDOR -------------------------------------------------------------------------------------

def test_every_id_route_answers_another_user_404_and_changes_nothing(world):
    before, content = snapshot(world), world.alice.get(f"/api/v1/jobs/{world.done['id']}/files/sleep.txt").data
    covered = set()
    with Tally("idor") as seen:
        for rule, method in routes(world.app):
            ids = sorted(set(rule.arguments) & set(ID_PARAMS))
            if not ids:
                continue
            for action in (sorted(ACTIONS) if "action" in rule.arguments else ["cancel"]):
                values = {**values_for(world, rule), "action": action}
                strangers = {k: str(uuid.uuid4()) for k in ids}
                url, ghost = url_of(rule, values), url_of(rule, {**values, **strangers})
                codes = {ID_PARAMS[k] for k in ids}
                if is_page(rule):
                    # the owner reaches it (a GET, or the confirmation page of an unconfirmed action) ...
                    owner = seen(world.alice_web.open(method, url, {"csrf_token": world.alice_web.csrf}), url)
                    assert owner.status_code == 200, (method, url, owner.status_code)
                    form = {"csrf_token": world.bob_web.csrf, "confirmed": "1"}
                    resp = seen(world.bob_web.open(method, url, form), url)  # ... B gets the not-found page
                    assert resp.status_code == 404 and resp.mimetype == "text/html", (method, url, resp.status_code)
                    text = resp.get_data(as_text=True)
                    assert any(code in text for code in codes) and not any(values[k] in text for k in ids)
                    assert seen(world.bob_web.open(method, ghost, form), ghost).status_code == 404
                else:
                    resp = seen(as_api(world.bob, method, url), url)
                    # exactly the answer for an id that does not exist (which echoes the id asked for)
                    body = json.dumps(assert_error(resp, 404, codes))
                    other = json.dumps(assert_error(seen(as_api(world.bob, method, ghost), ghost), 404, codes))
                    for k in ids:
                        body, other = body.replace(values[k], "<id>"), other.replace(strangers[k], "<id>")
                    assert body == other, (method, url)
                assert content not in resp.data
                covered.add((rule.endpoint, method))
    assert snapshot(world) == before
    assert len(covered) >= 12, sorted(covered)  # today 13: 10 API and 3 page (route, method)s


# -- path traversal ---------------------------------------------------------------------------

TRAVERSALS = [  # as sent on the wire
    "../../secrets.json", "../" * 8 + "secrets.json", "..%2f..%2fsecrets.json", "..%2F" * 8 + "secrets.json",
    "%2e%2e/%2e%2e/secrets.json", "%2e%2e%2f" * 6 + "secrets.json", "/etc/passwd", "%2Fetc%2Fpasswd",
    "....//....//secrets.json", "....%2F%2F" * 4 + "secrets.json", "..././..././secrets.json", "%2e%2e", "..",
    "sleep.txt%00", "%00", "..%00/secrets.json", "secrets.json%00.txt", "..\\..\\secrets.json",
    "..%5c..%5csecrets.json", "%5Cetc%5Cpasswd", "C:%5CWindows%5Cwin.ini", "%c0%ae%c0%ae/%c0%ae%c0%ae/secrets.json",
    "%e2%80%a4%e2%80%a4/secrets.json", "%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/secrets.json",
    "..%252f..%252fsecrets.json", "..;/..;/secrets.json", "%2e%2e%2f" * 6 + "outside-secret.txt",
]


def test_traversal_in_every_path_parameter_is_4xx_and_leaks_nothing(world):
    secrets = json.loads((world.data / "secrets.json").read_text())
    forbidden = [*map(str, secrets.values()), (world.data / "secrets.json").read_text(), OUTSIDE_MARKER, "root:x:0:0"]
    before = snapshot(world)
    with Tally("path_traversal") as seen:
        for rule, method in routes(world.app):
            good = values_for(world, rule)
            for param in sorted(rule.arguments):
                for payload in TRAVERSALS:
                    url = url_of(rule, {**good, param: payload})
                    if is_page(rule):  # no "confirmed": an action would only ask first
                        resp = seen(world.alice_web.open(method, url, {"csrf_token": world.alice_web.csrf}), url)
                    else:
                        resp = seen(as_api(world.alice, method, url), url)
                    assert 400 <= resp.status_code < 500, (method, url, resp.status_code, resp.data[:200])
                    text = resp.get_data(as_text=True)
                    assert not [s for s in forbidden if s in text], (method, url)
    assert snapshot(world) == before
    assert seen.inputs >= 15 * len(TRAVERSALS)


# -- tokens -----------------------------------------------------------------------------------

def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def bad_tokens(world) -> dict[str, tuple[str, str]]:
    """name -> (token, the API's error_code). All carry a csrf claim, so each works as a cookie too."""
    app, key = world.app, world.app.config["JWT_SECRET_KEY"]
    real_token = world.alice_web.cookie("access_token_cookie")
    real = jwt.decode(real_token, key, algorithms=["HS256"])
    admin_id = str(app.extensions["ilgun"].users.by_username("admin")["id"])
    now = int(time.time())
    head, _, sig = real_token.split(".")
    signed_out = Web(app, "alice")
    revoked, refresh = signed_out.cookie("access_token_cookie"), signed_out.cookie("refresh_token_cookie")
    assert signed_out.open("POST", "/logout", {"csrf_token": signed_out.csrf}).status_code == 302
    app.extensions["ilgun"].users.create("ghost", PASSWORD)
    ghost = Web(app, "ghost").cookie("access_token_cookie")
    with app.extensions["ilgun"].engine.begin() as conn:
        conn.execute(schema.users.delete().where(schema.users.c.username == "ghost"))
    admin_claims = {**real, "sub": admin_id, "role": "admin"}
    return {
        "garbage": ("garbage", "TOKEN_INVALID"),
        "forged-signature": (jwt.encode(admin_claims, "not-the-key-" * 4, algorithm="HS256"), "TOKEN_INVALID"),
        "tampered-payload": (f"{head}.{b64(admin_claims)}.{sig}", "TOKEN_INVALID"),
        "alg-none": (f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(admin_claims)}.", "TOKEN_INVALID"),
        "expired": (jwt.encode({**real, "jti": str(uuid.uuid4()), "iat": now - 3600, "nbf": now - 3600,
                                "exp": now - 60}, key, algorithm="HS256"), "TOKEN_EXPIRED"),
        "revoked-after-sign-out": (revoked, "TOKEN_REVOKED"),
        "refresh-as-access": (refresh, "TOKEN_INVALID"),
        "deleted-user": (ghost, "USER_NOT_FOUND"),
    }


def csrf_claim(token: str, default: str) -> str:
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("csrf", default)
    except jwt.PyJWTError:
        return default


def with_cookie(app, token: str, csrf: str) -> Web:
    """A browser holding ``token`` as its access cookie and the token's own CSRF value."""
    web = Web(app)
    csrf = csrf_claim(token, csrf)
    web.client.set_cookie("access_token_cookie", token)
    web.client.set_cookie("csrf_access_token", csrf)
    return web


def test_bad_tokens_on_every_protected_route_api_and_pages(world, bad_tokens):
    app, anonymous = world.app, Web(world.app)
    csrf = jwt.decode(world.alice_web.cookie("access_token_cookie"), options={"verify_signature": False})["csrf"]
    before = snapshot(world)
    protected_api, protected_pages = 0, 0
    with Tally("tokens") as seen:
        for rule, method in routes(app):
            url = url_of(rule, values_for(world, rule))
            form = {"csrf_token": csrf, "confirmed": "1", "url": "https://example.com/x"}
            if is_page(rule):
                expected = seen(anonymous.open(method, url, form), url)  # a bad cookie is no cookie at all
                protected_pages += expected.status_code in (302, 403)
                for name, (token, _) in bad_tokens.items():
                    sent = {**form, "csrf_token": csrf_claim(token, csrf)}
                    resp = seen(with_cookie(app, token, csrf).open(method, url, sent), f"{name} {url}")
                    assert (resp.status_code, resp.headers.get("Location")) == \
                           (expected.status_code, expected.headers.get("Location")), (name, method, url)
                    assert resp.status_code != 403 or "CSRF_FAILED" in resp.get_data(as_text=True)
                continue
            public = seen(as_api(Api(anonymous.client), method, url), url).status_code != 401
            if public or rule.endpoint == "auth.refresh":  # refresh tokens' own rules: tests/test_api_auth.py
                continue
            protected_api += 1
            for name, (token, code) in bad_tokens.items():
                bearer = Api(anonymous.client, token)
                assert_error(seen(as_api(bearer, method, url, json={"kind": "sleep"}), f"{name} {url}"), 401, code)
                cookie = with_cookie(app, token, csrf).client  # the same token as a cookie, CSRF header and all
                headers = {"X-CSRF-TOKEN": csrf_claim(token, csrf)}
                resp = seen(cookie.open(url, method=method, headers=headers, json={}), f"{name} {url}")
                assert_error(resp, 401, code)
    assert snapshot(world) == before
    assert protected_api >= 15 and protected_pages >= 6, (protected_api, protected_pages)


# -- SSRF -------------------------------------------------------------------------------------

SSRF = [  # (host as written in a URL, why it is refused); the redirect and DNS forms: tests/test_ssrf.py
    ("127.0.0.1", "loopback"), ("[::1]", "loopback"), ("0.0.0.0", "unspecified"), ("[::]", "unspecified"),
    ("169.254.169.254", "link-local"), ("10.0.0.1", "private"), ("10.255.255.254", "private"),
    ("172.16.0.1", "private"), ("172.31.255.254", "private"), ("192.168.0.1", "private"),
    ("192.168.255.254", "private"), ("localhost", "loopback"), ("LOCALHOST.", "loopback"),
    # one number (decimal, octal, hex), dotted octal and hex, short forms
    ("2130706433", "loopback"), ("2852039166", "link-local"), ("167772161", "private"), ("3232235521", "private"),
    ("017700000001", "loopback"), ("0177.0.0.1", "loopback"), ("0251.0376.0251.0376", "link-local"),
    ("012.0.0.1", "private"), ("127.000.000.001", "loopback"), ("0x7f000001", "loopback"),
    ("0x7f.0.0.1", "loopback"), ("0X7F.0X0.0X0.0X1", "loopback"), ("0xA9FEA9FE", "link-local"),
    ("0xac.0x10.0.1", "private"), ("127.1", "loopback"), ("0x7f.1", "loopback"), ("0177.1", "loopback"),
    ("10.1", "private"), ("192.168.1", "private"), ("169.254.43518", "link-local"), ("0", "unspecified"),
    # IPv6 forms that carry an IPv4 address: mapped, NAT64, 6to4; and IPv6's own private ranges
    ("[::ffff:127.0.0.1]", "loopback"), ("[::ffff:7f00:1]", "loopback"), ("[::ffff:a9fe:a9fe]", "link-local"),
    ("[::ffff:10.0.0.1]", "private"), ("[0:0:0:0:0:ffff:c0a8:1]", "private"), ("[64:ff9b::7f00:1]", "loopback"),
    ("[64:ff9b::a9fe:a9fe]", "link-local"), ("[2002:7f00:1::1]", "loopback"), ("[2002:a9fe:a9fe::1]", "link-local"),
    ("[2002:ac10:1::]", "private"), ("[fe80::1]", "link-local"), ("[fe80::1%25eth0]", "link-local"),
    ("[fd00:ec2::254]", "private"),
]


@pytest.mark.parametrize("host,reason", SSRF, ids=[h for h, _ in SSRF])
def test_private_address_spellings_are_refused_at_submit(world, host, reason):
    before = snapshot(world)
    urls = [f"http://{host}/", f"https://{host}:8443/latest/meta-data/?x=1"]
    with Tally("ssrf") as seen:
        for url in urls:
            with pytest.raises(UrlNotAllowed) as info:
                UrlGuard().check_url(url)
            seen.inputs += 1
            assert (info.value.code, info.value.details["reason"]) == ("URL_NOT_ALLOWED", reason)
            assert classify_address(info.value.details["address"].split("%")[0]) == reason
            for kind in ("download", "crawl"):
                body = assert_error(seen(world.alice.submit(kind, {"url": url}), url), 400, "URL_NOT_ALLOWED")
                assert (body["details"] or {}).get("reason", reason) == reason
    assert snapshot(world) == before  # no job was created


# -- CSRF -------------------------------------------------------------------------------------

def test_every_form_post_without_its_csrf_token_is_refused(world):
    alice, app = world.alice_web, world.app
    before = snapshot(world)
    forms = 0
    with Tally("csrf") as seen:
        for rule, method in routes(app):
            if method == "GET":
                continue
            values = values_for(world, rule)
            values["job_id"] = world.queued["id"]  # an action that got through would change it
            for word in (sorted(ACTIONS) if "action" in rule.arguments else
                         sorted(app.extensions["ilgun"].kinds) if "kind_name" in rule.arguments else [None]):
                url = url_of(rule, {**values, "action": word, "kind_name": word})
                form = {"confirmed": "1", "url": "https://example.com/x", "duration": "0", "username": "alice",
                        "password": PASSWORD, "password_again": PASSWORD}
                if is_page(rule):
                    forms += 1
                    for token in (None, "", "forged", world.bob_web.csrf):  # missing, empty, made up, B's
                        sent = form if token is None else {**form, "csrf_token": token}
                        resp = seen(alice.open(method, url, sent), url)
                        assert resp.status_code == 403 and "CSRF_FAILED" in resp.get_data(as_text=True), (url, token)
                        assert "access_token_cookie=" not in str(resp.headers.getlist("Set-Cookie")), url
                    continue
                if seen(app.test_client().open(url, method=method, json={}), url).status_code != 401:
                    continue  # public (login, register): no cookie authority to abuse
                for header in ({}, {"X-CSRF-TOKEN": world.bob_web.csrf}, {"X-CSRF-TOKEN": "forged"}):
                    resp = seen(alice.client.open(url, method=method, headers=header,
                                                  json={"kind": "download", "params": {"url": "https://example.com/"}}))
                    assert_error(resp, 403, "CSRF_FAILED")
    assert snapshot(world) == before
    assert forms >= 7, forms
    assert alice.open("GET", "/jobs").status_code == 200  # still signed in: the logout was refused too


# -- login brute force ------------------------------------------------------------------------

def login_attempt(web: Web, door: str, username: str, password: str):
    if door == "api":
        return web.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    token = CSRF_FIELD.search(web.open("GET", "/login").get_data(as_text=True)).group(1)
    return web.open("POST", "/login", {"csrf_token": token, "username": username, "password": password})


@pytest.mark.parametrize("doors", [("page",), ("api",), ("page", "api")], ids="+".join)
def test_login_brute_force_is_limited(app_factory, doors):
    """RATELIMIT_LOGIN wrong passwords through these doors (taking turns: the page and the API
    share one limit), then every one of them answers 429, to the right password too, and signs
    nobody in."""
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="5 per minute")
    app.extensions["ilgun"].users.create("carol", PASSWORD)
    web = Web(app)
    with Tally("login_brute_force") as seen:
        for attempt in range(5):
            assert seen(login_attempt(web, doors[attempt % len(doors)], "carol", "guess-guess")).status_code == 401
        for door in doors:
            for password in ("guess-guess", PASSWORD):
                resp = seen(login_attempt(web, door, "carol", password))
                text = resp.get_data(as_text=True)
                assert resp.status_code == 429 and "RATE_LIMITED" in text, (door, password, resp.status_code)
                assert "access_token" not in text and web.cookie("access_token_cookie") is None

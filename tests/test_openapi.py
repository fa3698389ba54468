"""The OpenAPI document and Swagger UI: the document is valid, describes every route (and no
route that does not exist), and real answers match it; the docs page loads only its own assets."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate as validate_spec

from service.kinds import KINDS
from service.web.openapi_schemas import KIND_PARAMS
from tests.conftest import sign_up
from tests.integration.gunicorn_harness import LoopbackHTTPServer

METHODS = {"get", "put", "post", "delete", "patch"}
DOCS_ENDPOINTS = {"static", "openapi.docs", "openapi.docs_init", "openapi.docs_asset"}
# Being added in parallel: documented already, tolerated while not registered yet.
TOLERATED_ABSENT = {("get", "/api/v1/jobs/{job_id}/log"), ("get", "/metrics")}


def template(rule: str) -> str:
    """Flask's /jobs/<job_id>/files/<path:name> as OpenAPI's /jobs/{job_id}/files/{name}."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def app_operations(app) -> set[tuple[str, str]]:
    """The API's routes: not the documentation's own, the HTML pages (service/pages) or their static files."""
    return {(m.lower(), template(r.rule)) for r in app.url_map.iter_rules()
            if r.endpoint not in DOCS_ENDPOINTS and not r.endpoint.startswith("pages_") and r.endpoint != "static"
            for m in r.methods - {"HEAD", "OPTIONS"}}


@pytest.fixture
def doc(client) -> dict:
    resp = client.get("/api/v1/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def schema_validator(doc: dict, schema: dict) -> OAS30Validator:
    return OAS30Validator({**schema, "components": doc["components"]}, format_checker=oas30_format_checker)


class Conformance:
    """Checks a real answer against the document: its status is documented for the route, its
    content type is one of those documented, its JSON body matches the schema, and an error's
    code is one the response names."""

    def __init__(self, app, doc):
        self.doc, self.adapter = doc, app.url_map.bind("localhost")

    def __call__(self, resp, method: str, url: str, status: int | None = None):
        rule, _ = self.adapter.match(url.split("?")[0], method=method.upper(), return_rule=True)
        operation = self.doc["paths"][template(rule.rule)][method]
        assert status is None or resp.status_code == status, (resp.status_code, resp.data[:300])
        spec = operation["responses"].get(str(resp.status_code))
        assert spec is not None, f"{method.upper()} {rule.rule}: {resp.status_code} is not documented"
        if "X-Request-ID" in spec.get("headers", {}):
            assert resp.headers.get("X-Request-ID")
        content = spec.get("content")
        if not content:
            assert not resp.data
            return None
        if "*/*" in content:
            return resp.data
        assert resp.mimetype in content, (resp.mimetype, list(content))
        if resp.mimetype != "application/json":
            return resp.data
        body = resp.get_json()
        errors = sorted(schema_validator(self.doc, content["application/json"]["schema"]).iter_errors(body),
                        key=str)
        assert not errors, f"{method.upper()} {rule.rule} {resp.status_code}: {errors[0]}\n{body}"
        if body.get("success") is False:
            assert body["error_code"] in spec["x-error-codes"], (body["error_code"], spec["x-error-codes"])
            assert f"`{body['error_code']}`" in spec["description"]
        return body


@pytest.fixture
def conform(app, doc):
    return Conformance(app, doc)


def test_document_is_valid_openapi_3(doc):
    validate_spec(doc)
    assert doc["openapi"] == "3.0.3" and doc["servers"] == [{"url": "/"}]


def test_every_route_is_documented_and_every_documented_route_exists(app, doc):
    documented = {(m, path) for path, item in doc["paths"].items() for m in item if m in METHODS}
    registered = app_operations(app)
    assert registered - documented == set(), "routes missing from the document"
    assert (documented - registered) - TOLERATED_ABSENT == set(), "documented routes that do not exist"


def test_every_kind_has_its_params_documented(doc):
    assert set(KIND_PARAMS) == set(KINDS)
    assert doc["components"]["schemas"]["Job"]["properties"]["kind"]["enum"] == sorted(KINDS)


def test_document_is_built_once_per_app(app, client):
    first = client.get("/api/v1/openapi.json").data
    cached = app.extensions["ilgun_openapi"]
    assert client.get("/api/v1/openapi.json").data == first == cached
    assert app.extensions["ilgun_openapi"] is cached


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.spec_url = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])
        if a.get("data-spec-url"):
            self.spec_url = a["data-spec-url"]


def test_docs_page_loads_only_same_origin_assets(client):
    resp = client.get("/api/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = resp.get_data(as_text=True)
    assert "<script>" not in html and "<style" not in html  # nothing inline: the CSP allows none
    page = _Assets()
    page.feed(html)
    assert len(page.urls) >= 4
    expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//") and "://" not in url, url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.mimetype == expected[url[url.rindex("."):]], (url, asset.mimetype)
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get(page.spec_url).status_code == 200


@pytest.mark.parametrize("path", ["../__init__.py", "..%2f__init__.py", "%2e%2e/__init__.py",
                                  "swagger-ui.css/../../__init__.py", "/etc/passwd", "index.html",
                                  "swagger-ui.js.map", "..", ""])
def test_docs_assets_refuse_other_files(client, path):
    resp = client.get(f"/api/docs/static/{path}")
    assert resp.status_code in (400, 404) and b"swagger_ui_path" not in resp.data and b"root:" not in resp.data


def test_docs_assets_refuse_traversal_even_if_listed(client, monkeypatch):
    monkeypatch.setattr("service.web.openapi.ASSETS", frozenset({"../__init__.py", "../../openapi.py"}))
    for path in ("../__init__.py", "../../openapi.py"):
        resp = client.get(f"/api/docs/static/{path}")
        assert resp.status_code == 404 and b"import" not in resp.data


@pytest.mark.parametrize("params,accepted", [
    ({"url": "http://127.0.0.1:9/a.bin"}, True),
    ({"url": "  https://example.com/a  ", "filename": "report.pdf", "sha256": "A" * 64}, True),
    ({"url": "http://127.0.0.1:9/a", "filename": None, "sha256": None}, True),
    ({}, False), ({"url": ""}, False), ({"url": 5}, False), ({"url": "ftp://example.com/a"}, False),
    ({"url": "http://u:p@example.com/a"}, False), ({"url": "http://example.com/a b"}, False),
    ({"url": "http://example.com/a", "other": 1}, False), ({"url": "http://example.com/a", "sha256": "abc"}, False),
    ({"url": "http://example.com/a", "filename": ".hidden"}, False),
    ({"url": "http://example.com/a", "filename": "a/b"}, False),
    ({"url": "http://example.com/a", "filename": "CON.txt"}, False),
    ({"url": "http://example.com/a", "filename": " x"}, False),
])
def test_download_params_schema_matches_validation(app, doc, alice, params, accepted):
    schema_ok = schema_validator(doc, doc["components"]["schemas"]["SubmitJob"]).is_valid(
        {"kind": "download", "params": params})
    resp = alice.submit("download", params)
    assert (resp.status_code == 202, schema_ok) == (accepted, accepted), resp.get_json()


@pytest.mark.parametrize("params,accepted", [
    ({}, True), ({"duration": 0.5, "steps": 3}, True), ({"fail": True}, True), ({"fail": None}, True),
    ({"fail": "transient", "succeed_on_attempt": 2}, True), ({"write_file": True, "log_steps": False}, True),
    ({"steps": 2.0}, False),
    ({"duration": 3601}, False), ({"duration": -1}, False), ({"steps": 0}, False), ({"steps": 1001}, False),
    ({"fail": "nope"}, False), ({"duration": None}, False), ({"write_file": True, "extra": "x"}, False),
    ({"duration": "2"}, False), ({"duration": True}, False), ({"steps": 2.7}, False), ({"fail": []}, False),
    ({"fail": {}}, False), ({"fail": "transient", "succeed_on_attempt": "x"}, False), ({"write_file": 1}, False),
])
def test_sleep_params_schema_matches_validation(doc, admin, params, accepted):
    schema_ok = schema_validator(doc, doc["components"]["schemas"]["SubmitJob"]).is_valid(
        {"kind": "sleep", "params": params})
    resp = admin.submit("sleep", params)
    assert (resp.status_code == 202, schema_ok) == (accepted, accepted), resp.get_json()


def test_auth_answers_match_the_document(app, client, conform, alice):
    conform(client.post("/api/v1/auth/register", json={"username": "carol", "password": "a long password",
                                                       "email": "c@example.com"}), "post", "/api/v1/auth/register", 201)
    conform(client.post("/api/v1/auth/register", json={"username": "carol", "password": "a long password"}),
            "post", "/api/v1/auth/register", 409)
    conform(client.post("/api/v1/auth/register", json={"username": "x"}), "post", "/api/v1/auth/register", 400)
    conform(client.post("/api/v1/auth/register", data="{", content_type="application/json"),
            "post", "/api/v1/auth/register", 400)
    conform(client.post("/api/v1/auth/login", data="x", content_type="text/plain"), "post", "/api/v1/auth/login", 400)
    tokens = conform(client.post("/api/v1/auth/login", data={"username": "carol", "password": "a long password"}),
                     "post", "/api/v1/auth/login", 200)["data"]
    conform(client.post("/api/v1/auth/login", json={"username": "carol", "password": "wrong password"}),
            "post", "/api/v1/auth/login", 401)
    conform(alice.get("/api/v1/auth/me"), "get", "/api/v1/auth/me", 200)
    conform(client.get("/api/v1/auth/me"), "get", "/api/v1/auth/me", 401)
    conform(client.get("/api/v1/auth/me", headers={"Authorization": "Bearer nope"}), "get", "/api/v1/auth/me", 401)
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    conform(client.post("/api/v1/auth/refresh", headers=refresh), "post", "/api/v1/auth/refresh", 200)
    conform(client.post("/api/v1/auth/refresh", headers=refresh), "post", "/api/v1/auth/refresh", 401)
    conform(alice.post("/api/v1/auth/refresh"), "post", "/api/v1/auth/refresh", 401)
    conform(alice.post("/api/v1/auth/logout", json={"refresh_token": "x"}), "post", "/api/v1/auth/logout", 200)
    conform(alice.get("/api/v1/auth/me"), "get", "/api/v1/auth/me", 401)


def test_job_answers_match_the_document(app, client, conform, admin, alice):
    job = conform(admin.submit("sleep", {"duration": 60}), "post", "/api/v1/jobs", 202)["data"]
    url = f"/api/v1/jobs/{job['id']}"
    key = {"Idempotency-Key": "k-1"}
    conform(alice.submit("download", {"url": "http://127.0.0.1:9/x"}, headers=key), "post", "/api/v1/jobs", 202)
    conform(alice.submit("download", {"url": "http://127.0.0.1:9/x"}, headers=key), "post", "/api/v1/jobs", 200)
    conform(alice.submit("download", {"url": "x"}, headers={"Idempotency-Key": "k" * 201}), "post", "/api/v1/jobs",
            400)
    conform(alice.submit("sleep"), "post", "/api/v1/jobs", 403)
    conform(alice.submit("nope"), "post", "/api/v1/jobs", 404)
    conform(alice.submit("download", {"url": "ftp://example.com/x"}), "post", "/api/v1/jobs", 400)
    conform(alice.post("/api/v1/jobs", data="{", content_type="application/json"), "post", "/api/v1/jobs", 400)
    conform(client.post("/api/v1/jobs", json={"kind": "sleep"}), "post", "/api/v1/jobs", 401)
    conform(admin.get("/api/v1/jobs?page_size=1&status=queued&kind=sleep"), "get", "/api/v1/jobs", 200)
    conform(admin.get("/api/v1/jobs?status=&kind="), "get", "/api/v1/jobs", 200)
    conform(admin.get("/api/v1/jobs?status=nope"), "get", "/api/v1/jobs", 400)
    conform(admin.get("/api/v1/jobs?page_size=101"), "get", "/api/v1/jobs", 400)
    conform(admin.get(url), "get", url, 200)
    conform(alice.get(url), "get", url, 404)
    conform(admin.get(f"{url}/files"), "get", f"{url}/files", 200)
    conform(admin.get(f"{url}/files/a.txt"), "get", f"{url}/files/a.txt", 404)
    conform(admin.get(f"{url}/files/a/b"), "get", f"{url}/files/a/b", 400)
    conform(admin.delete(url), "delete", url, 200)  # queued: deletable
    job = admin.submit("sleep", {"duration": 60}).get_json()["data"]
    url = f"/api/v1/jobs/{job['id']}"
    conform(admin.post(f"{url}/retry"), "post", f"{url}/retry", 409)
    conform(admin.post(f"{url}/cancel"), "post", f"{url}/cancel", 200)
    conform(admin.post(f"{url}/cancel"), "post", f"{url}/cancel", 409)
    conform(admin.post(f"{url}/retry"), "post", f"{url}/retry", 202)
    conform(alice.get("/api/v1/stats"), "get", "/api/v1/stats", 200)
    conform(admin.get("/api/v1/stats"), "get", "/api/v1/stats", 200)
    conform(client.get("/healthz"), "get", "/healthz", 200)
    conform(client.get("/readyz"), "get", "/readyz", 200)
    conform(client.get("/api/v1/openapi.json"), "get", "/api/v1/openapi.json", 200)
    conform(admin.delete(url), "delete", url, 200)
    conform(admin.delete(url), "delete", url, 404)


class _Origin(LoopbackHTTPServer):
    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(302 if self.path == "/go" else 200)
                if self.path == "/go":
                    self.send_header("Location", "/data.bin")
                self.send_header("Content-Length", "0" if self.path == "/go" else "5")
                self.end_headers()
                self.wfile.write(b"" if self.path == "/go" else b"hello")

            def log_message(self, *args):
                pass
        super().__init__(Handler, name="openapi-origin")
        self.start()


def test_finished_jobs_files_and_results_match_the_document(app, doc, client, conform, admin, alice, dispatcher):
    origin = _Origin()
    try:
        done = admin.wait(admin.submit("sleep", {"duration": 0, "write_file": True}).get_json()["data"]["id"])
        failed = admin.wait(admin.submit("sleep", {"duration": 0, "fail": "permanent"}).get_json()["data"]["id"])
        fetched = alice.submit("download", {"url": f"http://127.0.0.1:{origin.port}/go"})
        fetched = alice.wait(fetched.get_json()["data"]["id"])
    finally:
        origin.stop()
    assert (done["status"], failed["status"], fetched["status"]) == ("succeeded", "failed", "succeeded"), fetched
    schemas = doc["components"]["schemas"]
    for job, result in ((done, "SleepResult"), (fetched, "DownloadResult")):
        assert schema_validator(doc, schemas[result]).is_valid(job["result"]), job["result"]
        assert schema_validator(doc, schemas[f"{job['kind'].title()}Params"]).is_valid(job["params"]), job["params"]
    url = f"/api/v1/jobs/{done['id']}"
    for job in (done, failed):
        conform(admin.get(f"/api/v1/jobs/{job['id']}"), "get", f"/api/v1/jobs/{job['id']}", 200)
    conform(admin.get("/api/v1/jobs"), "get", "/api/v1/jobs", 200)
    name = conform(admin.get(f"{url}/files"), "get", f"{url}/files", 200)["data"][0]["name"]
    file_url = f"{url}/files/{name}"
    full = admin.get(file_url)
    conform(full, "get", file_url, 200)
    assert full.headers["ETag"] and full.headers["Accept-Ranges"] == "bytes"
    conform(admin.get(file_url, headers={"Range": "bytes=0-3"}), "get", file_url, 206)
    conform(admin.get(file_url, headers={"If-None-Match": full.headers["ETag"]}), "get", file_url, 304)
    conform(admin.get(file_url, headers={"Range": "bytes=9000-9999"}), "get", file_url, 416)
    conform(admin.post(f"{url}/retry"), "post", f"{url}/retry", 409)
    conform(admin.post(f"{url}/cancel"), "post", f"{url}/cancel", 409)
    conform(admin.get("/api/v1/stats"), "get", "/api/v1/stats", 200)
    if ("get", "/api/v1/jobs/{job_id}/log") in app_operations(app):
        conform(admin.get(f"{url}/log?tail=5&after=0"), "get", f"{url}/log", 200)
        conform(admin.get(f"{url}/log?tail=0"), "get", f"{url}/log", 400)
        conform(alice.get(f"{url}/log"), "get", f"{url}/log", 404)


def test_upload_answers_match_the_document(app, conform, alice, bob):
    import io

    from PIL import Image

    def upload(api, data, name="scan.png", **kw):
        return api.client.post("/api/v1/files", data={"file": (io.BytesIO(data), name), **kw},
                               headers=api.headers(), content_type="multipart/form-data")

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    saved = conform(upload(alice, png.getvalue()), "post", "/api/v1/files", 201)["data"]
    one = f"/api/v1/files/{saved['id']}"
    conform(alice.get("/api/v1/files"), "get", "/api/v1/files", 200)
    conform(alice.get(one), "get", one, 200)
    conform(alice.get(one + "/content"), "get", one + "/content", 200)
    conform(alice.get(one + "/content", headers={"Range": "bytes=0-3"}), "get", one + "/content", 206)
    conform(alice.get(one + "/content", headers={"Range": "bytes=9000-"}), "get", one + "/content", 416)
    conform(bob.get(one), "get", one, 404)
    conform(upload(alice, b"plain text"), "post", "/api/v1/files", 415)
    conform(upload(alice, b""), "post", "/api/v1/files", 400)
    conform(alice.post("/api/v1/files", json={}), "post", "/api/v1/files", 400)
    refused = alice.client.post("/api/v1/jobs", data={"kind": "download", "params": "{}",
                                                      "file": (io.BytesIO(png.getvalue()), "a.png")},
                                headers=alice.headers(), content_type="multipart/form-data")
    conform(refused, "post", "/api/v1/jobs", 400)
    conform(alice.delete(one), "delete", one, 200)


def test_metrics_answers_match_the_document(app, client, conform, admin, alice):
    if ("get", "/metrics") not in app_operations(app):
        pytest.skip("GET /metrics is not registered in this app yet")
    resp = conform(admin.get("/metrics"), "get", "/metrics", 200)
    assert resp and admin.get("/metrics").mimetype == "text/plain"
    conform(alice.get("/metrics"), "get", "/metrics", 403)
    conform(client.get("/metrics"), "get", "/metrics", 401)


def test_limits_answers_match_the_document(app_factory, migrated_db):
    app = app_factory(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="2 per minute", MAX_QUEUED_PER_USER=1,
                      MAX_CONTENT_LENGTH=4096)
    client = app.test_client()
    conform = Conformance(app, client.get("/api/v1/openapi.json").get_json())
    admin = sign_up(app, client, "admin", role="admin")
    conform(admin.submit("sleep", {"duration": 60}), "post", "/api/v1/jobs", 202)
    full = conform(admin.submit("sleep", {"duration": 60}), "post", "/api/v1/jobs", 429)
    assert full["error_code"] == "QUEUE_FULL"
    conform(admin.post("/api/v1/jobs", json={"kind": "sleep", "pad": "x" * 5000}), "post", "/api/v1/jobs", 413)
    for _ in range(2):
        client.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong password"})
    limited = client.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong password"})
    assert conform(limited, "post", "/api/v1/auth/login", 429)["error_code"] == "RATE_LIMITED"
    assert limited.headers["Retry-After"]


def test_cefr_answers_match_the_document(app, conform, alice, dispatcher):
    conform(alice.post("/api/v1/cefr", {"text": "I like green apples."}), "post", "/api/v1/cefr", 200)
    conform(alice.post("/api/v1/cefr", {"text": "I like green apples."}), "post", "/api/v1/cefr", 200)  # cached
    conform(alice.post("/api/v1/cefr", {"text": ""}), "post", "/api/v1/cefr", 400)
    conform(alice.client.post("/api/v1/cefr", json={"text": "Hi."}), "post", "/api/v1/cefr", 401)
    for _ in range(dispatcher.slots):
        dispatcher.reserve_slot()
    try:
        conform(alice.post("/api/v1/cefr", {"text": "All slots are taken."}), "post", "/api/v1/cefr", 503)
    finally:
        for _ in range(dispatcher.slots):
            dispatcher.release_slot()
    job = alice.submit("cefr", {"text": "The weather is nice. We walk in the park."}).get_json()["data"]
    done = alice.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded"

"""Schemathesis against /api/v1/openapi.json: every documented operation, fed generated valid
(positive) and invalid (negative) requests through the WSGI app itself, signed in as a normal user
and again as an admin.

The app is real (Alembic-migrated SQLite file, the whole request stack) but runs no dispatcher:
submitted jobs stay queued, so no generated download or crawl ever fetches anything, and
DOWNLOAD_ALLOW_PRIVATE_URLS (env ILGUN_ALLOW_PRIVATE_URLS) stays off all the same. Rate limits
are off. Each signed-in user owns one finished job with a file and one upload, so operations on
``{job_id}``, ``{name}`` and ``{file_id}`` are also fuzzed with ids that exist (200, 206, 304,
416 answers), not only with random ids (404).

Checks, on every answer:
- not_a_server_error: no 5xx, except the documented, deliberate 503s in EXPECTED_503 (POST
  /api/v1/cefr answers 503 NO_EXECUTOR in a process without executor slots, which is this test's
  setup; POST /api/v1/jobs answers 503 SERVICE_BUSY once MAX_QUEUED_TOTAL jobs wait);
- status_code_conformance: the status is one the operation documents;
- content_type_conformance: the Content-Type is one the operation documents for that status;
- response_schema_conformance: the JSON body matches the documented schema;
- response_headers_conformance: documented response headers (Location, ETag, Content-Range, ...);
- negative_data_rejection: a request that violates the document is refused with a 4xx; except
  POST /api/v1/auth/logout, which revokes the caller's token whatever its body holds (by design:
  signing out must not fail on a malformed refresh_token; see tests/test_api_auth.py).
Not run: positive_data_acceptance (schema-valid input is refused for reasons the document cannot
express: upload bytes that are no image or PDF -> 415, an unsatisfiable Range -> 416, an unknown
file_id, a taken username, a private URL), and the stateful and auth-replaying checks
(ignored_auth, use_after_free, ...), which need schemathesis' own runner and links;
tests/test_api_security.py and tests/test_hostile_matrix.py cover auth and IDOR.

ILGUN_FUZZ_EXAMPLES bounds the examples per operation and generation mode (default 5: the CI run
stays well under a minute); `make reliability` sets more. Generation is derandomized, so a CI
failure reproduces; ILGUN_FUZZ_RANDOM=1 draws new cases each run. The number of cases and
failures goes to test-artifacts/reliability/fuzz.json.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.conftest import PASSWORD, sign_up

# no generated request may make the app connect anywhere but loopback
pytestmark = pytest.mark.usefixtures("loopback_only")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACT = ROOT / "test-artifacts" / "reliability" / "fuzz.json"
EXAMPLES = int(os.environ.get("ILGUN_FUZZ_EXAMPLES", "5"))
RANDOM = os.environ.get("ILGUN_FUZZ_RANDOM") == "1"
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
ACCEPTS_INVALID_INPUT = {("POST", "/api/v1/auth/logout")}  # no negative_data_rejection there (see above)
# (method, path) -> the error codes of its documented, deliberate 503 answers in this setup
EXPECTED_503 = {("POST", "/api/v1/cefr"): {"NO_EXECUTOR", "CEFR_MODEL_MISSING"},
                ("POST", "/api/v1/jobs"): {"SERVICE_BUSY"}}  # MAX_QUEUED_TOTAL: backpressure, not a fault
# The real-id round runs reads first: retry empties the job's files, delete removes it.
METHOD_ORDER = {"GET": 0, "POST": 1, "DELETE": 2}
REAL_ID_PARAMS = {"job_id", "file_id", "name"}
RESULTS: dict[str, dict] = {}


def record(role: str, result: dict) -> None:
    RESULTS[role] = result
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({"examples_per_operation": EXAMPLES, "schemathesis": schemathesis.__version__,
                                    "runs": RESULTS}, indent=2) + "\n")


def png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, "PNG")
    return buf.getvalue()


def own_objects(app, api) -> dict:
    """A finished sleep job with sleep.txt and an upload, owned by ``api``'s user."""
    from service.runtime import start_worker_runtime, stop_worker_runtime
    start_worker_runtime(app, label="fuzz-setup")
    try:
        job = api.submit("sleep", {"duration": 0, "write_file": True}).get_json()["data"]
        job = api.wait(job["id"])
    finally:
        stop_worker_runtime(app, timeout=2)  # the fuzzing itself runs no dispatcher
    assert job["status"] == "succeeded", job
    upload = api.client.post("/api/v1/files", data={"file": (io.BytesIO(png()), "scan.png")},
                             headers=api.headers(), content_type="multipart/form-data")
    assert upload.status_code == 201, upload.get_json()
    return {"job_id": job["id"], "name": "sleep.txt", "file_id": upload.get_json()["data"]["id"]}


def fresh_tokens(client, username: str) -> dict:
    resp = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["data"]


def fuzz(app, role: str) -> dict:
    client = app.test_client()
    username = f"fuzz-{role}"
    api = sign_up(app, client, username, role=role)
    ids = own_objects(app, api)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)

    def headers_for(path: str) -> dict:
        # logout revokes the token it is sent with and refresh wants a refresh token: both get
        # tokens of their own, so the rest of the run stays signed in
        if path == "/api/v1/auth/logout":
            return {"Authorization": f"Bearer {fresh_tokens(client, username)['access_token']}"}
        if path == "/api/v1/auth/refresh":
            return {"Authorization": f"Bearer {fresh_tokens(client, username)['refresh_token']}"}
        return {"Authorization": f"Bearer {api.token}"}

    cases, failures, statuses, nothing_to_negate = 0, [], {}, []

    def run(operation, mode: GenerationMode, path_parameters: dict | None) -> None:
        nonlocal cases

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def one(case):
            nonlocal cases
            cases += 1
            headers = headers_for(operation.path)
            response = case.call(headers=headers)
            key = f"{operation.method.upper()} {operation.path}"
            statuses.setdefault(key, {}).setdefault(str(response.status_code), 0)
            statuses[key][str(response.status_code)] += 1
            checks = list(CHECKS)
            if not expected_503(operation, response):
                checks.append(not_a_server_error)
            if (operation.method.upper(), operation.path) not in ACCEPTS_INVALID_INPUT:
                checks.append(negative_data_rejection)
            try:
                case.validate_response(response, checks=checks, headers=headers)
            except FailureGroup as group:
                failures.append({"operation": key, "mode": mode.value, "status": response.status_code,
                                 "failures": sorted({f"{f.title}: {f.message}"[:400] for f in group.exceptions}),
                                 "request": case.as_curl_command(headers=headers)[:600]})
        try:
            one()
        except Unsatisfiable:
            # nothing in the operation can be made invalid (no parameters, no body): positive only
            assert mode == GenerationMode.NEGATIVE, operation.label
            nothing_to_negate.append(operation.label)

    started = time.monotonic()
    operations = []
    for result in schema.get_all_operations():
        assert not isinstance(result, Err), f"an operation of the document cannot be fuzzed: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 20, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(operation, mode, None)
    # again with ids that exist: the answers for real objects (and real file names) are fuzzed too
    with_ids = [op for op in operations if {p.name for p in op.path_parameters} & REAL_ID_PARAMS]
    for operation in sorted(with_ids, key=lambda op: METHOD_ORDER.get(op.method.upper(), 1)):
        fixed = {p.name: ids[p.name] for p in operation.path_parameters if p.name in REAL_ID_PARAMS}
        run(operation, GenerationMode.POSITIVE, fixed)
    return {"operations": len(operations), "cases": cases, "failures": len(failures),
            "seconds": round(time.monotonic() - started, 1), "statuses": statuses,
            "positive_only": nothing_to_negate, "details": failures[:50]}


def expected_503(operation, response) -> bool:
    codes = EXPECTED_503.get((operation.method.upper(), operation.path))
    if response.status_code != 503 or not codes:
        return False
    try:
        return json.loads(response.content)["error_code"] in codes
    except (ValueError, KeyError, TypeError):
        return False


@pytest.mark.parametrize("role", ["user", "admin"])
def test_openapi_operations_under_generated_input(app_factory, role):
    app = app_factory(DOWNLOAD_ALLOW_PRIVATE_URLS=False, SLEEP_KIND_FOR_EVERYONE=True, RATELIMIT_ENABLED=False)
    assert app.extensions["ilgun"].dispatcher is None
    result = fuzz(app, role)
    record(role, result)
    assert app.extensions["ilgun"].dispatcher is None  # nothing generated started a job
    # every operation was reached (operations without parameters or body get positive cases only)
    assert result["cases"] >= result["operations"] * 2
    assert result["failures"] == 0, json.dumps(result["details"], indent=1)[:20000]

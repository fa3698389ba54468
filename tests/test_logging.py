"""Structured logs and request ids: JSON lines carrying request_id, user_id and job_id."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest

from service.log_context import JsonFormatter
from tests.conftest import sign_up


@pytest.fixture
def json_lines():
    """Everything logged while the test runs, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


def test_request_id_is_echoed_generated_or_replaced(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123.x"}).headers["X-Request-ID"] == "abc-123.x"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    for bad in ("has space", "x" * 129, "line\\nbreak", "<script>"):
        got = client.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert got != bad and re.fullmatch(r"[0-9a-f]{32}", got)


def test_log_lines_of_a_request_carry_its_request_and_user_ids(app, json_lines):
    from flask_jwt_extended import verify_jwt_in_request

    @app.get("/_log_something")
    def _log_something():
        verify_jwt_in_request()
        logging.getLogger("ilgun.test").warning("hello %s", "there")
        return "ok"

    alice = sign_up(app, app.test_client(), "alice")

    me = alice.get("/api/v1/auth/me").get_json()["data"]
    resp = alice.client.get("/_log_something", headers={**alice.headers(), "X-Request-ID": "req-42"})
    assert resp.status_code == 200
    line = next(r for r in json_lines() if r["logger"] == "ilgun.test")
    assert line["message"] == "hello there" and line["level"] == "WARNING"
    assert line["request_id"] == "req-42" and line["user_id"] == me["id"]
    assert {"ts", "pid"} <= set(line)
    # outside a request, no stale ids leak into later lines
    logging.getLogger("ilgun.test").warning("after")
    after = [r for r in json_lines() if r["message"] == "after"][0]
    assert "request_id" not in after and "user_id" not in after


def test_job_log_lines_carry_the_job_id(admin, dispatcher, json_lines):
    job = admin.submit("sleep", {"duration": 0, "fail": "crash"}).get_json()["data"]
    assert admin.wait(job["id"])["error"]["code"] == "INTERNAL_ERROR"
    crash = next(r for r in json_lines() if "crashed" in r["message"])
    assert crash["job_id"] == job["id"] and crash["level"] == "ERROR"
    assert "deliberate crash" in crash["exc"]

"""A real gunicorn's output is one JSON object per line: its access log, its own error log
(boot, worker lifecycle) and the app's logs, with the request id tying a request's lines."""
from __future__ import annotations

import json
import time


def _records(server) -> list[dict]:
    out = []
    for line in server.log_text().splitlines():
        if line.startswith("====="):
            continue
        assert line.startswith("{"), f"not a JSON line: {line!r}"
        out.append(json.loads(line))
    return out


def test_access_error_and_app_logs_are_json_lines(ilgun_factory):
    server = ilgun_factory()
    token = server.register("logger")
    resp = server.call("GET", "/api/v1/auth/me", token=token, headers={"X-Request-ID": "trace-77"})
    assert resp.status == 200 and resp.header("X-Request-ID") == "trace-77"
    server.call("GET", "/api/v1/jobs/nope", token=token)
    deadline = time.monotonic() + 5
    while not any(r.get("request_id") == "trace-77" for r in _records(server)):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    server.terminate()
    server.wait_exit(30)
    records = _records(server)
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    me = next(r for r in access if r.get("request_id") == "trace-77")
    assert me["method"] == "GET" and me["path"] == "/api/v1/auth/me" and me["status"] == 200
    assert any(r["status"] == 404 and r["path"] == "/api/v1/jobs/nope" for r in access)
    errors = [r for r in records if r["logger"] == "gunicorn.error"]
    messages = " | ".join(r["message"] for r in errors)
    assert "Booting worker" in messages and "Shutting down" in messages, messages
    assert all({"ts", "level", "pid"} <= set(r) for r in records)
    app_lines = [r for r in records if r["logger"].startswith("service.")]
    assert any("dispatcher" in r["message"] for r in app_lines)

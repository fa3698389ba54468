"""The orjson provider behaves as Flask's for everything the API sends and accepts."""
from __future__ import annotations

import decimal
import json
import uuid


def test_round_trip_and_fallbacks(app):
    with app.app_context():
        value = {"name": "Ana Žižek ✓", "n": 1.5, "nested": [1, {"a": None}], 7: "int key"}
        text = app.json.dumps(value)
        assert json.loads(text) == {"name": "Ana Žižek ✓", "n": 1.5, "nested": [1, {"a": None}], "7": "int key"}
        assert app.json.loads(text.encode()) == json.loads(text)
        # types orjson leaves to Flask's default
        assert json.loads(app.json.dumps({"d": decimal.Decimal("1.25")})) == {"d": "1.25"}
        u = uuid.uuid4()
        assert json.loads(app.json.dumps({"u": u})) == {"u": str(u)}
        # keyword arguments keep the standard library's behaviour
        assert app.json.dumps({"b": 1, "a": 2}, sort_keys=True, indent=1) == '{\n "a": 2,\n "b": 1\n}'


def test_responses_are_json_with_the_envelope(client):
    resp = client.get("/healthz")
    assert resp.mimetype == "application/json"
    assert resp.get_json()["success"] is True


def test_invalid_utf8_body_is_invalid_json(alice):
    resp = alice.client.post("/api/v1/jobs", data=b'{"kind": "\xff"}', headers={
        **alice.headers(), "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.get_json()["error_code"] == "INVALID_JSON"

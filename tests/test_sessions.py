"""The lazy session interface still reads and writes Flask's signed session cookie."""
from __future__ import annotations

from flask import session


def test_session_cookie_round_trip_and_tampering(app):
    @app.get("/_session/set")
    def _set():
        session["who"] = "ana"
        return "set"

    @app.get("/_session/get")
    def _get():
        return session.get("who", "nobody")

    client = app.test_client()
    assert client.get("/_session/get").get_data(as_text=True) == "nobody"
    resp = client.get("/_session/set")
    assert "session=" in resp.headers["Set-Cookie"]
    assert client.get("/_session/get").get_data(as_text=True) == "ana"
    cookie = client.get_cookie("session")
    client.set_cookie("session", cookie.value[:-3] + "xyz")  # a forged signature is ignored
    assert client.get("/_session/get").get_data(as_text=True) == "nobody"


def test_api_answers_set_no_session_cookie(client):
    resp = client.get("/healthz")
    assert "Set-Cookie" not in resp.headers

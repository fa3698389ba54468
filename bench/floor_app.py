"""The flask+gunicorn floor for bench/engine.py: the least a Flask service can do for a submit.

One route, ``POST /api/v1/jobs``, doing what every ilgun submit does before it touches the
engine: parse the JSON body, check the ``Authorization: Bearer`` token with PyJWT (HS256, the
claims checked as for ilgun's access tokens) and answer 202 with ilgun's envelope
``{"success": true, "message": "queued", "data": {"id": <uuid4>}}``. No database, no queue,
no work: the requests/s this app reaches under ilgun's gunicorn settings (bench/floor_gunicorn.conf.py)
is an upper bound for any Flask+gunicorn service on this machine.

``GET /readyz`` answers 200 (with the worker's pid) so the benchmark can wait for it.

Environment: FLOOR_JWT_SECRET (required), the key the benchmark signed its token with.
"""
from __future__ import annotations

import os
import uuid

import jwt
from flask import Flask, jsonify, request


def _error(status: int, code: str, message: str):
    resp = jsonify({"success": False, "error_code": code, "message": message, "details": {}})
    resp.status_code = status
    return resp


def create_app() -> Flask:
    secret = os.environ.get("FLOOR_JWT_SECRET", "")
    if not secret:
        raise RuntimeError("FLOOR_JWT_SECRET is not set")
    app = Flask(__name__)

    @app.get("/readyz")
    def readyz():
        return jsonify({"success": True, "message": "ready", "data": {"pid": os.getpid()}})

    @app.post("/api/v1/jobs")
    def submit():
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _error(401, "AUTH_REQUIRED", "Send an Authorization: Bearer token.")
        try:
            claims = jwt.decode(header[7:], secret, algorithms=["HS256"],
                                options={"require": ["exp", "iat", "sub", "jti"]})
        except jwt.PyJWTError:
            return _error(401, "TOKEN_INVALID", "The token is not valid.")
        if claims.get("type") != "access":
            return _error(401, "TOKEN_INVALID", "Not an access token.")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str) or not body["kind"]:
            return _error(400, "VALIDATION_ERROR", "kind is required.")
        if not isinstance(body.get("params", {}), dict):
            return _error(400, "VALIDATION_ERROR", "params must be an object.")
        job_id = str(uuid.uuid4())
        resp = jsonify({"success": True, "message": "queued", "data": {"id": job_id}})
        resp.status_code = 202
        resp.headers["Location"] = f"/api/v1/jobs/{job_id}"
        return resp

    return app

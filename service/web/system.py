"""Health, readiness and statistics."""
from __future__ import annotations

import os

from flask import Blueprint, current_app
from flask_jwt_extended import current_user, jwt_required

from service.extensions import limiter
from service.web.errors import error_response
from service.web.http import ok

bp = Blueprint("system", __name__)


@bp.get("/healthz")
@limiter.exempt
def healthz():
    """Liveness: the process answers. Touches nothing else, so a slow database never gets a
    healthy worker restarted."""
    return ok({"status": "ok", "pid": os.getpid()})


@bp.get("/readyz")
@limiter.exempt
def readyz():
    """Readiness: the database answers and the schema is migrated; the files root is writable."""
    svc = current_app.extensions["ilgun"]
    problems = {}
    try:
        from service.store.health import schema_ready
        if not schema_ready(svc.engine):
            problems["database"] = "schema missing: run `flask --app service db upgrade`"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        problems["database"] = f"unreachable ({type(exc).__name__})"
    root = svc.workspace.root
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            problems["files"] = "files root is not writable"
    except OSError as exc:
        problems["files"] = f"files root unusable ({exc.strerror})"
    dispatcher = svc.dispatcher
    data = {"status": "ready" if not problems else "not ready", "dispatcher": dispatcher is not None,
            "pid": os.getpid()}
    if problems:
        return error_response(503, "NOT_READY", "The service is not ready.", {**data, "problems": problems})
    return ok(data)


@bp.get("/api/v1/stats")
@jwt_required()
def stats():
    return ok(current_app.extensions["ilgun"].stats(current_user))

"""POST /api/v1/cefr: a short English text graded A1..C2 now (the ``cefr`` job kind for long ones)."""
from __future__ import annotations

from flask import Blueprint, current_app
from flask_jwt_extended import current_user, jwt_required

from service.extensions import limiter
from service.web.http import json_body, ok
from service.web.jobs import submit_limit

bp = Blueprint("cefr", __name__, url_prefix="/api/v1")


@bp.post("/cefr")
@jwt_required()
@limiter.limit(submit_limit)  # the submit rate: a grade is a job that answers at once
def grade():
    """``{"text"}`` (at most CEFR_SYNC_MAX_CHARS) -> the cefr kind's result, graded in an executor
    slot of this worker within CEFR_SYNC_TIMEOUT (503 EXECUTOR_BUSY / CEFR_TIMEOUT otherwise)."""
    return ok(current_app.extensions["ilgun"].grade_now(current_user, json_body()))

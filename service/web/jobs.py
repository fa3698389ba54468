"""/api/v1/jobs: submit, list, read, cancel, retry, delete, and the job's files."""
from __future__ import annotations

from flask import Blueprint, current_app, request
from flask_jwt_extended import current_user, jwt_required

from service.engine.status import JobStatus
from service.errors import ValidationError
from service.extensions import limiter
from service.web.files import save_upload, uploaded_file
from service.web.http import attachment, conditional, int_arg, json_body, ok, paginated

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")

IDEMPOTENCY_KEY_MAX = 200


def _svc():
    return current_app.extensions["ilgun"]


def submit_limit() -> str:
    return current_app.config["RATELIMIT_SUBMIT"]


@bp.post("/jobs")
@jwt_required()
@limiter.limit(submit_limit)
def submit():
    """JSON ``{"kind", "params"}``, or multipart with parts ``kind``, ``params`` (JSON text) and
    ``file``: the upload is stored and the job gets its ``file_id`` in one step."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise ValidationError("Idempotency-Key must be 1–200 characters.", code="INVALID_IDEMPOTENCY_KEY")
    if request.mimetype == "multipart/form-data":
        job, created = _submit_with_upload(key)
    else:
        body = json_body()
        kind, params = _kind_and_params(body.get("kind"), body.get("params", {}))
        job, created = _svc().submit(current_user, kind, params, idempotency_key=key)
    if created:
        message = "Job started." if job["status"] == "running" else "Job queued."
        return ok(job, message, 202, {"Location": f"/api/v1/jobs/{job['id']}"})
    return ok(job, "Same Idempotency-Key: returning the job it created.", 200, {"Idempotent-Replayed": "true"})


def _kind_and_params(kind, params) -> tuple[str, dict]:
    if not isinstance(kind, str) or not kind:
        raise ValidationError("kind is required.", details={"field": "kind"})
    if not isinstance(params, dict):
        raise ValidationError("params must be an object.", details={"field": "params"})
    return kind, params


def _submit_with_upload(key: str | None):
    raw = request.form.get("params") or "{}"
    try:
        params = current_app.json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationError("The params part is not valid JSON.", code="INVALID_JSON",
                              details={"field": "params"}) from None
    kind, params = _kind_and_params(request.form.get("kind"), params)
    return submit_with_upload(kind, params, uploaded_file(), key)


def submit_with_upload(kind: str, params: dict, part, key: str | None = None):
    """Store the upload ``part`` and submit a job reading it (its ``file_id``); a refused job keeps
    no file. Shared with the submit page."""
    saved = save_upload(part)
    try:
        job, created = _svc().submit(current_user, kind, {**params, "file_id": saved["id"]}, idempotency_key=key)
    except BaseException:
        _svc().uploads.delete(current_user, saved["id"])  # the job was refused: keep nothing
        raise
    if not created:  # an Idempotency-Key replay: the first request's job has its own file
        _svc().uploads.delete(current_user, saved["id"])
    return job, created


@bp.get("/jobs")
@jwt_required()
def list_jobs():
    status = request.args.get("status") or None
    kind = request.args.get("kind") or None
    if status and status not in {s.value for s in JobStatus}:
        raise ValidationError("Unknown status filter.", details={"statuses": [s.value for s in JobStatus]})
    page = int_arg("page", 1, 1, 1_000_000)
    page_size = int_arg("page_size", 20, 1, current_app.config["MAX_PAGE_SIZE"])
    items, total = _svc().list(current_user, status=status, kind=kind, page=page, page_size=page_size)
    return conditional(ok(paginated(items, total, page, page_size)))


@bp.get("/jobs/<job_id>")
@jwt_required()
def get_job(job_id):
    return conditional(ok(_svc().get(current_user, job_id)))


@bp.post("/jobs/<job_id>/cancel")
@jwt_required()
def cancel(job_id):
    job = _svc().cancel(current_user, job_id)
    return ok(job, "Cancelled." if job["status"] == "cancelled" else "Cancelling.")


@bp.post("/jobs/<job_id>/retry")
@jwt_required()
def retry(job_id):
    return ok(_svc().retry(current_user, job_id), "Queued again.", 202)


@bp.delete("/jobs/<job_id>")
@jwt_required()
def delete(job_id):
    _svc().delete(current_user, job_id)
    return ok(None, "Deleted.")


@bp.get("/jobs/<job_id>/log")
@jwt_required()
def job_log(job_id):
    """The last lines the job wrote (``tail``), or only those after seq ``after`` (for polling)."""
    tail = int_arg("tail", 100, 1, 1000)
    after = int_arg("after", 0, 0, 2 ** 62)
    return ok(_svc().log(current_user, job_id, after=after, tail=tail))


@bp.get("/jobs/<job_id>/files")
@jwt_required()
def files(job_id):
    return ok(_svc().files(current_user, job_id))


@bp.get("/jobs/<job_id>/files/<path:name>")
@jwt_required()
def download_file(job_id, name):
    return attachment(*_svc().file_path(current_user, job_id, name))

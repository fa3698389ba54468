"""My jobs, a job's page (live progress, result view, files, actions) and the submit forms."""
from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_jwt_extended import current_user

from service.engine.status import FINAL, JobStatus
from service.errors import IlgunError, NotFound, ValidationError
from service.extensions import limiter
from service.pages import forms, presenters
from service.pages.headers import page_headers
from service.web import cookie_auth
from service.web.files import uploaded_file
from service.web.http import attachment
from service.web.jobs import submit_limit, submit_with_upload

bp = Blueprint("pages_jobs", __name__)
bp.after_request(page_headers)

PAGE_SIZE = 20
ACTIONS = {"cancel": "Cancel", "retry": "Retry", "delete": "Delete"}
CONFIRM_TEXT = {"cancel": "Cancel this job? Its partial files are removed.",
                "retry": "Run this job again? Its current result and files are replaced.",
                "delete": "Delete this job and all its files? This cannot be undone."}


def _svc():
    return current_app.extensions["ilgun"]


def _page_arg() -> int:
    try:
        return max(1, min(int(request.args.get("page", 1)), 1_000_000))
    except ValueError:
        return 1


@bp.get("/jobs")
@cookie_auth.login_required()
def job_list():
    status = request.args.get("status") or None
    kind = request.args.get("kind") or None
    if status not in {None, *(s.value for s in JobStatus)}:
        status = None
    if kind not in {None, *_svc().kinds}:
        kind = None
    page = _page_arg()
    jobs, total = _svc().list(current_user, status=status, kind=kind, page=page, page_size=PAGE_SIZE)
    pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
    return render_template("pages/jobs.html", jobs=jobs, total=total, page=page, pages=pages,
                           status=status, kind=kind, statuses=[s.value for s in JobStatus],
                           kinds=sorted(_svc().kinds))


@bp.get("/jobs/new")
@cookie_auth.login_required()
def choose_kind():
    return render_template("pages/new.html", kinds=presenters.submittable_kinds(current_user))


@bp.route("/jobs/new/<kind_name>", methods=["GET", "POST"])
@cookie_auth.login_required()
@limiter.limit(submit_limit, methods=["POST"])
def submit(kind_name: str):
    kinds = {k["name"]: k for k in presenters.submittable_kinds(current_user)}
    if kind_name not in kinds:
        raise NotFound("No such kind of job here.", code="UNKNOWN_KIND")
    fields = forms.fields_for(presenters.params_schema(kind_name))
    message, problems, status = None, {}, 200
    if request.method == "POST":
        try:
            params = forms.params_from_form(fields, request.form)
            if any(f.widget == "file" for f in fields):
                if not request.files.get("file") or not request.files["file"].filename:
                    raise ValidationError("Choose a file to upload.", code="FILE_REQUIRED",
                                          details={"file_id": "choose a file"})
                job, _ = submit_with_upload(kind_name, params, uploaded_file())
            else:
                job, _ = _svc().submit(current_user, kind_name, params)
        except IlgunError as exc:
            from service.web.errors import status_for
            message, status = exc.message, status_for(exc)
            problems = exc.details if isinstance(exc.details, dict) else {}
        else:
            flash("Job started." if job["status"] == "running" else "Job queued.", "info")
            return redirect(url_for("pages_jobs.job_detail", job_id=job["id"]), 303)
    return render_template("pages/submit.html", kind=kinds[kind_name], fields=fields, values=request.form,
                           message=message, problems=problems), status


@bp.get("/jobs/<job_id>")
@cookie_auth.login_required()
def job_detail(job_id: str):
    job = _svc().get(current_user, job_id)
    return render_template("pages/job.html", job=job, result_template=presenters.result_template(job["kind"]),
                           files=presenters.JobFiles(_svc(), current_user, job), actions=ACTIONS,
                           final=JobStatus(job["status"]) in FINAL)


@bp.post("/jobs/<job_id>/<action>")
@cookie_auth.login_required()
def job_action(job_id: str, action: str):
    if action not in ACTIONS:
        raise NotFound("No such action.", code="NOT_FOUND")
    job = _svc().get(current_user, job_id)  # 404 for another user's job, before anything else
    if request.form.get("confirmed") != "1":
        return render_template("pages/confirm.html", job=job, action=action, label=ACTIONS[action],
                               question=CONFIRM_TEXT[action])
    if action == "cancel":
        job = _svc().cancel(current_user, job_id)
        flash("Cancelled." if job["status"] == "cancelled" else "Cancelling: the job stops within a second.", "info")
    elif action == "retry":
        _svc().retry(current_user, job_id)
        flash("Queued again.", "info")
    else:
        _svc().delete(current_user, job_id)
        flash("Deleted.", "info")
        return redirect(url_for("pages_jobs.job_list"), 303)
    return redirect(url_for("pages_jobs.job_detail", job_id=job_id), 303)


@bp.get("/jobs/<job_id>/files/<path:name>")
@cookie_auth.login_required()
def job_file(job_id: str, name: str):
    path, meta = _svc().file_path(current_user, job_id, name)
    resp = attachment(path, meta)
    if request.args.get("view") == "1" and meta["content_type"].startswith(("text/html", "text/plain")):
        # Shown in the job page's frame: inline, but sandboxed (no scripts, no same-origin access,
        # nothing loaded from elsewhere) whatever the file contains.
        resp.headers["Content-Disposition"] = "inline"
        resp.headers["Content-Security-Policy"] = "sandbox; default-src 'none'; style-src 'unsafe-inline'; " \
                                                  "img-src data:; frame-ancestors 'self'"
        resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    return resp

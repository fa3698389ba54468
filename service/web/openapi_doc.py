"""The OpenAPI 3.0.3 document of the API, built from the app's config by ``build_document``.

Every route in ``app.url_map`` (but the static files and the docs page itself) is described
here; tests/test_openapi.py checks both ways and validates real answers against it.
"""
from __future__ import annotations

from typing import Any, Mapping

from service.engine.status import JobStatus
from service.web.openapi_schemas import (AUTH_CODES, BODY_CODES, JSON, PLAIN_NAME, components, err, header,
                                          ok, ref)

OPENAPI_VERSION = "3.0.3"
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
_FILE = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
_REQ_ID = {"$ref": "#/components/parameters/RequestId"}
_JOB_ID = {"$ref": "#/components/parameters/JobId"}
_PUBLIC: list = []

_DESCRIPTION = """\
ilgun: a multi-user job service. Sign in (POST /api/v1/auth/login), send the access token as
`Authorization: Bearer <token>`, submit jobs, poll them and fetch their files.

**Success** answers are `{{"success": true, "message": "...", "data": ...}}`; **failures** are
`{{"success": false, "error_code": "...", "message": "...", "details": {{...}} | null}}` with the matching
HTTP status. `error_code` values are stable and meant for programs; each response below lists the codes
it can carry (also as `x-error-codes`). Known codes: {codes}. Any URL may also answer 404 `NOT_FOUND`
(no such path), 405 `METHOD_NOT_ALLOWED` (with `Allow`) or 500 `INTERNAL_ERROR` (never with a trace).

Every answer carries `X-Request-ID` (yours if you send a valid one). Rate limits (per signed-in user,
else per address) answer 429 `RATE_LIMITED` with `Retry-After` (every answer of a limited route carries
`X-RateLimit-Limit`, `-Remaining` and `-Reset`): default
{default}; job submits {submit}; login and register {login} per address and username. `/healthz`,
`/readyz` and `/metrics` are not limited. A JSON body may be at most {json_bytes} bytes and {json_depth}
levels deep (400 otherwise); any body over {max_body} bytes is refused with 413."""


def _op(tag: str, summary: str, responses: dict, *, description: str = "", security: list | None = None,
        params: list | None = None, body: dict | None = None, op_id: str) -> dict:
    out: dict[str, Any] = {"tags": [tag], "summary": summary, "operationId": op_id,
                           "parameters": [_REQ_ID, *(params or [])], "responses": responses}
    if description:
        out["description"] = description
    if security is not None:
        out["security"] = security
    if body is not None:
        out["requestBody"] = body
    return out


def _json_body(schema: str, *, form: str | None = None, required: bool = True) -> dict:
    content = {JSON: {"schema": ref(schema)}}
    if form:
        content.update({m: {"schema": ref(form)} for m in _FORMS})
    return {"required": required, "content": content}


def _q(name: str, schema: dict, description: str, **more) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **more}


def _h(name: str, description: str) -> dict:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}


def _std(*, auth: bool = True, limited: bool = True, not_found: bool = False) -> dict:
    """The errors most routes share: 401 (signed in), 404 JOB_NOT_FOUND (a job route), 429."""
    out = {}
    if auth:
        out["401"] = err(401, AUTH_CODES, "No, a bad, an expired or a revoked access token.")
    if not_found:
        out["404"] = err(404, ["JOB_NOT_FOUND"], "No such job, or another user's.")
    if limited:
        out["429"] = err(429, ["RATE_LIMITED"], "Too many requests.")
    return out


def _auth_paths(config: Mapping[str, Any]) -> dict:
    body_errors = {"413": err(413, ["PAYLOAD_TOO_LARGE"], "The body is larger than MAX_CONTENT_LENGTH."),
                   "429": err(429, ["RATE_LIMITED"], "Too many attempts from this address for this username.")}
    tokens = ok("Signed in: the tokens.", ref("Tokens"))
    return {
        "/api/v1/auth/register": {"post": _op(
            "auth", "Create an account", {
                "201": ok("Registered: the new user.", ref("User")),
                "400": err(400, ["VALIDATION_ERROR", "REGISTRATION_CLOSED", *BODY_CODES],
                           "A field is not valid (`details` maps each to what is wrong), registration is closed "
                           f"(ALLOW_REGISTRATION, here {bool(config['ALLOW_REGISTRATION'])}), or the body is not "
                           "usable."),
                "409": err(409, ["USERNAME_TAKEN"], "That username (in any case) is taken."),
                **body_errors},
            security=_PUBLIC, body=_json_body("Register", form="RegisterForm"), op_id="register",
            description="JSON or an HTML form. New accounts have the role `user`.")},
        "/api/v1/auth/login": {"post": _op(
            "auth", "Sign in", {
                "200": tokens,
                "400": err(400, ["VALIDATION_ERROR", *BODY_CODES], "username or password missing, or the body is "
                                                                   "not usable."),
                "401": err(401, ["AUTH_FAILED"], "Wrong username or password, or the account is disabled."),
                **body_errors},
            security=_PUBLIC, body=_json_body("Login", form="Login"), op_id="login",
            description="JSON or an HTML form (OAuth2-style clients). The username is matched regardless of case.")},
        "/api/v1/auth/refresh": {"post": _op(
            "auth", "New tokens for a refresh token", {
                "200": ok("New tokens; the refresh token sent is revoked (rotation).", ref("Tokens")),
                "401": err(401, AUTH_CODES, "No refresh token, an access token instead (`TOKEN_INVALID`), or an "
                                            "expired or already used one (`TOKEN_REVOKED`)."),
                "429": err(429, ["RATE_LIMITED"], "Too many requests.")},
            security=[{"refreshToken": []}], op_id="refresh",
            description="Send the **refresh** token as `Authorization: Bearer <refresh_token>`; no body.")},
        "/api/v1/auth/logout": {"post": _op(
            "auth", "Sign out", {
                "200": ok("Signed out: the access token (and the refresh token, if sent) is revoked."),
                **_std(), "413": body_errors["413"]},
            body=_json_body("Logout", required=False), op_id="logout",
            description="A body that is missing or not a usable JSON object is ignored.")},
        "/api/v1/auth/me": {"get": _op("auth", "The signed-in user", {"200": ok("The user.", ref("User")), **_std()},
                                       op_id="me")},
    }


def _job_paths(config: Mapping[str, Any]) -> dict:
    job = ok("The job.", ref("Job"))
    state = err(409, ["INVALID_STATE"], "The job's status does not allow this (`details.status`).")
    file_headers = {h: header(h) for h in ("ETag", "Last-Modified", "Accept-Ranges", "Content-Disposition")}
    return {
        "/api/v1/jobs": {
            "post": _op("jobs", "Submit a job", {
                "202": ok("Created: queued, or already started when a slot was free (message `Job started.`).",
                          ref("Job"), headers={"Location": header("Location")}),
                "200": ok("The job an earlier submit with the same Idempotency-Key created.", ref("Job"),
                          headers={"Idempotent-Replayed": header("Idempotent-Replayed")}),
                "400": err(400, ["VALIDATION_ERROR", "INVALID_IDEMPOTENCY_KEY", "URL_INVALID", "URL_SCHEME_NOT_ALLOWED",
                                 "URL_CREDENTIALS_NOT_ALLOWED", "URL_NOT_ALLOWED", *BODY_CODES],
                           "kind or params not valid (`details.field` names the field), a bad Idempotency-Key, a "
                           "refused URL, or the body is not usable."),
                "401": _std()["401"],
                "403": err(403, ["KIND_NOT_ALLOWED"], "This kind is for admins only."),
                "404": err(404, ["UNKNOWN_KIND"], "No such kind (`details.kinds` lists them)."),
                "409": err(409, ["CONCURRENCY_LIMIT", "CRAWL_ALREADY_RUNNING"],
                           "The kind allows no more running jobs for you and refuses rather than queues "
                           "(`crawl`: one at a time per user, `CRAWL_ALREADY_RUNNING`)."),
                "413": err(413, ["PAYLOAD_TOO_LARGE"], "The body is larger than MAX_CONTENT_LENGTH."),
                "429": err(429, ["RATE_LIMITED", "QUEUE_FULL"],
                           "Too many requests, or too many of your jobs are queued "
                           f"(MAX_QUEUED_PER_USER={config['MAX_QUEUED_PER_USER']})."),
                "503": err(503, ["SERVICE_BUSY"], "The whole queue is full (MAX_QUEUED_TOTAL)."),
            }, params=[{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        "description": "The same key from the same user returns the job it created (200, "
                                       "`Idempotent-Replayed: true`) instead of a new one."}],
                body=_json_body("SubmitJob"), op_id="submitJob"),
            "get": _op("jobs", "List jobs", {"200": ok("A page of jobs, newest first.", ref("JobPage")),
                                             "400": err(400, ["VALIDATION_ERROR"], "A query parameter is not valid."),
                                             **_std()},
                       params=[_q("status", {"type": "string", "enum": [s.value for s in JobStatus]},
                                  "Only jobs in this status (empty: all).", allowEmptyValue=True),
                               _q("kind", {"type": "string"}, "Only jobs of this kind (empty: all).",
                                  allowEmptyValue=True),
                               _q("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
                                  "Page number, from 1."),
                               _q("page_size", {"type": "integer", "minimum": 1,
                                                "maximum": int(config["MAX_PAGE_SIZE"]), "default": 20},
                                  "Jobs per page.")],
                       op_id="listJobs", description="Your jobs; an admin sees everyone's."),
        },
        "/api/v1/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": _op("jobs", "Get a job", {"200": job, **_std(not_found=True)}, op_id="getJob"),
            "delete": _op("jobs", "Delete a job and its files", {
                "200": ok("Deleted."), **_std(not_found=True), "409": err(409, ["INVALID_STATE"], "The job is "
                                                                           "running: cancel it first.")},
                op_id="deleteJob"),
        },
        "/api/v1/jobs/{job_id}/cancel": {"parameters": [_JOB_ID], "post": _op(
            "jobs", "Cancel a job", {"200": ok("A queued job is cancelled at once (message `Cancelled.`); a running "
                                               "one stops within about a second (`Cancelling.`, "
                                               "`cancel_requested: true`).", ref("Job")),
                                     **_std(not_found=True), "409": state}, op_id="cancelJob")},
        "/api/v1/jobs/{job_id}/retry": {"parameters": [_JOB_ID], "post": _op(
            "jobs", "Retry a failed or cancelled job", {"202": ok("Queued again.", ref("Job")),
                                                        **_std(not_found=True), "409": state}, op_id="retryJob")},
        "/api/v1/jobs/{job_id}/files": {"parameters": [_JOB_ID], "get": _op(
            "jobs", "List a job's result files", {"200": ok("The files.", {"type": "array", "items": ref("File")}),
                                                  **_std(not_found=True)}, op_id="listJobFiles")},
        "/api/v1/jobs/{job_id}/files/{name}": {"parameters": [_JOB_ID], "get": _op(
            "jobs", "Download a result file", {
                "200": ok("The file, streamed, with its stored content type.", headers=file_headers, content=_FILE),
                "206": ok("The requested range.", headers={**file_headers, "Content-Range": header("Content-Range")},
                          content=_FILE),
                "304": {"description": "Not modified (If-None-Match or If-Modified-Since).",
                        "headers": {"X-Request-ID": header("X-Request-ID"), "ETag": header("ETag")}},
                "400": err(400, ["PATH_NOT_ALLOWED"], "Not a plain file name."),
                **_std(), "404": err(404, ["JOB_NOT_FOUND", "FILE_NOT_FOUND"], "No such job (or another user's), "
                                                                               "or no such file."),
                "416": err(416, ["RANGE_NOT_SATISFIABLE"], "The range is outside the file."),
            }, params=[{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "maxLength": 200, "pattern": PLAIN_NAME},
                        "description": "A file name from the files list (a plain name: anything else answers 400 "
                                       "`PATH_NOT_ALLOWED`)."},
                       _h("Range", "One byte range, e.g. `bytes=0-1023`."),
                       _h("If-Range", "Send the range only if the file still has this ETag or date."),
                       _h("If-None-Match", "304 if the file still has this ETag."),
                       _h("If-Modified-Since", "304 if the file has not changed since this HTTP date.")],
                op_id="downloadJobFile", description="An attachment; `X-Content-Type-Options: nosniff`.")},
        "/api/v1/jobs/{job_id}/log": {"parameters": [_JOB_ID], "get": _op(
            "jobs", "A job's log lines", {"200": ok("The newest lines, oldest first.", ref("JobLog")),
                                          "400": err(400, ["VALIDATION_ERROR"], "tail or after is not valid."),
                                          **_std(not_found=True)},
            params=[_q("tail", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                       "At most this many lines (the newest)."),
                    _q("after", {"type": "integer", "minimum": 0, "maximum": 2 ** 62, "default": 0},
                       "Only lines with `seq` greater than this (poll with the last seq seen).")],
            op_id="getJobLog")},
    }


def _system_paths() -> dict:
    return {
        "/api/v1/stats": {"get": _op("system", "Job statistics", {"200": ok("Counts.", ref("Stats")), **_std()},
                                     op_id="stats", description="Your jobs by kind and status; for admins, "
                                                                "everyone's, plus users and live workers.")},
        "/healthz": {"get": _op("system", "Liveness", {"200": ok("The process answers (no I/O).", ref("Health"))},
                                security=_PUBLIC, op_id="healthz")},
        "/readyz": {"get": _op("system", "Readiness", {
            "200": ok("Ready: the database is migrated and the files root writable.", ref("Ready")),
            "503": err(503, ["NOT_READY"], "Not ready: `details` has `status`, `dispatcher`, `pid` and `problems` "
                                           "({database?, files?})."),
        }, security=_PUBLIC, op_id="readyz")},
        "/metrics": {"get": _op("system", "Prometheus metrics", {
            "200": ok("Prometheus text exposition format (`text/plain; version=0.0.4; charset=utf-8`).",
                      content={"text/plain": {"schema": {"type": "string"}}}),
            **_std(limited=False), "403": err(403, ["FORBIDDEN"], "A token of a user who is not an admin."),
        }, security=[{"bearerAuth": []}, {"metricsToken": []}], op_id="metrics",
            description="An admin's access token or the configured METRICS_TOKEN. Not rate limited; absent "
                        "(404) when METRICS_ENABLED is off.")},
        "/api/v1/openapi.json": {"get": _op("docs", "This document", {
            "200": ok("The OpenAPI document.", content={JSON: {"schema": {"type": "object"}}}),
            "429": err(429, ["RATE_LIMITED"], "Too many requests.")}, security=_PUBLIC, op_id="openapi",
            description="Swagger UI for it: /api/docs.")},
    }


def _components(config: Mapping[str, Any], more_schemas: dict) -> dict:
    out = components(config)
    out["schemas"].update(more_schemas)
    return out


def _cefr_schemas(config: Mapping[str, Any]) -> dict:
    from service.web.openapi_kinds import cefr_schemas
    return cefr_schemas(int(config["CEFR_SYNC_MAX_CHARS"]))


def build_document(config: Mapping[str, Any]) -> dict:
    """The whole document for an app with this config."""
    from service.web import openapi_files

    from service.web.openapi_kinds import cefr_paths
    paths = {**_auth_paths(config), **_job_paths(config),
             **cefr_paths(ok, err, ref, _op, _std, BODY_CODES), **openapi_files.file_paths(config), **_system_paths()}
    openapi_files.add_upload_submit(paths)
    codes = sorted({c for item in paths.values() for op in item.values() if isinstance(op, dict)
                    for r in op.get("responses", {}).values() for c in r.get("x-error-codes", ())})
    description = _DESCRIPTION.format(
        codes=", ".join(f"`{c}`" for c in codes), default=config["RATELIMIT_DEFAULT"],
        submit=config["RATELIMIT_SUBMIT"], login=config["RATELIMIT_LOGIN"], json_bytes=config["MAX_JSON_BYTES"],
        json_depth=config["MAX_JSON_DEPTH"], max_body=config["MAX_CONTENT_LENGTH"])
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "ilgun", "version": "1", "description": description},
        "servers": [{"url": "/"}],
        "tags": [{"name": "auth", "description": "Accounts and tokens"},
                 {"name": "jobs", "description": "Submit, watch and fetch jobs"},
                 {"name": "files", "description": "Upload documents for document jobs"},
                 {"name": "system", "description": "Health, readiness, statistics, metrics"},
                 {"name": "docs", "description": "This document"}],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
        "paths": paths,
        "components": _components(config, {**openapi_files.schemas(), **_cefr_schemas(config)}),
    }

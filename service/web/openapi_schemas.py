"""The OpenAPI document's components (schemas, headers, parameters, security schemes) and the
helpers the paths are written with. OpenAPI 3.0.3: a value that may be null says ``nullable``.

Each job kind's params are described here, in KIND_PARAMS, exactly as its ``validate()`` checks
them; tests/test_openapi.py fails when a kind is registered without an entry.
"""
from __future__ import annotations

from typing import Any, Mapping

from service.engine.status import JobStatus

JSON = "application/json"
AUTH_CODES = ["AUTH_REQUIRED", "TOKEN_INVALID", "TOKEN_EXPIRED", "TOKEN_REVOKED", "USER_NOT_FOUND"]
BODY_CODES = ["INVALID_JSON", "JSON_TOO_DEEP", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE"]
# ECMA-262 spellings of the checks in service.workspace.safe_filename / check_plain_name and of
# service.net.ssrf.UrlGuard.check_url (what a pattern can say; the rest is in the descriptions).
_BAD = r"\x00-\x1f\x7f/\\:*?" + '"' + r"<>|"
_RESERVED = r"(?:[Cc][Oo][Nn]|[Pp][Rr][Nn]|[Aa][Uu][Xx]|[Nn][Uu][Ll]|[Cc][Oo][Mm][0-9]|[Ll][Pp][Tt][0-9])"
PLAIN_NAME = rf"^(?!{_RESERVED}(?:\.|$))[^{_BAD}.\s](?:[^{_BAD}]*[^{_BAD}\s])?$"
EMAIL = r"^(?:|[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,})$"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_H16 = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join([f"(?:{_H16}:){{7}}{_H16}"] + [
    ("::" if n == 0 else f"(?:{_H16}:){{{n}}}:") + (f"(?:{_H16}(?::{_H16}){{0,{6 - n}}})?" if n < 7 else "")
    for n in range(8)])
_HOST = rf"(?:\[(?:{_IPV6})\]|[A-Za-z0-9!$&'()*+,;=._~" + '"' + r"<>{}^|`-]+)"
HTTP_URL = rf"^\s*[Hh][Tt][Tt][Pp][Ss]?://{_HOST}(?::(?:0*{_PORT})?)?(?:[/?#][^\x00-\x20\x7f\\]*)?\s*$"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def obj(properties: dict, required: list[str] | None = None, *, extra: bool = False, **more) -> dict:
    """An object schema; unknown keys are refused unless ``extra``."""
    out = {"type": "object", "properties": properties, "additionalProperties": extra, **more}
    if required:
        out["required"] = required
    return out


def envelope(data: dict) -> dict:
    """The success envelope of service.web.http.ok around ``data``."""
    return obj({"success": {"type": "boolean", "enum": [True]}, "message": {"type": "string"}, "data": data},
               ["success", "message", "data"])


def header(name: str) -> dict:
    return {"$ref": f"#/components/headers/{name}"}


def ok(description: str, data: dict | None = None, *, headers: Mapping[str, dict] | None = None,
       content: dict | None = None) -> dict:
    """A success response: the envelope around ``data``, or ``content`` as given."""
    if content is None:
        content = {JSON: {"schema": envelope(data if data is not None else {"type": "object", "nullable": True,
                                                                          "enum": [None]})}}
    return {"description": description, "headers": {"X-Request-ID": header("X-Request-ID"), **(headers or {})},
            "content": content}


def err(status: int, codes: list[str], description: str = "") -> dict:
    """An error response in the error envelope, naming every error_code this route can answer."""
    listed = ", ".join(f"`{c}`" for c in codes)
    headers = {"X-Request-ID": header("X-Request-ID")}
    if status in (429, 503):
        headers["Retry-After"] = header("Retry-After")
    if status == 429:
        headers.update({h: header(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")})
    text = (description + " " if description else "") + f"error_code: {listed}."
    return {"description": text, "headers": headers, "x-error-codes": list(codes),
            "content": {JSON: {"schema": ref("Error"),
                               "example": {"success": False, "error_code": codes[0], "message": "…",
                                           "details": None}}}}


def _headers() -> dict:
    def h(description: str, schema: dict | None = None) -> dict:
        return {"description": description, "schema": schema or {"type": "string"}}
    return {
        "X-Request-ID": h("The request's id: the client's own X-Request-ID if it was 1–128 letters, digits and "
                          "`._:-`, else a generated one. Every log line of the request carries it."),
        "Retry-After": h("Seconds to wait before trying again.", {"type": "integer", "minimum": 0}),
        "X-RateLimit-Limit": h("Requests allowed in the current window.", {"type": "integer"}),
        "X-RateLimit-Remaining": h("Requests left in the current window.", {"type": "integer"}),
        "X-RateLimit-Reset": h("When the window resets (Unix time, seconds).", {"type": "integer"}),
        "Location": h("The new job's URL, relative to the server."),
        "Idempotent-Replayed": h("`true` when an earlier submit with the same Idempotency-Key is returned.",
                                 {"type": "string", "enum": ["true"]}),
        "ETag": h("The file's strong validator (its quoted sha256 when known)."),
        "Last-Modified": h("HTTP date of the file's last change."),
        "Accept-Ranges": h("Always `bytes`.", {"type": "string", "enum": ["bytes"]}),
        "Content-Range": h("The part sent, e.g. `bytes 0-1023/4096`."),
        "Content-Disposition": h("`attachment` with the file's name."),
    }


def _parameters() -> dict:
    return {
        "RequestId": {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
                      "description": "Optional id for this request (1–128 letters, digits and `._:-`); returned in "
                                     "the answer and logged. Any other value is replaced by a generated id, never "
                                     "refused."},
        "JobId": {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "The job's id (a UUID). Another user's job answers 404 `JOB_NOT_FOUND`, "
                                 "exactly like an id that does not exist."},
    }


def _kind_params() -> dict[str, dict]:
    """Each kind's params as its validate() accepts them (the request side)."""
    download = obj({
        "url": {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": HTTP_URL,
                "example": "https://example.com/files/report.pdf",
                "description": "An http or https URL (surrounding white space is trimmed; at most 2048 characters "
                               "after that). Refused (400): other schemes (`URL_SCHEME_NOT_ALLOWED`), a user name or "
                               "password in it (`URL_CREDENTIALS_NOT_ALLOWED`), spaces, control characters, "
                               "backslashes, no host or a port outside 1–65535 (`URL_INVALID`) and, unless the server "
                               "runs with ILGUN_ALLOW_PRIVATE_URLS, a literal loopback, private, link-local or other "
                               "non-public address (`URL_NOT_ALLOWED`; host names are checked when connecting)."},
        "filename": nullable({"type": "string", "minLength": 1, "maxLength": 200, "pattern": PLAIN_NAME,
                              "example": "report.pdf",
                              "description": "Save the file under this plain name (NFC): no folders, control "
                                             "characters, `\\:*?\"<>|`, leading dots, surrounding spaces or "
                                             "Windows device names. Default: from Content-Disposition or the URL."}),
        "sha256": nullable({"type": "string", "pattern": "^[0-9a-fA-F]{64}$", "example": None,
                            "description": "Expected SHA-256 (64 hex digits); the job fails `CHECKSUM_MISMATCH` "
                                           "if the download differs."}),
    }, ["url"], description="Params of `download`. Unknown keys are refused (400 `VALIDATION_ERROR`).")
    sleep = obj({
        "duration": {"type": "number", "minimum": 0, "maximum": 3600, "default": 1.0,
                     "description": "Seconds to wait in total."},
        "steps": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10,
                  "description": "Progress reports, evenly spaced."},
        "fail": {"anyOf": [{"type": "string", "enum": ["permanent", "transient", "crash", None], "nullable": True},
                           {"type": "boolean"}],
                 "description": "Fail at the end: `permanent` (`SLEEP_FAILED`, also `true`), `transient` "
                                "(`SLEEP_TRANSIENT`, retried), `crash` (an unexpected exception). `false`/null: "
                                "succeed."},
        "succeed_on_attempt": nullable({"type": "integer", "description": "With `fail`: succeed from this attempt "
                                                                          "on. Ignored without `fail`."}),
        "write_file": {"type": "boolean", "default": False, "description": "Write `sleep.txt` as a result file."},
        "log_steps": {"type": "boolean", "default": False, "description": "Log a line per step (job log)."},
        "uninterruptible": {"type": "boolean", "default": False,
                            "description": "Steps block without noticing cancel or shutdown (like a long library "
                                           "call): for tests of what the engine does with such jobs."},
    }, description="Params of `sleep` (admins only unless SLEEP_KIND_FOR_EVERYONE). Unknown keys are refused "
                   "(400 `VALIDATION_ERROR`).")
    from service.web.openapi_kinds import cefr_kind_params, crawl_kind_params, document_kind_params
    return {"download": download, "sleep": sleep, **document_kind_params(), "crawl": crawl_kind_params(HTTP_URL),
            "cefr": cefr_kind_params(200_000)}


KIND_PARAMS = _kind_params()
JOB_ERROR_DESCRIPTION = (
    "The last failure (also while queued again after a transient one), else null. Codes: from the engine "
    "`ABANDONED`, `TIMEOUT`, `INTERNAL_ERROR`, `UNKNOWN_KIND`, `WORKSPACE_BUSY`, `DISK_FULL` (any kind: the file "
    "store filled up; not retried, the job's partial files are removed); download `URL_NOT_ALLOWED`, "
    "`URL_SCHEME_NOT_ALLOWED`, `URL_CREDENTIALS_NOT_ALLOWED`, `URL_INVALID`, `TOO_MANY_REDIRECTS`, `FILE_TOO_LARGE`, "
    "`CHECKSUM_MISMATCH`, `UPSTREAM_CLIENT_ERROR`, `UPSTREAM_UNEXPECTED_STATUS`, `TLS_ERROR`, `UPSTREAM_ERROR`, "
    "`TIMEOUT`, `NETWORK_ERROR`; sleep `SLEEP_FAILED`, `SLEEP_TRANSIENT`; ocr and report `FILE_NOT_FOUND`, "
    "`UNSUPPORTED_FILE_TYPE`, `IMAGE_TOO_LARGE`, `IMAGE_INVALID`, `PDF_ENCRYPTED`, "
    "`PDF_INVALID`, `TOO_MANY_PAGES`, `OCR_FAILED`, `OCR_ENGINE_BUSY`; report `FILE_TOO_LARGE`, `XLSX_TOO_LARGE`, "
    "`XLSX_INVALID`, `PDF_TOO_MANY_PAGES`; crawl `TIMEOUT` (its pages so far are kept, result `partial`).")
JOB_EXAMPLE = {
    "id": "0b6f7c1e-3d4a-4f2e-9c5b-8a1d2e3f4a5b", "kind": "download", "owner_id": 2, "status": "queued",
    "progress": 0.0, "message": None, "position": 1, "eta_seconds": 30.0, "attempt": 0, "max_attempts": 3,
    "params": {"url": "https://example.com/files/report.pdf", "filename": None, "sha256": None},
    "created_at": "2026-01-01T12:00:00.000+00:00", "started_at": None, "finished_at": None, "result": None,
    "error": None, "cancel_requested": False, "files": []}


def _schemas(config: Mapping[str, Any]) -> dict:
    statuses = [s.value for s in JobStatus]
    iso = {"type": "string", "format": "date-time"}
    file_view = obj({"name": {"type": "string"}, "size": {"type": "integer", "minimum": 0},
                     "content_type": nullable({"type": "string"}),
                     "sha256": nullable({"type": "string", "pattern": "^[0-9a-f]{64}$"})},
                    ["name", "size", "content_type", "sha256"])
    job = obj({
        "id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "enum": sorted(KIND_PARAMS)},
        "owner_id": {"type": "integer"},
        "status": {"type": "string", "enum": statuses},
        "progress": {"type": "number", "minimum": 0, "maximum": 100},
        "message": nullable({"type": "string"}),
        "position": nullable({"type": "integer", "minimum": 1,
                              "description": "Place in the queue (1 = next to start); null unless queued."}),
        "eta_seconds": nullable({"type": "number", "minimum": 0,
                                 "description": "Estimated seconds until done; null unless queued."}),
        "attempt": {"type": "integer", "minimum": 0},
        "max_attempts": {"type": "integer", "minimum": 1},
        "params": {"type": "object", "additionalProperties": True,
                   "description": "The kind's params as validated and normalised: `download` always has `url`, "
                                  "`filename` and `sha256` (null when not given); `sleep` has `duration` and `steps`, "
                                  "and `fail`, `succeed_on_attempt`, `write_file`, `log_steps` only when set."},
        "created_at": iso, "started_at": nullable(iso), "finished_at": nullable(iso),
        "result": nullable({"type": "object", "additionalProperties": True,
                            "description": "The kind's result once succeeded (DownloadResult, SleepResult), "
                                           "else null."}),
        "error": nullable(obj({"code": {"type": "string"}, "message": nullable({"type": "string"})},
                              ["code", "message"], description=JOB_ERROR_DESCRIPTION)),
        "cancel_requested": {"type": "boolean"},
        "files": {"type": "array", "items": ref("File"),
                  "description": "Result files (empty unless succeeded)."},
    }, ["id", "kind", "owner_id", "status", "progress", "message", "position", "eta_seconds", "attempt",
        "max_attempts", "params", "created_at", "started_at", "finished_at", "result", "error",
        "cancel_requested", "files"], example=JOB_EXAMPLE)
    counts = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    submit_variants = [obj({"kind": {"type": "string", "enum": [name]}, "params": ref(f"{name.title()}Params")},
                           ["kind"] if name == "sleep" else ["kind", "params"], extra=True,
                           title=f"Submit a {name} job") for name in sorted(KIND_PARAMS)]
    return {
        "Error": obj({"success": {"type": "boolean", "enum": [False]},
                      "error_code": {"type": "string", "description": "Stable, for programs (see each response)."},
                      "message": {"type": "string", "description": "For people."},
                      "details": nullable({"type": "object", "additionalProperties": True,
                                           "description": "More facts about the error, or null."})},
                     ["success", "error_code", "message", "details"]),
        "User": obj({"id": {"type": "integer"}, "username": {"type": "string"},
                     "email": nullable({"type": "string"}), "role": {"type": "string", "enum": ["user", "admin"]}},
                    ["id", "username", "email", "role"]),
        "Tokens": obj({"access_token": {"type": "string", "description": "JWT for `Authorization: Bearer`."},
                       "refresh_token": {"type": "string", "description": "JWT for POST /api/v1/auth/refresh."},
                       "token_type": {"type": "string", "enum": ["bearer"]},
                       "expires_in": {"type": "number", "description": "Seconds the access token is valid "
                                      f"(here {config['JWT_ACCESS_TOKEN_EXPIRES']})."}},
                      ["access_token", "refresh_token", "token_type", "expires_in"]),
        "Register": obj({"username": {"type": "string", "pattern": r"^\s*[A-Za-z0-9_.-]{3,32}\s*$",
                                      "description": "3–32 letters, digits, `_`, `.` or `-` (trimmed); unique "
                                                     "regardless of case."},
                         "password": {"type": "string", "minLength": int(config["MIN_PASSWORD_LENGTH"]),
                                      "maxLength": 256},
                         "email": nullable({"type": "string", "pattern": EMAIL,
                                            "description": "An email address; empty or null for none."})},
                        ["username", "password"], extra=True),
        "RegisterForm": obj({"username": {"type": "string", "pattern": r"^\s*[A-Za-z0-9_.-]{3,32}\s*$"},
                             "password": {"type": "string", "minLength": int(config["MIN_PASSWORD_LENGTH"]),
                                          "maxLength": 256},
                             "email": {"type": "string", "pattern": EMAIL, "description": "Empty for none."}},
                            ["username", "password"], extra=True, description="Register as an HTML form."),
        "Login": obj({"username": {"type": "string", "minLength": 1}, "password": {"type": "string", "minLength": 1}},
                     ["username", "password"], extra=True),
        "Logout": obj({"refresh_token": {"type": "string", "description": "Revoked too, if it is this user's."}},
                      extra=True),
        "SubmitJob": {"oneOf": submit_variants, "description": "A kind and its params. An unknown kind answers "
                                                               "404 `UNKNOWN_KIND`."},
        **{f"{name.title()}Params": schema for name, schema in KIND_PARAMS.items()},
        "Job": job,
        "File": file_view,
        "JobPage": obj({"items": {"type": "array", "items": ref("Job")}, "page": {"type": "integer", "minimum": 1},
                        "page_size": {"type": "integer", "minimum": 1}, "total": {"type": "integer", "minimum": 0},
                        "total_pages": {"type": "integer", "minimum": 0}},
                       ["items", "page", "page_size", "total", "total_pages"]),
        "DownloadResult": obj({"url": {"type": "string"}, "final_url": {"type": "string"},
                               "filename": {"type": "string"}, "size": {"type": "integer", "minimum": 0},
                               "content_type": nullable({"type": "string"}), "sha256": {"type": "string"},
                               "redirects": {"type": "array", "items": obj({"url": {"type": "string"},
                                                                            "status": {"type": "integer"}},
                                                                           ["url", "status"])},
                               "http_status": {"type": "integer"}},
                              ["url", "final_url", "filename", "size", "content_type", "sha256", "redirects",
                               "http_status"], description="`result` of a succeeded download job."),
        "SleepResult": obj({"slept": {"type": "number"}, "steps": {"type": "integer"}, "attempt": {"type": "integer"},
                            "began_at": {"type": "number", "description": "Unix time the run began."}},
                           ["slept", "steps", "attempt", "began_at"], description="`result` of a succeeded "
                                                                                   "sleep job."),
        "Stats": obj({
            "scope": {"type": "string", "enum": ["user", "global"],
                      "description": "`global` for admins (everyone's jobs, plus users and workers)."},
            "jobs_by_kind": {"type": "object", "additionalProperties": counts,
                             "description": "{kind: {status: count}}"},
            "jobs_by_status": counts,
            "users": obj({"total": {"type": "integer"}, "active_24h": {"type": "integer"}}, ["total", "active_24h"]),
            "workers": {"type": "array", "items": obj({
                "id": {"type": "string"}, "host": {"type": "string"}, "pid": {"type": "integer"},
                "slots": {"type": "integer"}, "running": {"type": "array", "items": {"type": "string"}},
                "heartbeat_age": {"type": "number"}}, ["id", "host", "pid", "slots", "running", "heartbeat_age"])},
        }, ["scope", "jobs_by_kind", "jobs_by_status"]),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}, "pid": {"type": "integer"}}, ["status", "pid"]),
        "Ready": obj({"status": {"type": "string", "enum": ["ready"]}, "dispatcher": {"type": "boolean"},
                      "pid": {"type": "integer"}}, ["status", "dispatcher", "pid"]),
        "JobLog": obj({
            "job_id": {"type": "string"},
            "lines": {"type": "array", "items": obj({
                "seq": {"type": "integer"}, "at": iso,
                "level": {"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
                "message": {"type": "string"}}, ["seq", "at", "level", "message"])},
            "dropped": {"type": "integer", "minimum": 0, "description": "Older lines no longer kept."},
        }, ["job_id", "lines", "dropped"]),
    }


def components(config: Mapping[str, Any]) -> dict:
    return {
        "schemas": _schemas(config),
        "headers": _headers(),
        "parameters": _parameters(),
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "The access_token from POST /api/v1/auth/login."},
            "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "access_token_cookie",
                           "description": "The pages' sign-in cookie (POST /login). With it, a POST or DELETE "
                                          "must send the csrf_access_token cookie's value in X-CSRF-TOKEN, "
                                          "else 403 `CSRF_FAILED`."},
            "refreshToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                             "description": "The refresh_token from login or refresh (only for "
                                            "POST /api/v1/auth/refresh)."},
            "metricsToken": {"type": "http", "scheme": "bearer",
                             "description": "The configured METRICS_TOKEN (GET /metrics only)."},
        },
    }

"""The OpenAPI paths and schemas of uploads (/api/v1/files) and of a submit with an upload."""
from __future__ import annotations

from typing import Any, Mapping

from service.filetypes import MIME
from service.web.openapi_doc import _FILE, _op, _q, _std
from service.web.openapi_schemas import JSON, err, header, obj, ok, ref

_FILE_ID = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The upload's id (a UUID). Another user's file answers 404 `FILE_NOT_FOUND`, exactly "
                           "like an id that does not exist."}
_TYPES = ", ".join(sorted(MIME))
UPLOAD_ERRORS = {
    "400": err(400, ["FILE_REQUIRED", "FILE_EMPTY", "UNSUPPORTED_MEDIA_TYPE"],
               "No part named `file`, an empty file, or the body is not multipart/form-data."),
    "413": err(413, ["PAYLOAD_TOO_LARGE", "QUOTA_EXCEEDED"],
               "The body is over MAX_CONTENT_LENGTH, or the file would take you over USER_DISK_QUOTA_BYTES "
               "(`details`: used, size, quota)."),
    "415": err(415, ["UNSUPPORTED_FILE_TYPE"], f"The content is none of: {_TYPES} (`details.allowed`)."),
    "507": err(507, ["DISK_FULL"], "The server's file store is full: nothing was kept (no partial file, no "
                                   "upload); try again once space has been freed."),
}


def schemas() -> dict:
    return {
        "Upload": obj({"id": {"type": "string", "format": "uuid"},
                       "name": {"type": "string", "description": "The client's file name made safe (no folders, "
                                                                 "control characters …); the type's extension when "
                                                                 "it had none."},
                       "size": {"type": "integer", "minimum": 1},
                       "content_type": {"type": "string", "enum": sorted(set(MIME.values()))},
                       "file_type": {"type": "string", "enum": sorted(MIME),
                                     "description": "What the content is (magic bytes), whatever the name says."},
                       "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                       "created_at": {"type": "string", "format": "date-time"}},
                      ["id", "name", "size", "content_type", "file_type", "sha256", "created_at"]),
        "UploadForm": obj({"file": {"type": "string", "format": "binary"}}, ["file"], extra=True),
        "UploadPage": obj({"items": {"type": "array", "items": ref("Upload")},
                           "page": {"type": "integer", "minimum": 1}, "page_size": {"type": "integer", "minimum": 1},
                           "total": {"type": "integer", "minimum": 0}, "total_pages": {"type": "integer", "minimum": 0}},
                          ["items", "page", "page_size", "total", "total_pages"]),
        "SubmitJobWithUpload": obj({
            "kind": {"type": "string", "description": "A kind that reads a file (its params take `file_id`)."},
            "params": {"type": "string", "description": "The params as JSON text (`file_id` is set from the upload)."},
            "file": {"type": "string", "format": "binary"}}, ["kind", "file"], extra=True),
    }


def file_paths(config: Mapping[str, Any]) -> dict:
    one = ok("The upload.", ref("Upload"))
    not_found = err(404, ["FILE_NOT_FOUND"], "No such file, or another user's.")
    return {
        "/api/v1/files": {
            "post": _op("files", "Upload a document", {
                "201": ok("Stored.", ref("Upload"), headers={"Location": header("Location")}),
                **UPLOAD_ERRORS, **_std()},
                body={"required": True, "content": {"multipart/form-data": {"schema": ref("UploadForm")}}},
                op_id="uploadFile", description=f"A multipart part named `file`: {_TYPES}. The type is decided by "
                                                "the content, never the name or the part's Content-Type."),
            "get": _op("files", "List your uploads", {
                "200": ok("A page of uploads, newest first.", ref("UploadPage")),
                "400": err(400, ["VALIDATION_ERROR"], "A query parameter is not valid."), **_std()},
                params=[_q("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "Page."),
                        _q("page_size", {"type": "integer", "minimum": 1, "maximum": int(config["MAX_PAGE_SIZE"]),
                                         "default": 20}, "Uploads per page.")],
                op_id="listFiles", description="Yours; an admin sees everyone's."),
        },
        "/api/v1/files/{file_id}": {
            "parameters": [_FILE_ID],
            "get": _op("files", "An upload's record", {"200": one, **_std(), "404": not_found}, op_id="getFile"),
            "delete": _op("files", "Delete an upload", {"200": ok("Deleted."), **_std(), "404": not_found},
                          op_id="deleteFile", description="Jobs still waiting to read it fail with "
                                                          "`FILE_NOT_FOUND` when they run."),
        },
        "/api/v1/files/{file_id}/content": {"parameters": [_FILE_ID], "get": _op("files", "Download an upload", {
            "200": ok("The bytes, as an attachment with the sniffed content type.",
                      headers={h: header(h) for h in ("ETag", "Last-Modified", "Content-Disposition")}, content=_FILE),
            "206": ok("The requested range.", headers={"Content-Range": header("Content-Range")}, content=_FILE),
            "304": {"description": "Not modified (If-None-Match or If-Modified-Since).",
                    "headers": {"X-Request-ID": header("X-Request-ID"), "ETag": header("ETag")}},
            **_std(), "404": not_found,
            "416": err(416, ["RANGE_NOT_SATISFIABLE"], "The range is outside the file."),
        }, op_id="downloadFile")},
    }


def add_upload_submit(paths: dict) -> None:
    """POST /api/v1/jobs also takes multipart: a file and its job in one request."""
    submit = paths["/api/v1/jobs"]["post"]
    submit["requestBody"]["content"]["multipart/form-data"] = {"schema": ref("SubmitJobWithUpload")}
    submit["description"] = ("JSON `{kind, params}`, or multipart/form-data with parts `kind`, `params` (JSON text) "
                             "and `file`: the file is stored as an upload and the job gets its `file_id` (a job "
                             "that is refused keeps no file). A `file_id` must be one of your own uploads.")
    responses = submit["responses"]
    for status, response in UPLOAD_ERRORS.items():
        if status in responses:
            codes = responses[status]["x-error-codes"] + [c for c in response["x-error-codes"]
                                                          if c not in responses[status]["x-error-codes"]]
            responses[status] = err(int(status), codes, responses[status]["description"].split(" error_code:")[0]
                                    + " With an upload: " + response["description"].split(" error_code:")[0])
        else:
            responses[status] = response
    responses["404"] = err(404, ["UNKNOWN_KIND", "FILE_NOT_FOUND"],
                           "No such kind (`details.kinds` lists them), or `file_id` is not one of your uploads.")
    assert JSON in submit["requestBody"]["content"]

"""/api/v1/files: upload a document (multipart field ``file``), list, read, download, delete."""
from __future__ import annotations

import logging

import flask
from flask import Blueprint, current_app, request
from flask_jwt_extended import current_user, jwt_required

from service.errors import StorageFull, ValidationError, disk_full_cause
from service.extensions import limiter
from service.web.http import attachment, int_arg, ok, paginated

bp = Blueprint("files", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)


class UploadRequest(flask.Request):
    """Streams each uploaded part straight into FILES_ROOT/incoming, hashing it on the way
    (werkzeug would keep up to 500 KiB in memory, then spool to the system temp folder,
    which the stored file would then be copied from)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        incoming = current_app.extensions["ilgun"].uploads.incoming()
        self.__dict__.setdefault("_incoming_parts", []).append(incoming)
        return incoming

    def _load_form_data(self) -> None:
        """Parse the form; werkzeug writes each file part into its IncomingFile as it arrives, so
        a full file store shows here, whichever view first reads request.form or .files."""
        try:
            super()._load_form_data()
        except BaseException as exc:
            # a failed parse sets no request.files, so nothing else would close (and so delete)
            # the parts received so far
            for part in self.__dict__.pop("_incoming_parts", ()):
                try:
                    part.close()
                except OSError:  # the file is unlinked even when its last flush fails
                    pass
            cause = disk_full_cause(exc)
            if cause is None:
                raise
            log.warning("upload refused: the file store is full (%s)", cause.strerror or cause)
            # the body is half read: a later look at the form must not parse the rest of it
            self.__dict__.update(form=self.parameter_storage_class(), files=self.parameter_storage_class())
            raise StorageFull() from exc


def _uploads():
    return current_app.extensions["ilgun"].uploads


def _upload_limit() -> str:
    return current_app.config["RATELIMIT_SUBMIT"]


def uploaded_file(field: str = "file"):
    """The multipart part ``field`` of this request, or a 4xx saying what is wrong."""
    if request.mimetype != "multipart/form-data":
        raise ValidationError("Send the file as multipart/form-data with a part named 'file'.",
                              code="UNSUPPORTED_MEDIA_TYPE")
    part = request.files.get(field)
    if part is None:
        raise ValidationError("A part named 'file' is required.", code="FILE_REQUIRED", details={"field": field})
    return part


def save_upload(part) -> dict:
    return _uploads().save(current_user, part.stream, part.filename)


@bp.post("/files")
@jwt_required()
@limiter.limit(_upload_limit)
def upload():
    saved = save_upload(uploaded_file())
    return ok(saved, "Stored.", 201, {"Location": f"/api/v1/files/{saved['id']}"})


@bp.get("/files")
@jwt_required()
def list_files():
    page = int_arg("page", 1, 1, 1_000_000)
    page_size = int_arg("page_size", 20, 1, current_app.config["MAX_PAGE_SIZE"])
    items, total = _uploads().list(current_user, page, page_size)
    return ok(paginated(items, total, page, page_size))


@bp.get("/files/<file_id>")
@jwt_required()
def get_file(file_id):
    return ok(_uploads().get(current_user, file_id))


@bp.get("/files/<file_id>/content")
@jwt_required()
def file_content(file_id):
    return attachment(*_uploads().path(current_user, file_id))


@bp.delete("/files/<file_id>")
@jwt_required()
def delete_file(file_id):
    _uploads().delete(current_user, file_id)
    return ok(None, "Deleted.")

"""Uploads: receive a file, decide its type by content, keep it in the owner's workspace.

Flask-free like jobs_service: the web layer hands in an IncomingFile (what the request's body
was streamed into) and the signed-in user. The bytes are written once — into a temporary file
in FILES_ROOT/incoming, hashed on the way — and the stored file is a hard link to it, so a
64 MiB upload is never copied; the temporary name goes away when the request ends.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from service.errors import QuotaExceeded, StorageFull, UnsupportedFileType, ValidationError, disk_full_cause
from service.filetypes import EXTENSION, MIME, sniff
from service.store.uploads import UploadStore
from service.workspace import Workspace, safe_filename


class IncomingFile:
    """A temporary file that hashes and counts what is written to it (werkzeug writes an upload's
    parts here as they arrive, see service/web/files.py); deleted on close."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", suffix=".part")
        self.name = self._file.name
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._sha.update(data)
        self.size += len(data)
        return self._file.write(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def __getattr__(self, item):
        return getattr(self._file, item)


def _scope(viewer: Mapping[str, Any]) -> int | None:
    return None if viewer.get("role") == "admin" else int(viewer["id"])


def file_view(row: dict) -> dict:
    return {"id": row["id"], "name": row["name"], "size": row["size"], "content_type": row["content_type"],
            "file_type": row["file_type"], "sha256": row["sha256"],
            "created_at": datetime.fromtimestamp(row["created_at"], timezone.utc).isoformat(timespec="milliseconds")}


class FileService:
    def __init__(self, config: Mapping[str, Any], engine, workspace: Workspace):
        self.config = config
        self.workspace = workspace
        self.uploads = UploadStore(engine)

    def incoming(self) -> IncomingFile:
        return IncomingFile(self.workspace.incoming_dir())

    def save(self, viewer, incoming: IncomingFile, filename: str | None) -> dict:
        """Keep an upload for ``viewer``; the type comes from the content, the name (made safe)
        from the client, with the extension of the real type when it had none. A full file
        store is StorageFull (507), with nothing kept."""
        try:
            return self._save(viewer, incoming, filename)
        except OSError as exc:
            if disk_full_cause(exc) is None:
                raise
            raise StorageFull() from exc

    def _save(self, viewer, incoming: IncomingFile, filename: str | None) -> dict:
        owner = int(viewer["id"])
        incoming.flush()
        if incoming.size == 0:
            raise ValidationError("The file is empty.", code="FILE_EMPTY")
        file_type = sniff(incoming.name)
        if file_type is None:
            raise UnsupportedFileType(
                "Upload a PNG, JPEG, TIFF, WebP or BMP image, a PDF, or an XLSX/XLSM workbook.",
                details={"allowed": sorted(MIME)})
        quota = int(self.config["USER_DISK_QUOTA_BYTES"])
        used = self.uploads.bytes_used(owner)
        if used + incoming.size > quota:
            raise QuotaExceeded(details={"used": used, "size": incoming.size, "quota": quota})
        name = safe_filename(filename or "", default="upload")
        if "." not in name:
            name += EXTENSION[file_type]
        file_id = str(uuid.uuid4())
        dest = self.workspace.upload_path(owner, file_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(incoming.name, dest)
        except OSError:  # FILES_ROOT/incoming on another filesystem (a bind mount): copy instead
            try:
                shutil.copyfile(incoming.name, dest)
            except BaseException:  # a full disk: no half copy is left behind
                dest.unlink(missing_ok=True)
                raise
        row = {"id": file_id, "owner_id": owner, "name": name, "size": incoming.size, "file_type": file_type,
               "content_type": MIME[file_type], "sha256": incoming.sha256, "created_at": time.time()}
        try:
            self.uploads.add(row)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return file_view(row)

    def get(self, viewer, file_id: str) -> dict:
        return file_view(self.uploads.get(file_id, _scope(viewer)))

    def list(self, viewer, page: int, page_size: int) -> tuple[list[dict], int]:
        rows, total = self.uploads.list(_scope(viewer), page, page_size)
        return [file_view(r) for r in rows], total

    def path(self, viewer, file_id: str) -> tuple[Path, dict]:
        row = self.uploads.get(file_id, _scope(viewer))
        return self.workspace.upload_path(row["owner_id"], row["id"]), row

    def delete(self, viewer, file_id: str) -> None:
        """Jobs already queued with this file fail with FILE_NOT_FOUND when they run."""
        row = self.uploads.delete(file_id, _scope(viewer))
        self.workspace.upload_path(row["owner_id"], row["id"]).unlink(missing_ok=True)

    def check_owned(self, owner_id: int, file_id: str) -> dict:
        """For a submit: the file exists and belongs to the job's owner (admins included: a job
        reads only its owner's files)."""
        return self.uploads.get(file_id, int(owner_id))

"""Per-user workspaces on disk. No path handed in by a user ever escapes its workspace.

Layout under FILES_ROOT:
    users/<owner_id>/jobs/<job_id>/out/   finished output files, listed by the API
    users/<owner_id>/jobs/<job_id>/tmp/   partial files of the running attempt
    users/<owner_id>/uploads/<file_id>    an uploaded file (name and type in the uploads table)
    incoming/                             uploads being received (deleted when the request ends)
    locks/<job_id>.lock                   filelock held by the execution that owns the job dir

The lock lives outside the job folder so that removing the folder never removes a lock
someone holds. The OS drops a flock when its process dies, so a killed worker never leaves a
job folder locked.
"""
from __future__ import annotations

import os
import re
import shutil
import unicodedata
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

from service.errors import PathNotAllowed

MAX_NAME_LENGTH = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_filename(name: str, default: str | None = None) -> str:
    """A plain file name: no directories, no control characters, no leading dots.

    Raises PathNotAllowed when nothing usable is left and no default is given."""
    name = unicodedata.normalize("NFC", str(name or ""))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if name.lower().split(".", 1)[0] in _RESERVED:
        name = "_" + name
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: MAX_NAME_LENGTH - len(ext) - 1] + "." + ext) if dot and len(ext) < 16 else name[:MAX_NAME_LENGTH]
    if not name or name in {".", ".."}:
        if default is None:
            raise PathNotAllowed("That file name is empty or not allowed.", details={"name": str(name)})
        return default
    return name


def check_plain_name(name: str) -> str:
    """Accept a name from a URL only if it is already a plain name (no sanitising: refuse)."""
    if not name or name != safe_filename(name, default=""):
        raise PathNotAllowed("That file name is not allowed.", details={"name": name})
    return name


def safe_join(base: Path, name: str) -> Path:
    """``base/name`` for a plain name, refusing anything that resolves outside ``base``
    (``..``, absolute paths, and symlinks pointing elsewhere)."""
    check_plain_name(name)
    base_real = Path(os.path.realpath(base))
    target = Path(os.path.realpath(base_real / name))
    if target.parent != base_real:
        raise PathNotAllowed("That path leaves the workspace.", details={"name": name})
    return target


def _check_job_id(job_id: str) -> str:
    """A job or file id as it is on disk: a canonical UUID, so never a path."""
    try:
        return str(uuid.UUID(str(job_id)))
    except ValueError:
        raise PathNotAllowed("Not an id.", details={"id": str(job_id)[:64]}) from None


class Workspace:
    def __init__(self, root: str | os.PathLike, lock_factory=None):
        """``lock_factory(job_id)``: the lock guarding a job's folder; default a file lock under
        ``root/locks`` (one host). Several hosts pass a database lock (store.folder_lock)."""
        self.root = Path(root)
        self._lock_factory = lock_factory

    def user_dir(self, owner_id: int) -> Path:
        return self.root / "users" / str(int(owner_id))

    def job_dir(self, owner_id: int, job_id: str) -> Path:
        return self.user_dir(owner_id) / "jobs" / _check_job_id(job_id)

    def output_dir(self, owner_id: int, job_id: str) -> Path:
        return self.job_dir(owner_id, job_id) / "out"

    def tmp_dir(self, owner_id: int, job_id: str) -> Path:
        return self.job_dir(owner_id, job_id) / "tmp"

    def output_file(self, owner_id: int, job_id: str, name: str) -> Path:
        out = self.output_dir(owner_id, job_id)
        # the folder itself must resolve inside the files root too (no symlinked out/ or jobs/)
        if not Path(os.path.realpath(out)).is_relative_to(Path(os.path.realpath(self.root))):
            raise PathNotAllowed("That path leaves the workspace.", details={"name": name})
        return safe_join(out, name)

    def upload_path(self, owner_id: int, file_id: str) -> Path:
        return self.user_dir(owner_id) / "uploads" / _check_job_id(file_id)

    def incoming_dir(self) -> Path:
        return self.root / "incoming"

    def job_lock(self, job_id: str):
        if self._lock_factory is not None:
            return self._lock_factory(_check_job_id(job_id))
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"{_check_job_id(job_id)}.lock"))

    def forget_job_lock(self, job_id: str) -> None:
        """Remove a job's lock file; only for a job no execution will lock again."""
        try:
            os.unlink(self.root / "locks" / f"{_check_job_id(job_id)}.lock")
        except OSError:
            pass

    def discard_job_files(self, owner_id: int, job_id: str) -> None:
        """Remove a job's folder: the leftovers of a dead attempt before a new one starts, or the
        files of an attempt that failed, was cancelled or wrote nothing. The folders are made
        again when a job first writes (RunContext)."""
        shutil.rmtree(self.job_dir(owner_id, job_id), ignore_errors=True)

    def discard_tmp(self, owner_id: int, job_id: str) -> None:
        shutil.rmtree(self.tmp_dir(owner_id, job_id), ignore_errors=True)

    def remove_job(self, owner_id: int, job_id: str, lock_timeout: float = 10.0) -> None:
        """Delete a job's files, waiting for any execution still holding the job's lock."""
        lock = self.job_lock(job_id)
        try:
            with lock.acquire(timeout=lock_timeout):
                shutil.rmtree(self.job_dir(owner_id, job_id), ignore_errors=True)
        except Timeout:
            shutil.rmtree(self.job_dir(owner_id, job_id), ignore_errors=True)
        self.forget_job_lock(job_id)

"""What a running job sees: its params, folders, progress reporting and a stop flag."""
from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from filelock import Timeout

from service.engine.job_log import JobLogBuffer
from service.engine.kind import JobCancelled, JobFailed, TransientJobError
from service.errors import PathNotAllowed
from service.workspace import safe_filename

log = logging.getLogger(__name__)

# Why progress is throttled: a kind may report on every chunk, and each report is a
# database write competing for SQLite's single write lock with every other worker.
PROGRESS_MIN_INTERVAL = 0.25
# How long an execution waits for its job's folder lock: only a stale execution of the same
# job (a hung worker that lost its lease) can hold it, and it lets go when it notices.
FOLDER_LOCK_WAIT = 30.0


class _AtomicOutput:
    """A file written under tmp/ and moved into out/ only when closed without error,
    so a reader never sees a half-written output. Hashes what it writes on the way."""

    def __init__(self, ctx: "RunContext", name: str, mode: str):
        self._ctx, self.name = ctx, name
        self._final = ctx.workspace / name
        self._partial = ctx.tmp_dir / f".{name}.part"
        self._file = open(self._partial, mode)
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        if self._sha is not None:
            raw = data.encode() if isinstance(data, str) else data
            self._sha.update(raw)
            self.size += len(raw)
        return self._file.write(data)

    def seek(self, *args):
        # A writer that goes back (zipfile fixing a header: openpyxl, for one) makes the running
        # hash wrong: the file is hashed once it is complete instead.
        self._sha = None
        return self._file.seek(*args)

    def __getattr__(self, item):
        return getattr(self._file, item)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            # close flushes what is still buffered: on a full disk (ENOSPC) this is often where
            # the error first shows, and the partial file must go then too
            self._file.close()
        except BaseException:
            self._drop()
            raise
        if exc_type is None:
            os.replace(self._partial, self._final)
            if self._sha is not None:
                self._ctx._hashes[self.name] = self._sha.hexdigest()
        else:
            self._drop()
        return False

    def _drop(self) -> None:
        try:
            os.unlink(self._partial)
        except OSError:
            pass


class RunContext:
    def __init__(self, job: Mapping[str, Any], config: Mapping[str, Any], folders, report_progress,
                 folder_lock=None, inputs=None):
        """``folders``: a callable returning (output folder, temp folder), called on first use;
        ``inputs``: a callable giving the path of one of the owner's uploads by its id."""
        self.job_id: str = job["id"]
        self.owner_id: int = job["owner_id"]
        self.kind: str = job["kind"]
        self.params: Mapping[str, Any] = job["params"] or {}
        self.attempt: int = job["attempt"]
        self.token: str = job["run_token"]
        self.config = config
        self._folders = folders
        self._paths: tuple[Path, Path] | None = None
        self.log = logging.getLogger(f"ilgun.job.{self.kind}")  # its lines also go to the job's log
        self.job_log = JobLogBuffer()
        self.started_monotonic = time.monotonic()
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._report = report_progress
        # counted from the start, so a job shorter than the interval writes no progress at all
        # (its finish sets 100 %): one write transaction fewer per short job
        self._last_write = self.started_monotonic
        self._pending: tuple[float, str | None] | None = None
        self._hashes: dict[str, str] = {}
        self.final_recorded = False  # set by the engine once this execution wrote a final state
        self.looked_for_next_at: float | None = None  # when the engine's finish began to claim a next job
        self.claim_room: dict | None = None  # per-process room its finish's claim holds (local_room.py)
        # The job's folder lock (a callable making a filelock.FileLock), taken on first use of
        # a folder: most jobs of some kinds never touch the disk, and a lock file per job was a
        # measurable share of a short job's cost.
        self._make_folder_lock = folder_lock
        self._inputs = inputs
        self._folder_lock = None
        self.folder_locked = False

    # -- the folder lock ------------------------------------------------------------------
    def lock_folder(self, timeout: float = FOLDER_LOCK_WAIT) -> bool:
        """Take the job's folder lock (once); False if another execution kept it for ``timeout``."""
        if self.folder_locked or self._make_folder_lock is None:
            return True
        if self._folder_lock is None:
            self._folder_lock = self._make_folder_lock()
        try:
            self._folder_lock.acquire(timeout=timeout)
        except Timeout:
            return False
        self.folder_locked = True
        return True

    def release_folder(self) -> None:
        if self._folder_lock is not None and self._folder_lock.is_locked:
            self._folder_lock.release()

    def _own_folder(self) -> None:
        if not self.lock_folder():
            raise TransientJobError("WORKSPACE_BUSY", "A previous attempt of this job still holds its files.")

    # -- folders (made on first use: most jobs of some kinds write nothing) -----------------
    def _folder_path(self, which: int) -> Path:
        if self._paths is None:
            self._paths = self._folders()
        return self._paths[which]

    _out_dir = property(lambda self: self._folder_path(0))
    _tmp_dir = property(lambda self: self._folder_path(1))

    @property
    def workspace(self) -> Path:
        """The job's output folder: every file left here is a result file."""
        self._own_folder()
        self._out_dir.mkdir(parents=True, exist_ok=True)
        return self._out_dir

    @property
    def tmp_dir(self) -> Path:
        self._own_folder()
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        return self._tmp_dir

    # -- stopping -------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        """reason: cancel (user), timeout, shutdown (worker leaving) or lost (lease taken over)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def check_cancelled(self) -> None:
        if self._stop.is_set():
            raise JobCancelled(self.stop_reason)

    def wait(self, seconds: float) -> bool:
        """Sleep that wakes up at once on cancel; True if the job should stop."""
        return self._stop.wait(seconds)

    # -- progress -------------------------------------------------------------------------
    def progress(self, percent: float, message: str | None = None) -> None:
        percent = max(0.0, min(100.0, float(percent)))
        self._pending = (percent, message)
        now = time.monotonic()
        if now - self._last_write >= PROGRESS_MIN_INTERVAL:
            self.flush_progress()

    def flush_progress(self) -> None:
        if self._pending is None:
            return
        percent, message = self._pending
        self._pending = None
        self._last_write = time.monotonic()
        if not self._report(self.job_id, self.token, percent, message):
            self.request_stop("lost")

    def note(self, message: str, level: str = "INFO") -> None:
        """A line for the job's own log only (GET /api/v1/jobs/<id>/log), not the process log."""
        self.job_log.add(level, message)

    # -- files ----------------------------------------------------------------------------
    def open_output(self, name: str, mode: str = "wb") -> _AtomicOutput:
        if "r" in mode or "+" in mode:
            raise ValueError("outputs are write-only")
        return _AtomicOutput(self, safe_filename(name), mode)

    def input_file(self, file_id: str) -> Path:
        """The path of the job owner's upload ``file_id`` (checked at submit; it may have been
        deleted since: then the job fails with FILE_NOT_FOUND)."""
        try:
            path = self._inputs(file_id) if self._inputs is not None else None
        except PathNotAllowed:
            path = None
        if path is None or not path.is_file():
            raise JobFailed("FILE_NOT_FOUND", "The uploaded file no longer exists.", {"file_id": str(file_id)[:64]})
        return path

    def temp_path(self, name: str) -> Path:
        return self.tmp_dir / safe_filename(name)

    def output_files(self) -> list[dict]:
        files = []
        if self._make_folder_lock is not None and not self.folder_locked:
            return files  # this execution never opened its folder (first use takes the lock)
        if not self._out_dir.is_dir():
            return files
        for path in sorted(self._out_dir.iterdir()):
            if not path.is_file() or path.is_symlink():
                continue
            sha = self._hashes.get(path.name) or _sha256_file(path)
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files.append({"name": path.name, "size": path.stat().st_size, "content_type": ctype, "sha256": sha})
        return files


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

"""The plugin contract for job kinds.

A kind is one module in ``service/kinds`` with a subclass of JobKind, listed once in
``service/kinds/__init__.py``. The engine calls ``validate`` on the request thread (cheap checks
only) and ``run`` on an executor thread.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol


class JobFailed(Exception):
    """A permanent failure: the job fails at once with ``code``."""

    def __init__(self, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class TransientJobError(JobFailed):
    """A failure worth retrying (network error, 5xx): retried with backoff up to max_attempts."""


class JobCancelled(Exception):
    """Raised by ``ctx.check_cancelled()``; the engine records the job as cancelled.

    A kind whose work is useful in part (a crawl) raises it with ``result``: on a user's cancel
    or a timeout the engine then keeps the job's output files and records that result (mark it
    partial). On a shutdown hand-back or a lost lease the result is dropped as usual."""

    def __init__(self, reason: str | None = None, result: dict | None = None):
        super().__init__(reason)
        self.result = result


class JobContext(Protocol):
    job_id: str
    owner_id: int
    params: Mapping[str, Any]
    attempt: int
    config: Mapping[str, Any]
    workspace: Path  # the job's output folder

    @property
    def cancelled(self) -> bool: ...
    def check_cancelled(self) -> None: ...
    def progress(self, percent: float, message: str | None = None) -> None: ...
    def open_output(self, name: str, mode: str = "wb"): ...
    def temp_path(self, name: str) -> Path: ...


class JobKind:
    name: str = ""
    description: str = ""
    # Running jobs of this kind per user at once (None: no limit). over_limit says what a
    # submission beyond it does: "queue" waits its turn, "refuse" is answered 409.
    per_user_limit: int | None = None
    over_limit: str = "queue"
    # The 409's error code and message when over_limit is "refuse" (None: CONCURRENCY_LIMIT).
    over_limit_error: tuple[str, str] | None = None
    # Running jobs of this kind across all workers and hosts (None: no limit).
    global_limit: int | None = None
    # Running jobs of this kind in one worker process (None: no limit): for kinds holding a big
    # engine per process, so their jobs spread over workers (engine/local_room.py).
    per_process_limit: int | None = None
    max_attempts: int = 3
    timeout_seconds: float = 3600.0
    retry_backoff_seconds: float = 2.0
    admin_only: bool = False
    # Used for the ETA before any job of this kind has finished.
    default_duration_seconds: float = 5.0

    def validate(self, params: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
        """Return normalised params or raise service.errors.ValidationError."""
        raise NotImplementedError

    def run(self, ctx: JobContext) -> dict:
        """Do the work; return the JSON-serialisable result summary."""
        raise NotImplementedError

    def _override(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        return (config.get("KIND_LIMITS") or {}).get(self.name, {})

    def limits_for(self, config: Mapping[str, Any]) -> tuple[int | None, int | None]:
        """(per_user_limit, global_limit), overridable by config ``KIND_LIMITS``."""
        override = self._override(config)
        return (override.get("per_user", self.per_user_limit), override.get("global", self.global_limit))

    def process_limit_for(self, config: Mapping[str, Any]) -> int | None:
        return self._override(config).get("per_process", self.per_process_limit)

    def local_gate(self, config: Mapping[str, Any]) -> "Callable[[], bool] | None":
        """A check this process makes before it claims or starts a job of this kind (False:
        leave it to another worker), or None. For kinds whose jobs run best where a resource
        already is (a warm OCR engine: kinds/ocr.py)."""
        return None

    def timeout_for(self, config: Mapping[str, Any]) -> float:
        return float(self._override(config).get("timeout", self.timeout_seconds))

    def over_limit_for(self, config: Mapping[str, Any]) -> str:
        mode = self._override(config).get("over_limit", self.over_limit)
        if mode not in ("queue", "refuse"):
            raise ValueError(f"KIND_LIMITS[{self.name!r}].over_limit must be 'queue' or 'refuse'")
        return mode

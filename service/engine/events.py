"""What the dispatcher tells observers (metrics, for one) about the jobs it runs.

Observers are called on the job's thread right after the database write, so they must be quick
and must not raise (the dispatcher logs and ignores what they raise).
"""
from __future__ import annotations

import logging
from typing import Iterable, Protocol

log = logging.getLogger(__name__)


class JobObserver(Protocol):
    def job_finished(self, kind: str, status: str, error_code: str | None, duration: float | None) -> None:
        """A final state was recorded: status is succeeded, failed or cancelled; duration is
        seconds of this execution (this attempt), or None when no execution ended it here (a
        job cancelled while queued, one the lease sweep gave up on as ABANDONED)."""

    def job_retried(self, kind: str, error_code: str) -> None:
        """A transient failure sent the job back to the queue for another attempt."""


def notify(observers: Iterable[JobObserver], event: str, *args) -> None:
    """Call ``event`` on every observer; one that raises is logged and skipped (an observer must
    never fail the job or the request that reported to it)."""
    for observer in observers:
        try:
            getattr(observer, event)(*args)
        except Exception:
            log.exception("job observer %r failed on %s", observer, event)

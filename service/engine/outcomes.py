"""How an execution's outcome is recorded: success (with the next job claimed in the same
transaction), failure, retry with backoff, cancel, timeout and hand-back, each with the job's
pending log lines, and observers told after the write. A mixin of Dispatcher (dispatcher.py),
kept apart so each file stays short; it uses the dispatcher's stores, lock and settings.
"""
from __future__ import annotations

import logging
import random
import time

from service.engine import events
from service.engine.context import RunContext
from service.engine.kind import JobCancelled, JobFailed, TransientJobError
from service.engine.status import JobStatus
from service.errors import StorageFull, disk_full_cause

log = logging.getLogger("service.engine.dispatcher")

MAX_BACKOFF = 300.0


class OutcomeMixin:
    def _run_kind(self, job: dict, ctx: RunContext) -> dict | None:
        """Run the kind and record the outcome; returns the next job if one was claimed for
        this slot in the same transaction as a success."""
        kind = self.kinds[job["kind"]]
        owner, job_id = job["owner_id"], job["id"]
        self._discard(ctx)
        started = time.monotonic()
        ctx.job_log.add("INFO", f"attempt {job['attempt']} of {job['max_attempts']} started on {self.worker_id}")
        try:
            result = _run_checking_disk(kind, ctx)
            # No flush of the last progress report: the finish writes 100 % and "done" in the
            # same transaction, and each write costs a turn at SQLite's single write lock.
            ctx.check_cancelled()
            files = ctx.output_files()
            if files:
                self.workspace.discard_tmp(owner, job_id)
            else:  # nothing to keep: leave no empty folders behind
                self._discard(ctx)
            duration = time.monotonic() - started
            line = f"succeeded in {duration:.2f}s" + (f" with {len(files)} file(s)" if files else "")
            outcome = dict(result=result, files=files, duration=duration, kind=job["kind"], message="done")
            if not self._accepting:
                self._finish(ctx, JobStatus.SUCCEEDED, None, ("INFO", line), **outcome)
                return None
            ctx.looked_for_next_at = time.monotonic()
            with self._lock:  # given back once the next job is registered (_execute_one)
                ctx.claim_room = self._room.take(self._running_kinds(), finishing=ctx.kind)
            with ctx.job_log.writing:
                lines = self._lines(ctx, "INFO", line)
                ctx.final_recorded, next_job = self.claims.finish_and_claim(
                    job_id, ctx.token, JobStatus.SUCCEEDED,
                    claim_for=(self.worker_id, self.policies, self.lease_seconds), room=ctx.claim_room,
                    log_lines=lines, log_trim=self._needs_trim(ctx), **outcome)
            self._notify_finished(ctx, JobStatus.SUCCEEDED, None)
            return next_job
        except JobCancelled as exc:
            self._stopped(job, ctx, exc.result)
        except TransientJobError as exc:
            self._discard(ctx)
            if job["attempt"] < job["max_attempts"] and not ctx.cancelled:
                delay = min(MAX_BACKOFF, kind.retry_backoff_seconds * 2 ** (job["attempt"] - 1))
                delay *= random.uniform(0.5, 1.0)
                with ctx.job_log.writing:
                    self.claims.requeue(job_id, ctx.token, run_after=time.time() + delay, error_code=exc.code,
                                        error_message=exc.message,
                                        message=f"retrying in {delay:.1f}s after {exc.code}",
                                        log_lines=self._lines(ctx, "WARNING",
                                                              f"{exc.code}: {exc.message} (retrying in {delay:.1f}s)"))
                self._notify("job_retried", ctx.kind, exc.code)
            else:
                self._finish(ctx, JobStatus.FAILED, exc.code, ("ERROR", f"failed {exc.code}: {exc.message}"),
                             error_message=exc.message, result=_details(exc))
        except JobFailed as exc:
            self._discard(ctx)
            self._finish(ctx, JobStatus.FAILED, exc.code, ("ERROR", f"failed {exc.code}: {exc.message}"),
                         error_message=exc.message, result=_details(exc))
        except Exception as exc:  # a bug in a kind must not take the worker down
            log.exception("job %s (%s) crashed", job_id, job["kind"])
            self._discard(ctx)
            message = f"The job failed unexpectedly ({type(exc).__name__})."
            self._finish(ctx, JobStatus.FAILED, "INTERNAL_ERROR", ("ERROR", f"failed INTERNAL_ERROR: {message}"),
                         error_message=message)
        return None

    def _finish(self, ctx: RunContext, status: JobStatus, error_code: str | None, line: tuple[str, str],
                **outcome) -> None:
        """Record a final state with the job's pending log lines and ``line`` (level, text)."""
        with ctx.job_log.writing:
            lines = self._lines(ctx, *line)
            ctx.final_recorded = self.claims.finish(ctx.job_id, ctx.token, status, error_code=error_code,
                                                    log_lines=lines, log_trim=self._needs_trim(ctx), **outcome)
        self._notify_finished(ctx, status, error_code)

    def _needs_trim(self, ctx: RunContext) -> bool:
        return ctx.job_log.needs_trim(ctx.attempt, self.claims.log_keep)

    @staticmethod
    def _lines(ctx: RunContext, level: str, text: str) -> list:
        ctx.job_log.add(level, text)
        return ctx.job_log.take()

    def _hand_back(self, job_id: str, token: str, ctx: RunContext | None = None) -> None:
        """Requeue a job this worker is leaving, its attempt not counted (it did nothing wrong)."""
        message = "handed back: worker shutting down"
        lines = self._lines(ctx, "INFO", message) if ctx is not None else [(time.time(), "INFO", message)]
        self.claims.requeue(job_id, token, run_after=time.time(), refund_attempt=True, message=message,
                            log_lines=lines)

    def _discard(self, ctx: RunContext) -> None:
        """Remove the job's folder if this execution owns it (it only exists if it was locked)."""
        if ctx.folder_locked:
            self.workspace.discard_job_files(ctx.owner_id, ctx.job_id)

    def _stopped(self, job: dict, ctx: RunContext, partial: dict | None = None) -> None:
        """``partial``: the result of a kind that keeps what it did so far (kind.JobCancelled)."""
        reason = ctx.stop_reason
        if reason == "lost":
            return  # another worker owns the job now; leave its files and record alone
        kept = {}
        if partial is not None and reason in ("cancel", "timeout"):
            kept = dict(result=partial, files=ctx.output_files())
            if kept["files"]:
                self.workspace.discard_tmp(job["owner_id"], job["id"])
            else:
                self._discard(ctx)
        else:
            self._discard(ctx)
        if reason == "shutdown":
            with ctx.job_log.writing:
                self._hand_back(job["id"], ctx.token, ctx)
        elif reason == "timeout":
            message = f"The job ran longer than {job['timeout_seconds']:.0f}s."
            self._finish(ctx, JobStatus.FAILED, "TIMEOUT", ("ERROR", f"failed TIMEOUT: {message}"),
                         error_message=message, **kept)
        else:
            self._finish(ctx, JobStatus.CANCELLED, None, ("INFO", "cancelled" + (" (partial result kept)" if kept else "")),
                         message="cancelled", **kept)

    # -- observers ------------------------------------------------------------------------
    def _notify_finished(self, ctx: RunContext, status: JobStatus, error_code: str | None) -> None:
        """Tell observers about a final state this execution recorded (a fenced write, one that
        lost its lease, recorded nothing and is not reported)."""
        if ctx.final_recorded:
            self._notify("job_finished", ctx.kind, status.value, error_code,
                         time.monotonic() - ctx.started_monotonic)

    def _notify(self, event: str, *args) -> None:
        events.notify(self.observers, event, *args)


def _run_checking_disk(kind, ctx: RunContext) -> dict:
    """``kind.run(ctx)``, with a full file store (ENOSPC/EDQUOT anywhere in the exception chain,
    however a kind wrapped it: a download's NETWORK_ERROR, a document's "cannot read") turned
    into a permanent DISK_FULL. Permanent because a retry cannot help until an operator frees
    space, and a retry loop would only keep hitting the full disk. The failure path then
    removes the job's folder, so no partial or temporary file is left behind."""
    try:
        return kind.run(ctx)
    except JobCancelled:
        raise
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        log.warning("job %s (%s): the file store is full (%s)", ctx.job_id, ctx.kind, cause.strerror or cause)
        reason = cause.strerror or "no space left"
        raise JobFailed(StorageFull.code, f"The file store is full: {reason}. The job's partial files were "
                                          "removed; it can be retried once space has been freed.") from exc


def _details(exc: JobFailed):
    return {"error_details": exc.details} if exc.details is not None else None

"""The dispatcher's monitor thread: cancel flags, timeouts, lease renewal, heartbeat, sweep.

A mixin of Dispatcher (service/engine/dispatcher.py), kept apart so each file stays short; it
uses the dispatcher's registry of running executions (``_active`` under ``_lock``), its stores
and settings.
"""
from __future__ import annotations

import logging
import os
import time

from service.engine.context import RunContext
from service.engine.job_log import FLUSH_INTERVAL
from service.engine.status import JobStatus

log = logging.getLogger("service.engine.dispatcher")

MONITOR_INTERVAL = 0.5   # cancel flags and timeouts are checked this often


class MonitorMixin:
    def _monitor_loop(self) -> None:
        next_renew = next_sweep = next_flush = 0.0
        while not self._monitor_stop.wait(MONITOR_INTERVAL):
            now = time.monotonic()
            self._safe(self._check_flags)
            if now >= next_flush:
                self._safe(self._flush_job_logs)
                next_flush = now + FLUSH_INTERVAL
            if now >= next_renew:
                self._safe(self._renew)
                self._safe(self._heartbeat)
                next_renew = now + self.lease_seconds / 4
            if now >= next_sweep and not self._stopping.is_set():
                self._safe(self._sweep)
                next_sweep = now + self.sweep_interval

    def _contexts(self) -> dict[str, RunContext]:
        with self._lock:
            return dict(self._active)

    def _check_flags(self) -> None:
        active = self._contexts()
        flags = self.claims.cancel_flags({j: c.token for j, c in active.items()})
        now = time.monotonic()
        for job_id, ctx in active.items():
            if job_id not in flags:
                ctx.request_stop("lost")
            elif flags[job_id]:
                ctx.request_stop("cancel")
            timeout = self.policies[ctx.kind].timeout_seconds
            if timeout and now - ctx.started_monotonic > timeout:
                ctx.request_stop("timeout")
                if now - ctx.started_monotonic > timeout + self.timeout_grace and not ctx.final_recorded:
                    # The kind ignores its stop flag. A thread cannot be killed, so it keeps its
                    # slot until it returns, but the job must not look running forever: record
                    # the timeout here; the run token fences whatever the thread writes later.
                    message = f"The job ran longer than {timeout:.0f}s and did not stop."
                    self._finish(ctx, JobStatus.FAILED, "TIMEOUT", ("ERROR", f"failed TIMEOUT: {message}"),
                                 error_message=message)

    def _flush_job_logs(self) -> None:
        """Write what running jobs logged since the last flush, so their log is live."""
        taken = []
        for job_id, ctx in self._contexts().items():
            if ctx.job_log.pending and ctx.job_log.writing.acquire(blocking=False):
                taken.append(ctx)  # busy: its finish is writing them right now
        if not taken:
            return
        try:
            lost = self.job_logs.append_running({c.job_id: (c.token, c.job_log.take()) for c in taken})
        finally:
            for ctx in taken:
                ctx.job_log.writing.release()
        for ctx in taken:
            if ctx.job_id in lost and not ctx.final_recorded:
                ctx.request_stop("lost")

    def _renew(self) -> None:
        active = self._contexts()
        for job_id in self.claims.renew({j: c.token for j, c in active.items()}, self.lease_seconds):
            active[job_id].request_stop("lost")

    def _heartbeat(self) -> None:
        self.workers.heartbeat(self.worker_id, self.host, os.getpid(), self.slots, self.active_ids())

    def _sweep(self) -> None:
        requeued, abandoned = self.claims.sweep()
        for job in abandoned:   # only the sweep that wrote the failure gets the job back
            self.workspace.remove_job(job["owner_id"], job["id"], lock_timeout=0.1)
            self._notify("job_finished", job["kind"], "failed", "ABANDONED", None)
        if requeued:
            log.warning("recovered %d job(s) from dead workers: %s", len(requeued), requeued)
            self._wake.set()
        self.workers.prune(stale_after=self.lease_seconds * 2)


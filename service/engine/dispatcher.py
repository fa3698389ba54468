"""One dispatcher per process: claims jobs into a thread pool while it has free slots.

Threads:
  * the claim loop: claims as many jobs as there are free slots, then sleeps until woken
    (a local submit or a finished job) or the poll interval passes (jobs submitted elsewhere);
  * the monitor (monitor.py): every MONITOR_INTERVAL reads cancel flags and enforces timeouts, renews
    leases and the worker heartbeat every lease/4, and sweeps expired leases.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

from service import log_context
from service.engine.context import RunContext
from service.engine.job_log import capture as job_log_capture
from service.engine.kind import JobKind
from service.engine.local_room import LocalRoom
from service.engine.monitor import MonitorMixin
from service.engine.outcomes import OutcomeMixin
from service.store.claims import ClaimStore
from service.store.job_logs import KEEP_LINES, JobLogStore
from service.store.jobs import KindPolicy
from service.store.listener import QueueListener, supports_notify
from service.store.workers import WorkerStore
from service.workspace import Workspace

log = logging.getLogger(__name__)

CLAIM_WAIT = 0.25   # seconds a submit waits for a claim in flight before queueing its job


def policy_for(kind: JobKind, config: Mapping[str, Any]) -> KindPolicy:
    per_user, global_limit = kind.limits_for(config)
    return KindPolicy(kind.name, per_user, kind.over_limit_for(config), global_limit, kind.max_attempts,
                      kind.timeout_for(config), kind.over_limit_error)


class NoFreeSlot(Exception):
    """Every executor slot of this worker is busy (Dispatcher.run_now)."""


class Dispatcher(MonitorMixin, OutcomeMixin):
    def __init__(self, engine, kinds: Mapping[str, JobKind], config: Mapping[str, Any],
                 workspace: Workspace, *, slots: int | None = None, worker_id: str | None = None,
                 observers: tuple = ()):
        self.kinds = dict(kinds)
        self.observers = tuple(observers)  # JobObserver (events.py): metrics and the like
        self.config = config
        self.workspace = workspace
        self.slots = int(slots or config.get("MAX_WORKERS", 2))
        self.host = socket.gethostname()
        self.worker_id = worker_id or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds = float(config.get("LEASE_SECONDS", 30))
        self.poll_interval = float(config.get("POLL_INTERVAL", 0.5))
        self.sweep_interval = float(config.get("SWEEP_INTERVAL", 5))
        self.timeout_grace = float(config.get("TIMEOUT_GRACE", 30))
        self.engine = engine
        log_keep = int(config.get("JOB_LOG_MAX_LINES", KEEP_LINES))
        self.claims = ClaimStore(engine, log_keep=log_keep)
        self.job_logs = JobLogStore(engine, keep=log_keep)
        self._log_capture = job_log_capture()
        self.workers = WorkerStore(engine)
        self.policies = {name: policy_for(k, config) for name, k in self.kinds.items()}
        self._room = LocalRoom({name: k.process_limit_for(config) for name, k in self.kinds.items()},
                               {name: gate for name, k in self.kinds.items() if (gate := k.local_gate(config))})
        self._active: dict[str, RunContext] = {}
        self._last_queued = 0.0  # when a submit in this process last queued a job (see wake)
        self._reserved = 0  # slots promised to submissions that may start their job directly
        self._closed = False  # set by stop() once it has handed back every registered job
        self._asked_back: set[str] = set()  # jobs told to hand themselves back as they started
        self._lock = threading.Lock()
        self._claimed_slots = threading.Condition(self._lock)   # notified when a claim in flight ends
        self._claiming = 0   # slots reserved by the claim loop for the claim it is running
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._monitor_stop = threading.Event()
        self._accepting = True
        self._executor: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._listener: QueueListener | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Dispatcher":
        self._executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="ilgun-job")
        self._safe(self._sweep)  # recover what a previous crash left behind before claiming
        self._safe(self._heartbeat)
        for target, name in ((self._claim_loop, "ilgun-claim"), (self._monitor_loop, "ilgun-monitor")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if supports_notify(self.engine):
            self._listener = QueueListener(self.engine, self.wake).start()
        log.info("dispatcher %s started with %d slots", self.worker_id, self.slots)
        return self

    def wake(self) -> None:
        """A job was queued. Only a free slot needs the claim loop: a busy slot claims the next
        job in the same transaction as its finish, or wakes the loop when it found none (after
        that transaction, so a job committed before this call is never missed). Waking the loop
        for nothing on every submit cost a thread switch per request."""
        self._last_queued = time.monotonic()
        if self._free_slots() > 0 and not self._wake.is_set():
            self._wake.set()

    # -- direct start: a submission to a worker with a free slot skips the queue -----------
    def reserve_slot(self, kind: str | None = None) -> bool:
        """Promise a free slot to a submission about to be written; the store starts the job
        in the submit transaction when nothing is queued ahead of it (see JobStore.submit),
        saving the claim transaction and a thread switch. Pair with start_reserved or
        release_slot."""
        with self._lock:
            # a claim in flight holds the free slots for a few milliseconds: wait for it rather
            # than queue a job that could start now
            deadline = time.monotonic() + CLAIM_WAIT
            while self._claiming and len(self._active) + self._reserved >= self.slots \
                    and (left := deadline - time.monotonic()) > 0:
                self._claimed_slots.wait(left)
            if not self._accepting or len(self._active) + self._reserved >= self.slots:
                return False
            if kind is not None and not self._room.reserve_one(kind, self._running_kinds()):
                return False
            self._reserved += 1
            return True

    def release_slot(self, kind: str | None = None) -> None:
        with self._lock:
            self._reserved -= 1
            if kind is not None:
                self._room.release_one(kind)

    def start_reserved(self, job: dict) -> None:
        self._start(job, reserved=True)

    def run_now(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` in a free executor slot of this worker and wait up to ``timeout`` for its
        answer: quick synchronous work (POST /api/v1/cefr) that must not run on a request thread.
        The slot is held as reserved while ``fn`` runs, so claims and direct starts leave it
        alone. Raises NoFreeSlot, or concurrent.futures.TimeoutError (``fn`` then finishes on
        its own and gives the slot back)."""
        if not self.reserve_slot():
            raise NoFreeSlot()
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self.release_slot()
            raise
        future.add_done_callback(lambda _f: self.release_slot())
        return future.result(timeout)

    @property
    def start_for(self) -> tuple:
        """What JobStore.submit needs to start a job here: (worker_id, policies, lease_seconds)."""
        return self.worker_id, self.policies, self.lease_seconds

    def _free_slots(self) -> int:
        return self.slots - len(self._active) - self._reserved

    def _running_kinds(self) -> list[str]:
        return [ctx.kind for ctx in self._active.values()]

    def stop(self, timeout: float = 25.0) -> list[str]:
        """Stop claiming, let running jobs finish for up to ``timeout`` seconds, then hand
        the rest back to the queue. Returns the ids of the jobs asked to hand themselves back
        (one that completed in that last moment still counts as completed)."""
        self._accepting = False
        self._stopping.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        # A claim that committed just now is only registered in _active when the claim loop
        # gets to it: wait for the loop to end so no such job escapes the hand-back.
        if self._threads:
            self._threads[0].join(timeout=10)
        deadline = time.monotonic() + max(0.0, timeout)
        while (self.active_ids() or self._reserved) and time.monotonic() < deadline:
            time.sleep(0.05)
        # Ask what is still running to hand itself back; kinds notice within about a second.
        # Asked again on every pass: a job claimed for a slot as its predecessor finished
        # may have been swapped in meanwhile.
        asked: set[str] = set()
        grace = time.monotonic() + 2.0
        while time.monotonic() < grace:
            contexts = self._contexts()
            if not contexts and not self._reserved:
                break
            for job_id, ctx in contexts.items():
                ctx.request_stop("shutdown")
                asked.add(job_id)
            time.sleep(0.05)
        # Anything still running now is requeued here; its later writes are fenced by run_token.
        # A job registered later (a submit that started it directly) requeues itself (_start).
        with self._lock:
            self._closed = True
            leftovers = list(self._active.values())
        for ctx in leftovers:
            asked.add(ctx.job_id)
            self._safe(self._hand_back, ctx.job_id, ctx.token, ctx)
        self._monitor_stop.set()
        for t in self._threads:
            t.join(timeout=2)
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._safe(self.workers.remove, self.worker_id)
        handed_back = sorted(asked | self._asked_back)
        log.info("dispatcher %s stopped; handed back %d job(s)", self.worker_id, len(handed_back))
        return handed_back

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def cancel_local(self, job_id: str) -> None:
        with self._lock:
            ctx = self._active.get(job_id)
        if ctx is not None:
            ctx.request_stop("cancel")

    # -- claiming -------------------------------------------------------------------------
    def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            began = time.monotonic()
            with self._lock:
                # the free slots are reserved while the claim runs outside the lock: a submit
                # must not start its job directly in a slot this claim is about to fill
                claiming = max(0, self._free_slots()) if self._accepting else 0
                room = self._room.take(self._running_kinds()) if claiming > 0 else {}
                self._reserved += claiming
                self._claiming = claiming
            try:
                if claiming > 0:
                    claimed = self._safe(self.claims.claim, self.worker_id, claiming, self.policies,
                                         self.lease_seconds, room=room) or []
                    for job in claimed:
                        self._start(job)
            finally:
                with self._lock:
                    self._reserved -= claiming
                    self._claiming = 0
                    self._room.give_back(room)
                    self._claimed_slots.notify_all()
            if claiming > 0 and self._last_queued >= began and self._free_slots() > 0:
                continue   # a submit here queued a job while the claim ran: the claim may have missed it
            self._wake.wait(self.poll_interval)

    def _context(self, job: dict) -> RunContext:
        owner, job_id = job["owner_id"], job["id"]
        return RunContext(job, self.config,
                          lambda: (self.workspace.output_dir(owner, job_id), self.workspace.tmp_dir(owner, job_id)),
                          self.claims.progress, folder_lock=lambda: self.workspace.job_lock(job_id),
                          inputs=lambda file_id: self.workspace.upload_path(owner, file_id))

    def _start(self, job: dict, reserved: bool = False) -> None:
        ctx = self._context(job)
        with self._lock:
            if reserved:
                self._reserved -= 1
                self._room.release_one(job["kind"])  # it counts as running from here on
            closed = self._closed
            if not closed:
                self._active[job["id"]] = ctx
                if self._stopping.is_set():  # started just as this worker began to leave
                    ctx.request_stop("shutdown")
                    self._asked_back.add(job["id"])
        if closed:  # stop() has already handed back what it knew of: hand this one back too
            self._safe(self._hand_back, job["id"], ctx.token)
            return
        try:
            self._executor.submit(self._execute, job, ctx)
        except RuntimeError:  # the executor shut down after stop() requeued this job
            with self._lock:
                self._active.pop(job["id"], None)

    # -- executing ------------------------------------------------------------------------
    def _execute(self, job: dict, ctx: RunContext) -> None:
        """Run a job, then any job claimed for this slot when it finished."""
        while job is not None:
            job, ctx = self._execute_one(job, ctx)

    def _execute_one(self, job: dict, ctx: RunContext) -> tuple[dict | None, RunContext | None]:
        next_job = next_ctx = None
        log_token = log_context.job_id.set(job["id"])  # every log line of this run names the job
        self._log_capture.register(job["id"], ctx.job_log)
        try:
            # A first attempt has no folder yet and locks it on first use (RunContext); a later
            # attempt first clears what a dead attempt left, under the lock.
            if job["attempt"] > 1 and not ctx.lock_folder():
                # A stale execution on a hung worker still holds the folder; it will notice
                # it lost the lease and let go. Try again shortly.
                self.claims.requeue(job["id"], ctx.token, run_after=time.time() + 5, refund_attempt=True,
                                    message="waiting for a previous attempt to release its files")
                return None, None
            try:
                next_job = self._run_kind(job, ctx)
            finally:
                ctx.release_folder()
            if ctx.final_recorded and ctx.folder_locked:
                # No other execution can want this lock any more (a takeover would have fenced
                # our final write), so the file can go: otherwise one is left per job forever.
                self.workspace.forget_job_lock(job["id"])
        except Exception:
            log.exception("job %s: engine error", job["id"])
        finally:
            # the slot passes from this job to the next in one step, so the claim loop never
            # counts it free while it is not
            if next_job is not None:
                next_ctx = self._context(next_job)
                if self._stopping.is_set():  # claimed while the worker began to stop
                    next_ctx.request_stop("shutdown")
                    self._asked_back.add(next_job["id"])
            with self._lock:
                self._active.pop(job["id"], None)
                if next_ctx is not None:
                    self._active[next_job["id"]] = next_ctx
                self._room.give_back(ctx.claim_room)
            # The freed slot needs the claim loop unless the finish already looked for a next job
            # and no submit in this process queued one since that transaction began (jobs queued
            # by other processes are found by the poll, or on PostgreSQL their NOTIFY). An empty claim transaction per
            # job was a measurable share of a short job's cost.
            if next_job is None and (ctx.looked_for_next_at is None or self._last_queued >= ctx.looked_for_next_at):
                self._wake.set()
            self._log_capture.unregister(job["id"])
            log_context.job_id.reset(log_token)
        return next_job, next_ctx

    @staticmethod
    def _safe(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("dispatcher: %s failed", getattr(fn, "__name__", fn))
            return None

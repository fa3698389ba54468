"""The application's use cases, free of Flask: the web layer calls these and nothing lower.

``viewer`` is the signed-in user as a dict with ``id`` and ``role``; admins see every job,
everyone else only their own (another user's job id answers JOB_NOT_FOUND).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from service.engine import events
from service.engine.dispatcher import policy_for
from service.engine.status import FINAL, JobStatus
from service.errors import Forbidden, NotFound, ServiceBusy
from service.files_service import FileService
from service.kinds import KINDS, get_kind
from service.store.dashboard import FINAL_STATUSES, DashboardStore
from service.store.folder_lock import AdvisoryFolderLock
from service.store.job_logs import JobLogStore
from service.store.jobs import JobStore, QueueBounds, eta_seconds
from service.store.planner import ensure_planner_stats
from service.store.users import UserStore
from service.store.workers import WorkerStore
from service.workspace import Workspace, check_plain_name


TIMING_TTL = 1.0
DASHBOARD_HOURS = 24


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") if ts else None


def _scope(viewer: Mapping[str, Any]) -> int | None:
    return None if viewer.get("role") == "admin" else int(viewer["id"])


class JobService:
    def __init__(self, config: Mapping[str, Any], engine):
        self.config = config
        self.engine = engine
        self.jobs = JobStore(engine)
        self.users = UserStore(engine)
        self.workers = WorkerStore(engine)
        self.job_logs = JobLogStore(engine)
        self.dashboard_reads = DashboardStore(engine)
        # PostgreSQL means possibly several hosts on a shared FILES_ROOT, where file locks are
        # unreliable: job folders are locked in the database there.
        self.workspace = Workspace(config["FILES_ROOT"], lock_factory=(
            (lambda job_id: AdvisoryFolderLock(engine, job_id)) if engine.dialect.name == "postgresql" else None))
        self.kinds = KINDS
        self.uploads = FileService(config, engine, self.workspace)
        self.dispatcher = None  # set in processes that execute jobs (see service.runtime)
        self.observers: list = []  # engine.events.JobObserver, handed to the dispatcher
        self._timing_cache = None
        ensure_planner_stats(engine)

    @property
    def bounds(self) -> QueueBounds:
        c = self.config
        return QueueBounds(c["MAX_QUEUED_PER_USER"], c["MAX_QUEUED_TOTAL"], c["QUEUE_RETRY_AFTER"])

    # -- commands -------------------------------------------------------------------------
    def submit(self, viewer, kind_name: str, params: Mapping[str, Any] | None,
               idempotency_key: str | None = None) -> tuple[dict, bool]:
        kind = get_kind(kind_name)
        if kind.admin_only and viewer.get("role") != "admin" and not (
                kind.name == "sleep" and self.config.get("SLEEP_KIND_FOR_EVERYONE")):
            raise Forbidden(f"Only admins may submit {kind.name} jobs.", code="KIND_NOT_ALLOWED")
        clean = kind.validate(dict(params or {}), self.config)
        if "file_id" in clean:  # a document job reads one of its owner's uploads; its name goes along
            clean["file_name"] = self.uploads.check_owned(int(viewer["id"]), clean["file_id"])["name"]
        dispatcher = self.dispatcher
        # A free slot in this worker: the store may start the job in the submit transaction.
        reserved = dispatcher is not None and dispatcher.reserve_slot(kind.name)
        try:
            job, created = self.jobs.submit(int(viewer["id"]), policy_for(kind, self.config), clean, self.bounds,
                                            idempotency_key=idempotency_key,
                                            start_for=dispatcher.start_for if reserved else None)
        except BaseException:
            if reserved:
                dispatcher.release_slot(kind.name)
            raise
        if reserved:
            if created and job["status"] == "running":
                dispatcher.start_reserved(job)
            else:
                dispatcher.release_slot(kind.name)
        if created and dispatcher is not None and job["status"] == "queued":
            dispatcher.wake()  # start now if this worker has a free slot
        return self.view(job), created

    def grade_now(self, viewer, params: Mapping[str, Any] | None) -> dict:
        """POST /api/v1/cefr: a short text graded now, in one of this worker's executor slots
        (never on the request thread), or from the cache. Longer texts are jobs."""
        from concurrent.futures import TimeoutError as FutureTimeout

        from service.cefr import classifier
        from service.engine.dispatcher import NoFreeSlot
        from service.kinds.cefr import check_text
        limit = int(self.config["CEFR_SYNC_MAX_CHARS"])
        text = check_text(dict(params or {}), limit)
        classifier.check_model(self.config)
        hit = classifier.cached_grade(self.config, text)
        if hit is not None:
            return hit
        if self.dispatcher is None:
            raise ServiceBusy("This process runs no job executor; submit a cefr job instead.", code="NO_EXECUTOR")
        timeout = float(self.config["CEFR_SYNC_TIMEOUT"])
        try:
            return self.dispatcher.run_now(lambda: classifier.grade(self.config, text), timeout)
        except NoFreeSlot:
            raise ServiceBusy("Every executor slot here is busy; retry, or submit a cefr job.", code="EXECUTOR_BUSY",
                              retry_after=1) from None
        except FutureTimeout:
            raise ServiceBusy(f"Grading took longer than {timeout:g}s; submit a cefr job instead.",
                              code="CEFR_TIMEOUT", retry_after=1) from None

    def cancel(self, viewer, job_id: str) -> dict:
        job = self.jobs.request_cancel(job_id, _scope(viewer))
        if job["status"] == "cancelled":  # it was queued: no execution will report its end
            events.notify(self.observers, "job_finished", job["kind"], "cancelled", None, None)
        elif self.dispatcher is not None:
            self.dispatcher.cancel_local(job["id"])
        return self.view(job)

    def retry(self, viewer, job_id: str) -> dict:
        job = self.jobs.retry(job_id, _scope(viewer))
        self.workspace.remove_job(job["owner_id"], job["id"])
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return self.view(job)

    def delete(self, viewer, job_id: str) -> None:
        job = self.jobs.delete(job_id, _scope(viewer))
        self.workspace.remove_job(job["owner_id"], job["id"])

    # -- queries --------------------------------------------------------------------------
    def get(self, viewer, job_id: str) -> dict:
        return self.view(self.jobs.get(job_id, _scope(viewer)))

    def list(self, viewer, *, status=None, kind=None, page=1, page_size=20) -> tuple[list[dict], int]:
        rows, total = self.jobs.list(_scope(viewer), status=status, kind=kind, page=page, page_size=page_size)
        files = self.jobs.files_for([r["id"] for r in rows])
        timing = self._timing() if any(r["status"] == "queued" for r in rows) else None
        return [self.view(r, files=files[r["id"]], timing=timing) for r in rows], total

    def file_path(self, viewer, job_id: str, name: str) -> tuple[Path, dict]:
        job = self.jobs.get(job_id, _scope(viewer))
        check_plain_name(name)
        for f in self.jobs.files(job["id"]):
            if f["name"] == name:
                path = self.workspace.output_file(job["owner_id"], job["id"], name)
                if path.is_file():
                    return path, f
        raise NotFound("No such file for this job.", code="FILE_NOT_FOUND")

    def log(self, viewer, job_id: str, *, after: int = 0, tail: int = 100) -> dict:
        job = self.jobs.get(job_id, _scope(viewer))
        lines, dropped = self.job_logs.read(job["id"], after=after, tail=tail)
        for line in lines:
            line["at"] = iso(line["at"])
        return {"job_id": job["id"], "lines": lines, "dropped": dropped}

    def files(self, viewer, job_id: str) -> list[dict]:
        job = self.jobs.get(job_id, _scope(viewer))
        return [_file_view(f) for f in self.jobs.files(job["id"])]

    def stats(self, viewer) -> dict:
        scope = _scope(viewer)
        counts = self.jobs.counts(scope)
        by_status: dict[str, int] = {}
        for per_kind in counts.values():
            for status, n in per_kind.items():
                by_status[status] = by_status.get(status, 0) + n
        out = {"scope": "global" if scope is None else "user", "jobs_by_kind": counts, "jobs_by_status": by_status}
        if scope is None:
            stale = self.config["LEASE_SECONDS"] * 2
            out["users"] = self.users.counts(active_since=time.time() - 86400)
            out["workers"] = [{"id": w["id"], "host": w["host"], "pid": w["pid"], "slots": w["slots"],
                               "running": w["running"] or [],
                               "heartbeat_age": round(time.time() - w["heartbeat_at"], 1)}
                              for w in self.workers.live(stale)]
        return out

    def dashboard(self, viewer, now: float | None = None) -> dict:
        """What the admin dashboard shows (admins only): users, jobs by kind and status, finished
        jobs per hour over the last DASHBOARD_HOURS, per-kind throughput and average run time,
        and the live workers with the job (or None: idle) in each executor slot."""
        if _scope(viewer) is not None:
            raise Forbidden("Only admins may see the dashboard.", code="ADMIN_ONLY")
        now = time.time() if now is None else now
        counts = self.jobs.counts(None)
        recent = self.dashboard_reads.finished_per_hour(now, DASHBOARD_HOURS)
        averages = self.workers.average_durations()
        kinds = sorted(set(self.kinds) | set(counts) | set(recent["kinds"]))
        statuses = [s.value for s in JobStatus]
        by_status = {s: sum(counts.get(k, {}).get(s, 0) for k in kinds) for s in statuses}
        finished = {s: sum(h[s] for h in recent["hours"]) for s in FINAL_STATUSES}
        per_kind = [{"kind": k, "counts": {s: counts.get(k, {}).get(s, 0) for s in statuses},
                     "total": sum(counts.get(k, {}).values()),
                     "finished_recent": sum(recent["kinds"].get(k, {}).values()),
                     "failed_recent": recent["kinds"].get(k, {}).get("failed", 0),
                     "avg_seconds": averages.get(k)} for k in kinds]
        workers = self.workers.live(self.config["LEASE_SECONDS"] * 2)
        running_kinds = self.dashboard_reads.kinds_of([j for w in workers for j in (w["running"] or [])])
        return {
            "now": now, "hours_back": DASHBOARD_HOURS, "statuses": statuses,
            "users": self.users.counts(active_since=now - 86400),
            "jobs_by_status": by_status, "jobs_total": sum(by_status.values()), "kinds": per_kind,
            "hours": recent["hours"], "finished_recent": finished,
            "throughput_per_hour": round(sum(finished.values()) / DASHBOARD_HOURS, 1),
            "workers": [{"host": w["host"], "pid": w["pid"], "slots": _slots(w, running_kinds),
                         "heartbeat_age": round(now - w["heartbeat_at"], 1)} for w in workers],
        }

    def metrics_snapshot(self) -> dict:
        """What the metrics gauges read from the database on each scrape (service.metrics):
        queued and running jobs per kind (every registered kind, zeros included), the oldest
        claimable queued job's run_after per kind, and the live workers (heartbeat within
        2 × LEASE_SECONDS, as in stats) with their executor slots."""
        jobs = {name: {"queued": 0, "running": 0, "oldest_queued_at": None} for name in self.kinds}
        jobs.update(self.jobs.active_by_kind())
        workers = [{"host": w["host"], "pid": w["pid"], "slots": w["slots"]}
                   for w in self.workers.live(self.config["LEASE_SECONDS"] * 2)]
        return {"now": time.time(), "jobs": jobs, "workers": workers}

    # -- presentation ---------------------------------------------------------------------
    def _timing(self) -> tuple[dict[str, float], int]:
        """(average run time per kind, live executor slots) for ETAs. Both change slowly, so
        they are read at most once a second per process rather than on every request."""
        now = time.monotonic()
        if self._timing_cache is None or now - self._timing_cache[0] > TIMING_TTL:
            slots = self.workers.live_slots(self.config["LEASE_SECONDS"] * 2) or int(self.config["MAX_WORKERS"])
            self._timing_cache = (now, (self.workers.average_durations(), slots))
        return self._timing_cache[1]

    def view(self, job: dict, files: list[dict] | None = None, timing=None) -> dict:
        position = eta = None
        if job["status"] == "queued":
            averages, slots = timing or self._timing()
            kind = self.kinds.get(job["kind"])
            avg = averages.get(job["kind"], kind.default_duration_seconds if kind else 5.0)
            _, global_limit = kind.limits_for(self.config) if kind else (None, None)
            position = job["position"] if "position" in job else self.jobs.queue_position(job)
            eta = eta_seconds(position, avg, min(slots, global_limit or slots), job["run_after"] - time.time())
        if files is None:
            # cancelled and failed jobs may keep files too (a crawl's partial result)
            files = self.jobs.files(job["id"]) if JobStatus(job["status"]) in FINAL else []
        error = {"code": job["error_code"], "message": job["error_message"]} if job["error_code"] else None
        return {
            "id": job["id"], "kind": job["kind"], "owner_id": job["owner_id"], "status": job["status"],
            "progress": round(job["progress"], 1), "message": job["message"], "position": position,
            "eta_seconds": eta, "attempt": job["attempt"], "max_attempts": job["max_attempts"],
            "params": job["params"], "created_at": iso(job["created_at"]), "started_at": iso(job["started_at"]),
            "finished_at": iso(job["finished_at"]), "result": job["result"], "error": error,
            "cancel_requested": bool(job["cancel_requested"]), "files": [_file_view(f) for f in files],
        }


def _slots(worker: dict, kinds: dict[str, str]) -> list[dict | None]:
    """One entry per executor slot: the job it runs ({"job_id", "kind"}; kind None once the job
    is gone) or None when idle. The heartbeat lists running job ids, not slot numbers, so the
    busy slots come first."""
    running = [{"job_id": j, "kind": kinds.get(j)} for j in worker["running"] or []]
    return running + [None] * max(0, int(worker["slots"]) - len(running))


def _file_view(f: dict) -> dict:
    return {"name": f["name"], "size": f["size"], "content_type": f["content_type"], "sha256": f["sha256"]}

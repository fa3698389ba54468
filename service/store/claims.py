"""The execution side of the job store: claim, lease renewal, progress, finish, sweep.

Every write by an execution is fenced by ``run_token``, which changes on every claim: once a
lease expired and another worker re-claimed the job, the old execution's writes match no row,
so it can never overwrite the newer attempt's progress or result.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter

import sqlalchemy as sa

from service.engine.status import JobStatus
from service.store import database
from service.store.jobs import CLAIM_LOCK, QUEUED, RUNNING, KindPolicy, as_dict, pg_lock
from service.store.schema import job_files, jobs, kind_stats

EWMA_WEIGHT = 0.2   # recent run times count most in the ETA

# Hot-path statements, built once (see jobs.py for why).
_RUNNING_COUNTS = sa.text("SELECT kind, owner_id, count(*) FROM jobs WHERE status = 'running' "
                          "GROUP BY kind, owner_id")
_CLAIM = sa.text("UPDATE jobs SET status = 'running', attempt = attempt + 1, run_token = :token, "
                 "lease_owner = :owner, lease_expires_at = :expires, started_at = :now, updated_at = :now, "
                 "progress = 0, message = 'started' WHERE id = :id AND status = 'queued'")
_RENEW = sa.text("UPDATE jobs SET lease_expires_at = :expires "
                 "WHERE id = :id AND run_token = :token AND status = 'running'")
_PROGRESS = sa.text("UPDATE jobs SET progress = :progress, message = :message, updated_at = :now "
                    "WHERE id = :id AND run_token = :token AND status = 'running'")
_FINISH = sa.text(
    "UPDATE jobs SET status = :status, result = :result, error_code = :error_code, "
    "error_message = :error_message, finished_at = :now, updated_at = :now, lease_owner = NULL, "
    "lease_expires_at = NULL, message = :message, progress = CASE WHEN :succeeded THEN 100 ELSE progress END "
    "WHERE id = :id AND run_token = :token AND status = 'running'"
).bindparams(sa.bindparam("result", type_=sa.JSON), sa.bindparam("succeeded", type_=sa.Boolean))
_AVERAGE = sa.text("UPDATE kind_stats SET avg_seconds = avg_seconds * :keep + :seconds * :weight, "
                   "samples = samples + 1, updated_at = :now WHERE kind = :kind")


class ClaimStore:
    def __init__(self, engine: sa.Engine, clock=time.time):
        self.engine = engine
        self.clock = clock

    def claim(self, worker_id: str, n: int, policies: dict[str, KindPolicy], lease_seconds: float) -> list[dict]:
        """Atomically move up to ``n`` claimable jobs to running for ``worker_id``.

        Per-user and global running limits are computed inside the same write transaction,
        so two workers claiming at once cannot both take the last allowed slot."""
        if n <= 0 or not policies:
            return []
        return database.write(self.engine, lambda conn: self._claim_in(conn, worker_id, n, policies, lease_seconds))

    def _claim_in(self, conn, worker_id: str, n: int, policies: dict[str, KindPolicy],
                  lease_seconds: float) -> list[dict]:
        pg_lock(conn, CLAIM_LOCK)
        now = self.clock()
        per_kind: Counter = Counter()
        per_pair: Counter = Counter()
        for kind, owner, count in conn.execute(_RUNNING_COUNTS):
            per_kind[kind] += count
            per_pair[(kind, owner)] += count
        claimed = []
        for _ in range(n):
            row = self._next_claimable(conn, now, policies, per_kind, per_pair)
            if row is None:
                break
            token = uuid.uuid4().hex
            conn.execute(_CLAIM, {"token": token, "owner": worker_id, "expires": now + lease_seconds,
                                  "now": now, "id": row.id})
            per_kind[row.kind] += 1
            per_pair[(row.kind, row.owner_id)] += 1
            job = as_dict(row)
            job.update(status=RUNNING, attempt=row.attempt + 1, run_token=token, lease_owner=worker_id,
                       lease_expires_at=now + lease_seconds, started_at=now, updated_at=now,
                       progress=0.0, message="started")
            claimed.append(job)
        return claimed

    def _next_claimable(self, conn, now, policies, per_kind, per_pair):
        # Kinds this worker does not know (a newer kind during a rolling upgrade) are skipped
        # here rather than filtered in SQL: "kind IN (...)" tempts the planner into the kind
        # index, which also holds every finished job.
        for row in conn.execute(self._next_query(now, policies, per_kind, per_pair)):
            if row.kind in policies:
                return row
        return None

    @staticmethod
    def _next_query(now, policies, per_kind, per_pair, batch: int = 16):
        cond = [jobs.c.status == QUEUED, jobs.c.run_after <= now]
        full_kinds = [k for k, p in policies.items()
                      if p.global_limit is not None and per_kind[k] >= p.global_limit]
        if full_kinds:
            cond.append(jobs.c.kind.not_in(full_kinds))
        for (kind, owner), count in per_pair.items():
            p = policies.get(kind)
            if p is not None and p.per_user_limit is not None and count >= p.per_user_limit:
                cond.append(sa.not_(sa.and_(jobs.c.kind == kind, jobs.c.owner_id == owner)))
        return (sa.select(jobs).where(*cond)
                .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id).limit(batch))

    def renew(self, tokens: dict[str, str], lease_seconds: float) -> set[str]:
        """Extend the leases of running executions; returns the job ids this worker lost."""
        if not tokens:
            return set()

        def tx(conn):
            now = self.clock()
            lost = set()
            for job_id, token in tokens.items():
                res = conn.execute(_RENEW, {"expires": now + lease_seconds, "id": job_id, "token": token})
                if res.rowcount == 0:
                    lost.add(job_id)
            return lost
        return database.write(self.engine, tx)

    def cancel_flags(self, tokens: dict[str, str]) -> dict[str, bool]:
        """For each execution: True if cancel was asked, False if still ours, missing if lost."""
        if not tokens:
            return {}
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.run_token, jobs.c.status, jobs.c.cancel_requested)
                                .where(jobs.c.id.in_(list(tokens)))).all()
        return {r.id: bool(r.cancel_requested) for r in rows
                if r.run_token == tokens[r.id] and r.status == RUNNING}

    def progress(self, job_id: str, token: str, percent: float, message: str | None) -> bool:
        def tx(conn):
            res = conn.execute(_PROGRESS, {"progress": percent, "message": (message or "")[:500],
                                           "now": self.clock(), "id": job_id, "token": token})
            return res.rowcount == 1
        return database.write(self.engine, tx)

    def finish(self, job_id: str, token: str, status: JobStatus, **kwargs) -> bool:
        """Record a final state; False if this execution no longer owns the job.
        ``kind`` with ``duration`` feeds the kind's average run time (for ETAs)."""
        return database.write(self.engine, lambda conn: self._finish_in(conn, job_id, token, status, **kwargs))

    def finish_and_claim(self, job_id: str, token: str, status: JobStatus, *, claim_for: tuple,
                         **kwargs) -> tuple[bool, dict | None]:
        """finish(), then claim the next job for the freed slot in the same transaction: a busy
        worker pays one write transaction per job instead of two. ``claim_for`` is
        (worker_id, policies, lease_seconds)."""
        worker_id, policies, lease_seconds = claim_for

        def tx(conn):
            if not self._finish_in(conn, job_id, token, status, **kwargs):
                return False, None
            nxt = self._claim_in(conn, worker_id, 1, policies, lease_seconds)
            return True, (nxt[0] if nxt else None)
        return database.write(self.engine, tx)

    def _finish_in(self, conn, job_id: str, token: str, status: JobStatus, *, result=None, error_code=None,
                   error_message=None, files: list[dict] = (), duration: float | None = None,
                   message: str | None = None, kind: str | None = None) -> bool:
        now = self.clock()
        res = conn.execute(_FINISH, {
            "status": status.value, "result": result, "error_code": error_code,
            "error_message": error_message, "now": now, "message": message,
            "succeeded": status == JobStatus.SUCCEEDED, "id": job_id, "token": token})
        if res.rowcount != 1:
            return False
        if files:
            conn.execute(job_files.insert(), [dict(job_id=job_id, created_at=now, **f) for f in files])
        if status == JobStatus.SUCCEEDED and duration is not None and kind:
            self._record_duration(conn, kind, duration, now)
        return True

    @staticmethod
    def _record_duration(conn, kind: str, seconds: float, now: float) -> None:
        res = conn.execute(_AVERAGE, {"keep": 1 - EWMA_WEIGHT, "weight": EWMA_WEIGHT, "seconds": seconds,
                                      "now": now, "kind": kind})
        if res.rowcount == 0:
            conn.execute(kind_stats.insert().values(kind=kind, avg_seconds=seconds, samples=1, updated_at=now))

    def requeue(self, job_id: str, token: str, *, run_after: float, error_code: str | None = None,
                error_message: str | None = None, refund_attempt: bool = False, message: str = "") -> bool:
        """Put a running job back in the queue: a retry after a transient failure
        (run_after in the future) or a hand-back by a worker that is shutting down
        (refund_attempt, since the job did nothing wrong)."""
        def tx(conn):
            values = dict(status=QUEUED, run_token=None, lease_owner=None, lease_expires_at=None,
                          run_after=run_after, updated_at=self.clock(), cancel_requested=False,
                          error_code=error_code, error_message=error_message, message=message[:500])
            if refund_attempt:
                values["attempt"] = sa.func.max(jobs.c.attempt - 1, 0) if conn.dialect.name == "sqlite" \
                    else sa.func.greatest(jobs.c.attempt - 1, 0)
            res = conn.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.run_token == token, jobs.c.status == RUNNING).values(**values))
            return res.rowcount == 1
        return database.write(self.engine, tx)

    def sweep(self) -> tuple[list[str], list[dict]]:
        """Recover jobs whose lease expired (their worker died or hung).

        Returns (requeued ids, abandoned jobs); abandoned ones used up max_attempts and fail
        with ABANDONED so a job that kills its worker cannot loop forever."""
        def tx(conn):
            pg_lock(conn, CLAIM_LOCK)
            now = self.clock()
            expired = conn.execute(sa.select(jobs).where(
                jobs.c.status == RUNNING, jobs.c.lease_expires_at < now)).all()
            requeued, abandoned = [], []
            for job in expired:
                base = jobs.update().where(jobs.c.id == job.id, jobs.c.run_token == job.run_token,
                                           jobs.c.status == RUNNING)
                if job.attempt < job.max_attempts:
                    conn.execute(base.values(status=QUEUED, run_token=None, lease_owner=None,
                                             lease_expires_at=None, run_after=now, updated_at=now,
                                             message=f"requeued: worker {job.lease_owner} stopped responding"))
                    requeued.append(job.id)
                else:
                    conn.execute(base.values(status=JobStatus.FAILED.value, run_token=None, lease_owner=None,
                                             lease_expires_at=None, finished_at=now, updated_at=now,
                                             error_code="ABANDONED",
                                             error_message=f"Worker lost {job.attempt} times; giving up."))
                    abandoned.append(as_dict(job))
            return requeued, abandoned
        return database.write(self.engine, tx)

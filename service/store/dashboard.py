"""Reads for the admin dashboard that the job store has no use for: finished jobs per hour, and
the kinds of the jobs the live workers' slots run.

The hourly counts are aggregated in SQL over the ``ix_jobs_finished`` range (see schema.py), so
the page reads one row per (hour, kind, status) however many jobs finished in total.
"""
from __future__ import annotations

import sqlalchemy as sa

from service.engine.status import JobStatus
from service.store import database
from service.store.schema import jobs

HOUR = 3600.0
# every final status, in the order the chart stacks them (bottom up)
FINAL_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


class DashboardStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def finished_per_hour(self, now: float, hours: int = 24) -> dict:
        """Jobs that finished in the ``hours`` hours ending at ``now``, counted per hour.

        Returns ``{"hours": [{"start", "end", "succeeded", "failed", "cancelled"}, ...],
        "kinds": {kind: {status: n}}}``: hours oldest first, each ``[start, end)`` in epoch
        seconds, the last ending at ``now``; ``kinds`` sums the whole window per kind."""
        since = now - hours * HOUR
        query = self.hourly_query(since, self.engine.dialect.name)
        out = [{"start": since + i * HOUR, "end": since + (i + 1) * HOUR, **dict.fromkeys(FINAL_STATUSES, 0)}
               for i in range(hours)]
        kinds: dict[str, dict[str, int]] = {}
        with database.read(self.engine) as conn:
            for index, kind, status, n in conn.execute(query):
                if status not in FINAL_STATUSES:
                    continue  # only final jobs have a finished_at (a retry clears it); defensive
                # A finish stamped a little after ``now`` (another host's clock, or a job that
                # ended while this ran) belongs to the current hour, not to none.
                hour = out[min(int(index), hours - 1)]
                hour[status] += n
                per_kind = kinds.setdefault(kind, dict.fromkeys(FINAL_STATUSES, 0))
                per_kind[status] += n
        return {"hours": out, "kinds": kinds}

    @staticmethod
    def hourly_query(since: float, dialect: str) -> sa.Select:
        """(hour index from ``since``, kind, status, count) of the jobs finished since ``since``."""
        since_param = sa.bindparam("since", since, type_=sa.Float)
        offset = (jobs.c.finished_at - since_param) / HOUR
        # PostgreSQL's CAST to integer rounds to nearest; floor() is what a bucket needs. SQLite
        # may lack floor() (math functions are a compile-time option), and its CAST truncates,
        # which is the same as floor for the non-negative offsets the WHERE clause leaves.
        bucket = sa.func.floor(offset) if dialect == "postgresql" else sa.cast(offset, sa.Integer)
        return (sa.select(bucket.label("bucket"), jobs.c.kind, jobs.c.status, sa.func.count())
                .where(jobs.c.finished_at >= since_param)
                .group_by(bucket, jobs.c.kind, jobs.c.status))

    def kinds_of(self, job_ids: list[str]) -> dict[str, str]:
        """{job id: kind} for the ids that still exist (a finished job may have been deleted
        since a worker's last heartbeat listed it)."""
        if not job_ids:
            return {}
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.kind).where(jobs.c.id.in_(sorted(set(job_ids)))))
            return {job_id: kind for job_id, kind in rows}

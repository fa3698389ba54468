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
from service.store import database, job_logs, rawsql
from service.store.jobs import (CLAIM_LOCK, QUEUED, RUNNING, RUNNING_OF_KIND, KindPolicy, as_dict, kind_lock,
                                pg_lock)
from service.store.schema import jobs

EWMA_WEIGHT = 0.2   # recent run times count most in the ETA

# The claim/finish path runs on the raw connection (see rawsql for why); portable SQL.
_RUNNING_COUNTS = "SELECT kind, owner_id, count(*) FROM jobs WHERE status = 'running' GROUP BY kind, owner_id"
_CLAIM = ("UPDATE jobs SET status = 'running', attempt = attempt + 1, run_token = :token, "
          "lease_owner = :owner, lease_expires_at = :expires, started_at = :now, updated_at = :now, "
          "progress = 0, message = 'started' WHERE id = :id AND status = 'queued'")
_NEXT = ("SELECT * FROM jobs WHERE status = 'queued' AND run_after <= :now{extra} "
         "ORDER BY priority DESC, created_at, id LIMIT {limit}")
# Candidates read per step on SQLite: a few past the first skip kinds this worker does not know.
SQLITE_BATCH = 16
_RENEW = "UPDATE jobs SET lease_expires_at = :expires WHERE id = :id AND run_token = :token AND status = 'running'"
_PROGRESS = ("UPDATE jobs SET progress = :progress, message = :message, updated_at = :now "
             "WHERE id = :id AND run_token = :token AND status = 'running'")
_FINISH = ("UPDATE jobs SET status = :status, result = :result, error_code = :error_code, "
           "error_message = :error_message, finished_at = :now, updated_at = :now, lease_owner = NULL, "
           "lease_expires_at = NULL, message = :message, progress = CASE WHEN :succeeded THEN 100 ELSE progress END "
           "WHERE id = :id AND run_token = :token AND status = 'running'")
_INSERT_FILE = ("INSERT INTO job_files (job_id, name, size, content_type, sha256, created_at) "
                "VALUES (:job_id, :name, :size, :content_type, :sha256, :created_at)")
# One statement, so two finishes of a kind's first jobs at once cannot both insert its row
# (on PostgreSQL nothing else serialises them); SQLite and PostgreSQL share the upsert syntax.
_AVERAGE = ("INSERT INTO kind_stats (kind, avg_seconds, samples, updated_at) VALUES (:kind, :seconds, 1, :now) "
            "ON CONFLICT (kind) DO UPDATE SET "
            "avg_seconds = kind_stats.avg_seconds * :keep + excluded.avg_seconds * :weight, "
            "samples = kind_stats.samples + 1, updated_at = excluded.updated_at")


def _running_counts(t: rawsql.Tx) -> tuple[Counter, Counter]:
    """Running jobs per kind and per (kind, owner)."""
    per_kind, per_pair = Counter(), Counter()
    for kind, owner, count in t.fetchall(_RUNNING_COUNTS):
        per_kind[kind] += count
        per_pair[(kind, owner)] += count
    return per_kind, per_pair


class ClaimStore:
    def __init__(self, engine: sa.Engine, clock=time.time, log_keep: int = job_logs.KEEP_LINES):
        self.engine = engine
        self.clock = clock
        self.log_keep = log_keep  # per job lines kept in job_logs

    def claim(self, worker_id: str, n: int, policies: dict[str, KindPolicy], lease_seconds: float,
              room: dict[str, int] | None = None) -> list[dict]:
        """Atomically move up to ``n`` claimable jobs to running for ``worker_id``.

        Per-user and global running limits are computed inside the same write transaction,
        so two workers claiming at once cannot both take the last allowed slot. ``room``: how
        many more jobs of a per-process limited kind this worker may take (engine/local_room.py)."""
        if n <= 0 or not policies:
            return []
        return rawsql.write(self.engine, lambda t: self._claim_in(t, worker_id, n, policies, lease_seconds, room))

    def _claim_in(self, t: rawsql.Tx, worker_id: str, n: int, policies: dict[str, KindPolicy],
                  lease_seconds: float, room: dict[str, int] | None = None) -> list[dict]:
        """On SQLite the whole claim runs under BEGIN IMMEDIATE (one writer at a time). On
        PostgreSQL claimers run side by side: candidate rows are read FOR UPDATE SKIP LOCKED, so
        two claimers never wait for or take the same row, and a kind with running limits is
        counted again under that kind's advisory lock before its job is taken."""
        now = self.clock()
        room = dict(room or {})
        policies = {k: p for k, p in policies.items() if room.get(k, 1) > 0}
        # On SQLite the running jobs are counted only once a candidate of a kind with running
        # limits comes up: most claims take a job of an unlimited kind, and the count was one
        # statement of every claim under the write lock. (PostgreSQL counts first, so that its
        # FOR UPDATE never locks a candidate the limits exclude.)
        counted = not t.sqlite
        per_kind, per_pair = _running_counts(t) if counted else (Counter(), Counter())
        claimed = []
        while len(claimed) < n and policies:
            row = self._next_claimable(t, now, policies, per_kind, per_pair)
            if row is None:
                break
            kind, owner = row["kind"], row["owner_id"]
            if not counted and policies[kind].limited:
                # counted in this transaction, so the jobs claimed above are in the figures
                per_kind, per_pair = _running_counts(t)
                counted = True
                if policies[kind].full(per_kind[kind], per_pair[(kind, owner)]):
                    continue  # now excluded by _next_query's filters
            if not t.sqlite and policies[kind].limited:
                t.pg_lock(kind_lock(kind))   # held to commit: the next claimer of this kind recounts after us
                per_kind[kind] = 0
                for key in [k for k in per_pair if k[0] == kind]:
                    del per_pair[key]
                for pair_owner, count in t.fetchall(RUNNING_OF_KIND, {"kind": kind}):
                    per_kind[kind] += count
                    per_pair[(kind, pair_owner)] = count
                if policies[kind].full(per_kind[kind], per_pair[(kind, owner)]):
                    continue  # now excluded by _next_query's filters
            token = uuid.uuid4().hex
            t.rowcount(_CLAIM, {"token": token, "owner": worker_id, "expires": now + lease_seconds,
                                "now": now, "id": row["id"]})
            per_kind[kind] += 1
            per_pair[(kind, owner)] += 1
            if kind in room:
                room[kind] -= 1
                if room[kind] <= 0:
                    policies = {k: p for k, p in policies.items() if k != kind}
            row.update(status=RUNNING, attempt=row["attempt"] + 1, run_token=token, lease_owner=worker_id,
                       lease_expires_at=now + lease_seconds, started_at=now, updated_at=now,
                       progress=0.0, message="started")
            claimed.append(row)
        return claimed

    def _next_claimable(self, t: rawsql.Tx, now, policies, per_kind, per_pair) -> dict | None:
        # Kinds this worker does not know (a newer kind during a rolling upgrade) are skipped
        # here rather than filtered in SQL on SQLite: "kind IN (...)" tempts its planner into the
        # kind index, which also holds every finished job.
        sql, params = self._next_query(now, policies, per_kind, per_pair, lock_rows=not t.sqlite)
        for row in t.rows(sql, params):
            if row["kind"] in policies:
                return row
        return None

    @staticmethod
    def _next_query(now, policies, per_kind, per_pair, lock_rows: bool = False) -> tuple[str, dict]:
        """The next-jobs query, excluding kinds at their global limit and (kind, user) pairs
        at their per-user limit; ``lock_rows`` (PostgreSQL) adds FOR UPDATE SKIP LOCKED."""
        extra, params = [], {"now": now}
        full_kinds = [k for k, p in policies.items()
                      if p.global_limit is not None and per_kind[k] >= p.global_limit]
        if full_kinds:
            names = [f"fk{i}" for i in range(len(full_kinds))]
            params.update(zip(names, full_kinds))
            extra.append(f"kind NOT IN ({', '.join(':' + n for n in names)})")
        i = 0
        for (kind, owner), count in per_pair.items():
            p = policies.get(kind)
            if p is not None and p.per_user_limit is not None and count >= p.per_user_limit:
                extra.append(f"NOT (kind = :xk{i} AND owner_id = :xo{i})")
                params[f"xk{i}"], params[f"xo{i}"] = kind, owner
                i += 1
        if lock_rows:
            # Lock only the row about to be claimed: a locked candidate left unclaimed would make
            # every concurrent claimer skip it until this transaction ends. PostgreSQL's planner
            # keeps to the partial queued index with the kinds filtered in SQL.
            names = [f"kn{i}" for i in range(len(policies))]
            params.update(zip(names, policies))
            extra.append(f"kind IN ({', '.join(':' + n for n in names)})")
        sql = _NEXT.format(extra="".join(" AND " + e for e in extra), limit=1 if lock_rows else SQLITE_BATCH)
        return sql + (" FOR UPDATE SKIP LOCKED" if lock_rows else ""), params

    def renew(self, tokens: dict[str, str], lease_seconds: float) -> set[str]:
        """Extend the leases of running executions; returns the job ids this worker lost."""
        if not tokens:
            return set()

        def tx(t: rawsql.Tx):
            now = self.clock()
            return {job_id for job_id, token in tokens.items()
                    if t.rowcount(_RENEW, {"expires": now + lease_seconds, "id": job_id, "token": token}) == 0}
        return rawsql.write(self.engine, tx)

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
        return rawsql.write(self.engine, lambda t: t.rowcount(_PROGRESS, {
            "progress": percent, "message": (message or "")[:500], "now": self.clock(),
            "id": job_id, "token": token}) == 1)

    def finish(self, job_id: str, token: str, status: JobStatus, **kwargs) -> bool:
        """Record a final state; False if this execution no longer owns the job.
        ``kind`` with ``duration`` feeds the kind's average run time (for ETAs)."""
        return rawsql.write(self.engine, lambda t: self._finish_in(t, job_id, token, status, **kwargs))

    def finish_and_claim(self, job_id: str, token: str, status: JobStatus, *, claim_for: tuple,
                         room: dict[str, int] | None = None, **kwargs) -> tuple[bool, dict | None]:
        """finish(), then claim the next job for the freed slot in the same transaction: a busy
        worker pays one write transaction per job instead of two. ``claim_for`` is
        (worker_id, policies, lease_seconds)."""
        worker_id, policies, lease_seconds = claim_for

        def tx(t: rawsql.Tx):
            if not self._finish_in(t, job_id, token, status, **kwargs):
                return False, None
            nxt = self._claim_in(t, worker_id, 1, policies, lease_seconds, room)
            return True, (nxt[0] if nxt else None)
        return rawsql.write(self.engine, tx)

    def _finish_in(self, t: rawsql.Tx, job_id: str, token: str, status: JobStatus, *, result=None,
                   error_code=None, error_message=None, files: list[dict] = (), duration: float | None = None,
                   message: str | None = None, kind: str | None = None, log_lines=(),
                   log_trim: bool = True) -> bool:
        now = self.clock()
        n = t.rowcount(_FINISH, {
            "status": status.value, "result": t.json(result), "error_code": error_code,
            "error_message": error_message, "now": now, "message": message,
            "succeeded": status == JobStatus.SUCCEEDED, "id": job_id, "token": token})
        if n != 1:
            return False
        for f in files:
            t.rowcount(_INSERT_FILE, dict(job_id=job_id, created_at=now, **f))
        job_logs.append_in(t, job_id, list(log_lines), self.log_keep, trim=log_trim)
        if status == JobStatus.SUCCEEDED and duration is not None and kind:
            self._record_duration(t, kind, duration, now)
        return True

    @staticmethod
    def _record_duration(t: rawsql.Tx, kind: str, seconds: float, now: float) -> None:
        t.rowcount(_AVERAGE, {"keep": 1 - EWMA_WEIGHT, "weight": EWMA_WEIGHT, "seconds": seconds, "now": now,
                              "kind": kind})

    def requeue(self, job_id: str, token: str, *, run_after: float, error_code: str | None = None,
                error_message: str | None = None, refund_attempt: bool = False, message: str = "",
                log_lines=()) -> bool:
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
            if res.rowcount != 1:
                return False
            job_logs.append_conn(conn, job_id, list(log_lines), self.log_keep)
            return True
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
                # The SELECT locked nothing: on PostgreSQL the worker may finish the job or renew
                # its lease between it and this UPDATE, so the UPDATE repeats every condition
                # and only a row it really changed is recovered (else the sweep would log a
                # recovery that did not happen, and remove the files of an ABANDONED job that in
                # fact just succeeded).
                base = jobs.update().where(jobs.c.id == job.id, jobs.c.run_token == job.run_token,
                                           jobs.c.status == RUNNING, jobs.c.lease_expires_at < now)
                if job.attempt < job.max_attempts:
                    line = f"requeued: worker {job.lease_owner} stopped responding"
                    changed = conn.execute(base.values(status=QUEUED, run_token=None, lease_owner=None,
                                                       lease_expires_at=None, run_after=now, updated_at=now,
                                                       message=line)).rowcount
                    if changed:
                        requeued.append(job.id)
                else:
                    line = f"failed ABANDONED: worker lost {job.attempt} times; giving up"
                    changed = conn.execute(base.values(status=JobStatus.FAILED.value, run_token=None,
                                                       lease_owner=None, lease_expires_at=None, finished_at=now,
                                                       updated_at=now, error_code="ABANDONED",
                                                       error_message=f"Worker lost {job.attempt} times; "
                                                                     "giving up.")).rowcount
                    if changed:
                        abandoned.append(as_dict(job))
                if changed:
                    job_logs.append_conn(conn, job.id, [(now, "WARNING", line)], self.log_keep)
            return requeued, abandoned
        return database.write(self.engine, tx)

"""The submit/read/cancel side of the job store (the execution side is in claims.py).

Every read or write is scoped by ``owner_id`` unless the caller passes None (admin), so a
job id that belongs to someone else looks exactly like one that does not exist.
"""
from __future__ import annotations

import math
import time
import uuid
import zlib
from dataclasses import dataclass

import sqlalchemy as sa

from service.engine.status import JobStatus, can_transition
from service.errors import ConcurrencyLimit, InvalidState, NotFound, QueueFull, ServiceBusy
from service.store import database, listener, rawsql
from service.store.schema import job_files, jobs

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
ACTIVE = (QUEUED, RUNNING)


@dataclass(frozen=True)
class KindPolicy:
    """What the store needs to know about a kind to admit and claim its jobs."""
    name: str
    per_user_limit: int | None = None
    over_limit: str = "queue"          # "queue" or "refuse"
    global_limit: int | None = None
    max_attempts: int = 3
    timeout_seconds: float | None = None
    over_limit_error: tuple[str, str] | None = None  # (code, message) of the 409 when refused

    @property
    def limited(self) -> bool:
        return self.per_user_limit is not None or self.global_limit is not None

    def full(self, running: int, running_mine: int) -> bool:
        """True if one more running job would break the global or the per-user limit."""
        return ((self.global_limit is not None and running >= self.global_limit)
                or (self.per_user_limit is not None and running_mine >= self.per_user_limit))


@dataclass(frozen=True)
class QueueBounds:
    per_user: int
    total: int
    retry_after: int = 5


def pg_lock(conn, key: int) -> None:
    """Serialise a critical section across hosts on PostgreSQL (SQLite's BEGIN IMMEDIATE already does)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


SUBMIT_LOCK_BASE = 7_000_000
CLAIM_LOCK = 6_999_999
KIND_LOCK_BASE = 5_000_000_000   # + crc32 of the kind name: one advisory lock per limited kind


def kind_lock(kind: str) -> int:
    return KIND_LOCK_BASE + zlib.crc32(kind.encode())


def as_dict(row) -> dict | None:
    return dict(row._mapping) if row is not None else None


# The submit path runs on the raw connection (see rawsql for why); portable SQL, built once.
# one statement for both bounds (each subquery searches its own partial index): a statement
# fewer in every submit, which runs under the write lock
_COUNT_QUEUED_MINE_AND_ALL = ("SELECT (SELECT count(*) FROM jobs WHERE status = 'queued' AND owner_id = :owner), "
                              "(SELECT count(*) FROM jobs WHERE status = 'queued')")
_COUNT_MINE_OF_KIND = "SELECT count(*) FROM jobs WHERE status = :status AND owner_id = :owner AND kind = :kind"
_COUNT_AHEAD = "SELECT count(*) FROM jobs WHERE status = 'queued' AND priority >= :priority"
_BY_IDEMPOTENCY_KEY = "SELECT * FROM jobs WHERE owner_id = :owner AND idempotency_key = :key"
_INSERT_COLUMNS = ("id", "owner_id", "kind", "params", "status", "priority", "progress", "message", "attempt",
                   "max_attempts", "run_after", "cancel_requested", "timeout_seconds", "idempotency_key",
                   "created_at", "updated_at")
_INSERT_JOB = (f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) "
               f"VALUES ({', '.join(':' + c for c in _INSERT_COLUMNS)})")
RUNNING_OF_KIND = ("SELECT owner_id, count(*) FROM jobs WHERE status = 'running' AND kind = :kind "
                    "GROUP BY owner_id")
_CLAIM_COLUMNS = ("attempt", "run_token", "lease_owner", "lease_expires_at", "started_at")
_RUNNING_INSERT_COLUMNS = tuple(c for c in _INSERT_COLUMNS if c != "attempt") + _CLAIM_COLUMNS
_INSERT_RUNNING_JOB = (f"INSERT INTO jobs ({', '.join(_RUNNING_INSERT_COLUMNS)}) "
                       f"VALUES ({', '.join(':' + c for c in _RUNNING_INSERT_COLUMNS)})")
_QUEUED_BY_KIND = "SELECT kind, count(*), min(run_after) FROM jobs WHERE status = 'queued' GROUP BY kind"
_RUNNING_BY_KIND = "SELECT kind, count(*) FROM jobs WHERE status = 'running' GROUP BY kind"
_UNSET = dict(started_at=None, finished_at=None, result=None, error_code=None, error_message=None,
              run_token=None, lease_owner=None, lease_expires_at=None)


class JobStore:
    def __init__(self, engine: sa.Engine, clock=time.time):
        self.engine = engine
        self.clock = clock

    # -- submit ---------------------------------------------------------------------------
    def submit(self, owner_id: int, policy: KindPolicy, params: dict, bounds: QueueBounds, *,
               idempotency_key: str | None = None, priority: int = 0,
               start_for: tuple | None = None) -> tuple[dict, bool]:
        """Insert a queued job; returns (job, created). Limits are checked in the same
        write transaction as the insert, so racing submissions on other workers cannot
        both slip under a bound.

        ``start_for`` = (worker_id, policies, lease_seconds) from a worker that reserved a free
        slot: when nothing at all is queued (so no job is passed over) and the kind's running
        limits allow it, the job is inserted already claimed by that worker — the same row a
        claim would make — and the caller runs it. Otherwise it is queued as usual."""
        def tx(t: rawsql.Tx):
            t.pg_lock(SUBMIT_LOCK_BASE + owner_id)
            if idempotency_key:
                existing = t.first(_BY_IDEMPOTENCY_KEY, {"owner": owner_id, "key": idempotency_key})
                if existing is not None:
                    return existing, False
            queued = self._check_admission(t, owner_id, policy, bounds)
            now = self.clock()
            row = dict(id=str(uuid.uuid4()), owner_id=owner_id, kind=policy.name, params=params,
                       status=QUEUED, priority=priority, progress=0.0, message=None, attempt=0,
                       max_attempts=policy.max_attempts, run_after=now, cancel_requested=False,
                       timeout_seconds=policy.timeout_seconds, idempotency_key=idempotency_key,
                       created_at=now, updated_at=now)
            if start_for is not None and queued == 0 and self._may_start(t, owner_id, policy, start_for[1]):
                worker_id, _policies, lease_seconds = start_for
                claimed = dict(status=RUNNING, attempt=1, run_token=uuid.uuid4().hex, lease_owner=worker_id,
                               lease_expires_at=now + lease_seconds, started_at=now, message="started")
                t.execute(_INSERT_RUNNING_JOB, {**row, **claimed, "params": t.json(params)}).close()
                return {**row, **_UNSET, **claimed, "position": None}, True
            t.execute(_INSERT_JOB, {**row, "params": t.json(params)}).close()
            if not t.sqlite:
                t.execute(listener.NOTIFY_SQL).close()  # wakes every host's dispatcher at commit
            # Everything queued now was queued earlier, so only higher priorities change who
            # is ahead; priorities are never negative.
            ahead = queued if priority == 0 else t.scalar(_COUNT_AHEAD, {"priority": priority})
            return {**row, **_UNSET, "position": ahead + 1}, True
        if priority < 0:
            raise ValueError("priority must not be negative")
        return rawsql.write(self.engine, tx)

    @staticmethod
    def _may_start(t: rawsql.Tx, owner_id: int, policy: KindPolicy, policies: dict) -> bool:
        """The claim's running limits (ClaimStore._claim_in), for one job of ``policy``."""
        if policy.name not in policies:
            return False
        if not policy.limited:
            return True
        t.pg_lock(kind_lock(policy.name))  # as a claim of this kind does (ClaimStore._claim_in)
        running = dict(t.fetchall(RUNNING_OF_KIND, {"kind": policy.name}))
        return not policy.full(sum(running.values()), running.get(owner_id, 0))

    @staticmethod
    def _check_admission(t: rawsql.Tx, owner_id: int, policy: KindPolicy, bounds: QueueBounds) -> int:
        """Raise if a limit or bound is reached; returns the number of queued jobs."""
        if policy.over_limit == "refuse" and policy.per_user_limit is not None:
            # one count per status so each is a search of its partial index
            active = sum(t.scalar(_COUNT_MINE_OF_KIND, {"status": status, "owner": owner_id, "kind": policy.name})
                         for status in ACTIVE)
            if active >= policy.per_user_limit:
                code, message = policy.over_limit_error or (None, None)
                raise ConcurrencyLimit(
                    message or f"A {policy.name} job of yours is already active; only {policy.per_user_limit} "
                    f"at a time is allowed. Wait for it to finish or cancel it.", code=code,
                    details={"kind": policy.name, "limit": policy.per_user_limit, "active": active})
        mine, total = t.fetchall(_COUNT_QUEUED_MINE_AND_ALL, {"owner": owner_id})[0]
        if mine >= bounds.per_user:
            raise QueueFull(details={"queued": mine, "limit": bounds.per_user}, retry_after=bounds.retry_after)
        if total >= bounds.total:
            raise ServiceBusy(details={"queued": total, "limit": bounds.total}, retry_after=bounds.retry_after)
        return total

    # -- reads ----------------------------------------------------------------------------
    def get(self, job_id: str, owner_id: int | None) -> dict:
        with database.read(self.engine) as conn:
            return self._get_in(conn, job_id, owner_id)

    def list(self, owner_id: int | None, *, status: str | None = None, kind: str | None = None,
             page: int = 1, page_size: int = 20) -> tuple[list[dict], int]:
        cond = []
        if owner_id is not None:
            cond.append(jobs.c.owner_id == owner_id)
        if status:
            cond.append(jobs.c.status == status)
        if kind:
            cond.append(jobs.c.kind == kind)
        with database.read(self.engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(*cond)).scalar_one()
            rows = conn.execute(sa.select(jobs).where(*cond)
                                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
                                .limit(page_size).offset((page - 1) * page_size)).all()
        return [as_dict(r) for r in rows], total

    def files(self, job_id: str) -> list[dict]:
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(job_files).where(job_files.c.job_id == job_id)
                                .order_by(job_files.c.name)).all()
        return [as_dict(r) for r in rows]

    def files_for(self, job_ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {j: [] for j in job_ids}
        if not job_ids:
            return out
        with database.read(self.engine) as conn:
            for r in conn.execute(sa.select(job_files).where(job_files.c.job_id.in_(job_ids))
                                  .order_by(job_files.c.name)):
                out[r.job_id].append(as_dict(r))
        return out

    # -- user actions ---------------------------------------------------------------------
    @staticmethod
    def _get_in(conn, job_id: str, owner_id: int | None) -> dict:
        """The job, scoped to its owner unless owner_id is None (admin), in ``conn``'s transaction."""
        cond = [jobs.c.id == str(job_id)]
        if owner_id is not None:
            cond.append(jobs.c.owner_id == owner_id)
        row = conn.execute(sa.select(jobs).where(*cond)).first()
        if row is None:
            raise NotFound("No such job.", code="JOB_NOT_FOUND")
        return as_dict(row)

    def request_cancel(self, job_id: str, owner_id: int | None) -> dict:
        """Queued jobs are cancelled at once; running ones get a flag their kind checks."""
        def tx(conn):
            job = self._get_in(conn, job_id, owner_id)
            now = self.clock()
            if job["status"] == QUEUED:
                conn.execute(jobs.update().where(jobs.c.id == job["id"], jobs.c.status == QUEUED).values(
                    status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now,
                    message="cancelled before it started"))
            elif job["status"] == RUNNING:
                conn.execute(jobs.update().where(jobs.c.id == job["id"]).values(
                    cancel_requested=True, updated_at=now, message="cancelling"))
            else:
                raise InvalidState(f"The job has already {job['status']}.", details={"status": job["status"]})
            return self._get_in(conn, job_id, owner_id)
        return database.write(self.engine, tx)

    def retry(self, job_id: str, owner_id: int | None) -> dict:
        def tx(conn):
            job = self._get_in(conn, job_id, owner_id)
            if not can_transition(job["status"], QUEUED) or job["status"] == RUNNING:
                raise InvalidState("Only failed or cancelled jobs can be retried.",
                                   details={"status": job["status"]})
            now = self.clock()
            conn.execute(job_files.delete().where(job_files.c.job_id == job["id"]))
            conn.execute(jobs.update().where(jobs.c.id == job["id"]).values(
                status=QUEUED, attempt=0, progress=0.0, message="retry requested", result=None,
                error_code=None, error_message=None, started_at=None, finished_at=None,
                run_after=now, updated_at=now, cancel_requested=False, run_token=None,
                lease_owner=None, lease_expires_at=None))
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(listener.NOTIFY_SQL)
            return self._get_in(conn, job_id, owner_id)
        return database.write(self.engine, tx)

    def delete(self, job_id: str, owner_id: int | None, expect_status: str | None = None) -> dict | None:
        """Delete a job that is not running (cancel it first); the caller removes its files.
        With ``expect_status``, only a job still in that status is deleted (else None)."""
        def tx(conn):
            job = self._get_in(conn, job_id, owner_id)
            if expect_status is not None and job["status"] != expect_status:
                return None  # changed since the caller looked (a retry queued it again)
            if job["status"] == RUNNING:
                raise InvalidState("The job is running; cancel it first.", details={"status": RUNNING})
            conn.execute(job_files.delete().where(job_files.c.job_id == job["id"]))
            conn.execute(jobs.delete().where(jobs.c.id == job["id"]))
            return job
        return database.write(self.engine, tx)

    # -- maintenance ----------------------------------------------------------------------
    def finished_before(self, cutoffs: dict[str, float]) -> list[dict]:
        """Jobs in a final status that finished before that status's cutoff (epoch seconds)."""
        out = []
        with database.read(self.engine) as conn:
            for status, cutoff in cutoffs.items():
                if status in ACTIVE:
                    raise ValueError(f"{status} jobs are never expired")
                out += [as_dict(r) for r in conn.execute(
                    sa.select(jobs.c.id, jobs.c.owner_id, jobs.c.status, jobs.c.finished_at)
                    .where(jobs.c.status == status, jobs.c.finished_at < cutoff))]
        return out

    def active_file_ids(self) -> set[str]:
        """The uploads that queued or running jobs will read (their params' file_id)."""
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(jobs.c.params).where(jobs.c.status.in_(ACTIVE))).scalars()
            return {p["file_id"] for p in rows if isinstance(p, dict) and isinstance(p.get("file_id"), str)}

    def status_of(self, job_id: str) -> str | None:
        with database.read(self.engine) as conn:
            return conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()

    # -- statistics -----------------------------------------------------------------------
    def counts(self, owner_id: int | None) -> dict[str, dict[str, int]]:
        """{kind: {status: n}} for one user, or for everyone."""
        q = sa.select(jobs.c.kind, jobs.c.status, sa.func.count()).group_by(jobs.c.kind, jobs.c.status)
        if owner_id is not None:
            q = q.where(jobs.c.owner_id == owner_id)
        out: dict[str, dict[str, int]] = {}
        with database.read(self.engine) as conn:
            for kind, status, n in conn.execute(q):
                out.setdefault(kind, {})[status] = n
        return out

    def active_by_kind(self) -> dict[str, dict[str, float | None]]:
        """{kind: {"queued": n, "running": n, "oldest_queued_at": t | None}} over everyone's jobs,
        for the metrics gauges (read on every scrape). Unlike counts(), which groups the whole
        table, each query reads only its status's partial index (status as a literal, so
        SQLite's planner can use it), however many finished jobs there are.
        ``oldest_queued_at`` is the smallest run_after of the kind's queued jobs: in the past
        for the job that has waited longest to be claimable, in the future when every queued
        job is still in its retry backoff."""
        out: dict[str, dict[str, float | None]] = {}
        with database.read(self.engine) as conn:
            for kind, n, oldest in conn.execute(sa.text(_QUEUED_BY_KIND)):
                out[kind] = {"queued": n, "running": 0, "oldest_queued_at": oldest}
            for kind, n in conn.execute(sa.text(_RUNNING_BY_KIND)):
                out.setdefault(kind, {"queued": 0, "running": 0, "oldest_queued_at": None})["running"] = n
        return out

    def queue_position(self, job: dict) -> int | None:
        """1 for the next job to be claimed; None unless queued."""
        if job["status"] != QUEUED:
            return None
        p, c = job["priority"], job["created_at"]
        ahead = sa.or_(jobs.c.priority > p,
                       sa.and_(jobs.c.priority == p, sa.or_(jobs.c.created_at < c,
                               sa.and_(jobs.c.created_at == c, jobs.c.id < job["id"]))))
        with database.read(self.engine) as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(jobs)
                             .where(jobs.c.status == QUEUED, ahead)).scalar_one()
        return n + 1


def eta_seconds(position: int | None, avg_seconds: float, slots: int, wait_until: float = 0.0) -> float | None:
    """Jobs ahead are served ``slots`` at a time, each taking about ``avg_seconds``."""
    if position is None:
        return None
    rounds = math.ceil(position / max(1, slots))
    return round(max(wait_until, 0.0) + rounds * avg_seconds, 1)

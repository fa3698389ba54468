"""The last lines each job wrote: appended by its executions, trimmed per job, read by the API.

Lines reach the table in the transactions an execution writes anyway (its finish, its requeue,
the sweep that recovers it) and, while it runs, in the monitor's periodic flush; a line from an
execution that lost its job (its run token no longer matches) is dropped with its other writes.
"""
from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa

from service.store import database, rawsql

KEEP_LINES = 1000        # per job, across attempts; older lines are trimmed and counted
MAX_MESSAGE = 2000       # characters per line

Line = tuple[float, str, str]   # (epoch seconds, level name, message)

INSERT = "INSERT INTO job_logs (job_id, at, level, message) VALUES (:job_id, :at, :level, :message)"
_CUT = "SELECT id FROM job_logs WHERE job_id = :job_id ORDER BY id DESC LIMIT 1 OFFSET :keep"
_TRIM = "DELETE FROM job_logs WHERE job_id = :job_id AND id <= :cut"
_COUNT_DROPPED = "UPDATE jobs SET log_dropped = log_dropped + :n WHERE id = :job_id"
_OWNED = "SELECT 1 FROM jobs WHERE id = :job_id AND run_token = :token AND status = 'running'"
_READ = ("SELECT id, at, level, message FROM job_logs WHERE job_id = :job_id AND id > :after "
         "ORDER BY id DESC LIMIT :tail")


def _rows(job_id: str, lines: Iterable[Line]) -> list[dict]:
    return [{"job_id": job_id, "at": at, "level": level[:10], "message": message[:MAX_MESSAGE]}
            for at, level, message in lines]


def append_in(t: rawsql.Tx, job_id: str, lines: list[Line], keep: int = KEEP_LINES, trim: bool = True) -> None:
    """Add lines in the caller's raw transaction (the finish), then trim to the last ``keep``.
    ``trim=False`` when the job cannot have more (see JobLogBuffer.needs_trim): the trim's
    query was a third of what a short job's log cost in its finish."""
    if not lines:
        return
    t.executemany(INSERT, _rows(job_id, lines))
    if not trim:
        return
    cut = t.scalar(_CUT, {"job_id": job_id, "keep": keep})
    if cut is not None:
        n = t.rowcount(_TRIM, {"job_id": job_id, "cut": cut})
        t.rowcount(_COUNT_DROPPED, {"job_id": job_id, "n": n})


def append_conn(conn: sa.Connection, job_id: str, lines: list[Line], keep: int = KEEP_LINES) -> None:
    """append_in for a SQLAlchemy connection (the requeue and the sweep use one)."""
    if not lines:
        return
    conn.execute(sa.text(INSERT), _rows(job_id, lines))
    cut = conn.execute(sa.text(_CUT), {"job_id": job_id, "keep": keep}).scalar()
    if cut is not None:
        n = conn.execute(sa.text(_TRIM), {"job_id": job_id, "cut": cut}).rowcount
        conn.execute(sa.text(_COUNT_DROPPED), {"job_id": job_id, "n": n})


class JobLogStore:
    def __init__(self, engine: sa.Engine, keep: int = KEEP_LINES):
        self.engine = engine
        self.keep = keep

    def append_running(self, batches: dict[str, tuple[str, list[Line]]]) -> set[str]:
        """Flush the lines of running executions ({job_id: (run_token, lines)}) in one
        transaction; returns the job ids whose execution no longer owns the job (lines dropped)."""
        def tx(t: rawsql.Tx) -> set[str]:
            lost = set()
            for job_id, (token, lines) in batches.items():
                if t.scalar(_OWNED, {"job_id": job_id, "token": token}) is None:
                    lost.add(job_id)
                else:
                    append_in(t, job_id, lines, self.keep)
            return lost
        return rawsql.write(self.engine, tx)

    def read(self, job_id: str, *, after: int = 0, tail: int = 100) -> tuple[list[dict], int]:
        """The last ``tail`` lines after seq ``after``, oldest first, and how many were trimmed."""
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.text(_READ), {"job_id": job_id, "after": after, "tail": tail}).all()
            dropped = conn.execute(sa.text("SELECT log_dropped FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
        lines = [{"seq": r.id, "at": r.at, "level": r.level, "message": r.message} for r in reversed(rows)]
        return lines, int(dropped or 0)

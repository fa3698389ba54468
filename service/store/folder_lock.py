"""A job folder's lock held in the database (PostgreSQL advisory lock), for several hosts.

Why: with several hosts sharing FILES_ROOT on a network filesystem, file locks are unreliable
(NFS lock daemons, SMB leases), and the lock exists precisely to keep two hosts' executions of
one job out of each other's files. PostgreSQL's session advisory locks are exact across hosts
and vanish with the session, so a dead host's lock goes when its connection does.

Interface of filelock.FileLock as the engine uses it: acquire(timeout) (raising
filelock.Timeout), release(), is_locked, and use as a context manager.
"""
from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from filelock import Timeout

POLL_SECONDS = 0.05


def job_lock_key(job_id: str) -> int:
    """A stable signed 64-bit key for the job (its UUID's low 63 bits)."""
    return uuid.UUID(str(job_id)).int & ((1 << 63) - 1)


class AdvisoryFolderLock:
    def __init__(self, engine: sa.Engine, job_id: str):
        self.engine = engine
        self.key = job_lock_key(job_id)
        self._conn = None

    @property
    def is_locked(self) -> bool:
        return self._conn is not None

    def acquire(self, timeout: float = -1) -> "AdvisoryFolderLock":
        if self._conn is not None:
            return self
        # A connection of its own, outside the pool, in autocommit: held for as long as the job
        # runs, it must not sit "idle in transaction" nor take a pool slot the job itself needs.
        fairy = self.engine.raw_connection()
        fairy.detach()
        conn = fairy.dbapi_connection
        conn.autocommit = True
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        try:
            while True:
                if conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                    self._conn = conn
                    return self
                if deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(f"advisory lock {self.key}")
                time.sleep(POLL_SECONDS)
        except BaseException:
            conn.close()
            raise

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        finally:
            conn.close()  # closing ends the session, which frees the lock in any case

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

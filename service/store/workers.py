"""Live worker registry (for ETAs, health and the dashboard) and per-kind run-time stats."""
from __future__ import annotations

import time

import sqlalchemy as sa

from service.store import database
from service.store.schema import kind_stats, workers


class WorkerStore:
    def __init__(self, engine: sa.Engine, clock=time.time):
        self.engine = engine
        self.clock = clock

    def heartbeat(self, worker_id: str, host: str, pid: int, slots: int, running: list[str]) -> None:
        def tx(conn):
            now = self.clock()
            res = conn.execute(workers.update().where(workers.c.id == worker_id).values(
                heartbeat_at=now, running=running, slots=slots))
            if res.rowcount == 0:
                conn.execute(workers.insert().values(id=worker_id, host=host, pid=pid, slots=slots,
                                                     running=running, started_at=now, heartbeat_at=now))
        database.write(self.engine, tx)

    def remove(self, worker_id: str) -> None:
        database.write(self.engine, lambda conn: conn.execute(workers.delete().where(workers.c.id == worker_id)))

    def prune(self, stale_after: float) -> int:
        """Forget workers whose heartbeat stopped (their jobs are recovered by the lease sweep)."""
        cutoff = self.clock() - stale_after
        return database.write(self.engine, lambda conn: conn.execute(
            workers.delete().where(workers.c.heartbeat_at < cutoff)).rowcount)

    def live(self, stale_after: float) -> list[dict]:
        cutoff = self.clock() - stale_after
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(workers).where(workers.c.heartbeat_at >= cutoff)
                                .order_by(workers.c.host, workers.c.pid)).all()
        return [dict(r._mapping) for r in rows]

    def live_slots(self, stale_after: float) -> int:
        cutoff = self.clock() - stale_after
        with database.read(self.engine) as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(workers.c.slots), 0))
                                    .where(workers.c.heartbeat_at >= cutoff)).scalar_one())

    def average_durations(self) -> dict[str, float]:
        with database.read(self.engine) as conn:
            return {r.kind: r.avg_seconds for r in conn.execute(sa.select(kind_stats))}

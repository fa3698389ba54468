"""Planner statistics for SQLite, so the hot queries use the partial indexes from the start.

Without statistics SQLite guesses, and with a few thousand rows it guessed wrong: the claim
walked every job of a kind (finished ones included) and sorted them, and the per-user queue
count walked all of that user's jobs, both while holding the write lock. After ANALYZE the
plans are right, but a new database has nothing to analyze. So when ``jobs`` has no
statistics, ANALYZE runs once, and if the tables are still empty, estimates of the steady
state (many finished jobs, few queued or running) are written into sqlite_stat1, which SQLite
documents as writable for this purpose. A later ANALYZE (the cleanup script runs one)
replaces them with real figures.
"""
from __future__ import annotations

import sqlalchemy as sa

from service.store import database

# index -> sqlite_stat1 "stat": rows in the index, then average rows per distinct prefix
STEADY_STATE = {
    None: "1000000",
    "ix_jobs_owner_created": "1000000 1000 1",
    "ix_jobs_kind_finished": "1000000 200000 1",
    "ix_jobs_queued": "1000 500 2 1",
    "ix_jobs_queued_owner": "1000 10 5",
    "ix_jobs_running": "50 10 2",
    "ix_jobs_lease": "50 1",
}


def ensure_planner_stats(engine: sa.Engine) -> bool:
    """Give SQLite's planner statistics for ``jobs`` if it has none. True if it wrote any."""
    if engine.dialect.name != "sqlite":
        return False  # PostgreSQL's autovacuum keeps its own statistics

    def has_stats(conn) -> bool:
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='sqlite_stat1'").first()
        return bool(exists) and bool(conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_stat1 WHERE tbl='jobs' AND idx IS NOT NULL").first())

    def tx(conn):
        if not conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name='jobs'").first():
            return False  # not migrated yet
        if has_stats(conn):
            return False
        conn.exec_driver_sql("ANALYZE")
        if has_stats(conn):
            return True
        conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl='jobs'")
        for idx, stat in {**_generic_estimates(conn), **STEADY_STATE}.items():
            conn.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('jobs', ?, ?)", (idx, stat))
        conn.exec_driver_sql("ANALYZE sqlite_schema")  # reload the statistics on this connection
        return True
    return database.write(engine, tx)


def _generic_estimates(conn) -> dict[str, str]:
    """Indexes not named above (the unique constraints' automatic indexes): one in a thousand
    rows per leading column, so the planner can weigh them against the ones it knows."""
    out = {}
    for row in conn.exec_driver_sql("PRAGMA index_list(jobs)"):
        name = row[1]
        columns = len(conn.exec_driver_sql(f"PRAGMA index_info('{name}')").all())
        out[name] = "1000000" + " 1000" * max(0, columns - 1) + " 1"
    return out

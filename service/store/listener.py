"""Wake dispatchers on every host the moment a job is queued: PostgreSQL LISTEN/NOTIFY.

A submit (or a retry) notifies in its own transaction, so the notification goes out when the
job is committed and never before. Each dispatcher listens on a connection of its own and wakes
its claim loop, so a job queued on one host starts on another without waiting for a poll tick;
the poll stays as the fallback (a lost connection, a notification missed while reconnecting).
SQLite has no such channel: there, the submitting worker wakes itself and others poll.
"""
from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

log = logging.getLogger(__name__)

CHANNEL = "ilgun_jobs"
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', '')"
RECONNECT_DELAY = 2.0


def supports_notify(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


class QueueListener:
    """Calls ``on_queued()`` for every notification, until ``stop()``."""

    def __init__(self, engine: sa.Engine, on_queued, name: str = "ilgun-listen"):
        self.engine = engine
        self.on_queued = on_queued
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.listening = threading.Event()  # set while LISTEN is in effect (tests wait on it)

    def start(self) -> "QueueListener":
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                # A pooled connection, detached: it has the engine's connect arguments (search
                # path, SSL …) and stays out of the pool while it listens.
                fairy = self.engine.raw_connection()
                fairy.detach()
                conn = fairy.dbapi_connection
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                self.on_queued()  # whatever was queued while nobody listened
                while not self._stop.is_set():
                    for _note in conn.notifies(timeout=1.0):
                        self.on_queued()
            except Exception:  # noqa: BLE001 - a broken connection: reconnect, the poll covers the gap
                log.warning("queue listener lost its connection; reconnecting", exc_info=True)
                self._stop.wait(RECONNECT_DELAY)
            finally:
                self.listening.clear()
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass

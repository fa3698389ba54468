"""The chaos loop's two background samplers: ProcessWatcher (which gunicorn processes live and
when each went away) and StateMonitor (the exactly-once watcher on the jobs table: a final state
never changes, no lease is overstayed while a server is up)."""
from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING

from chaos_settings import LEASE_MARGIN, LOG_TOLERANCE, SWEEP
from gunicorn_harness import TERMINAL, IlgunServer, group_members, pid_alive

if TYPE_CHECKING:
    from chaos import Chaos


def worker_pid(worker_id: str | None) -> int | None:
    """The pid in a dispatcher's worker id (host:pid:hex)."""
    try:
        return int(str(worker_id).split(":")[-2])
    except (IndexError, ValueError):
        return None


def ids_sql(ids) -> str:
    return ",".join(f"'{uuid.UUID(str(i))}'" for i in ids) or "''"


# --- who is alive ---------------------------------------------------------------------------

class ProcessWatcher:
    """Polls the server's process group and remembers when each pid was first seen and when it
    was gone (a SIGKILL we sent counts as its death at that moment)."""

    INTERVAL = 0.1

    def __init__(self, server: IlgunServer):
        self.server = server
        self.seen: dict[int, float] = {}
        self.gone: dict[int, float] = {}
        self.current: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-process-watcher", daemon=True)

    def start(self) -> "ProcessWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a process vanishing mid-scan; the next poll sees it
                pass

    def poll(self) -> None:
        proc = self.server.proc
        live = group_members(proc.pid) if proc is not None else set()
        now = time.time()
        with self._lock:
            for pid in live:
                self.seen.setdefault(pid, now)
            for pid in list(self.seen):
                if pid not in live and pid not in self.gone and not pid_alive(pid):
                    self.gone[pid] = now
            self.current = live

    def killed(self, pids, at: float) -> None:
        with self._lock:
            for pid in pids:
                self.seen.setdefault(pid, at)
                self.gone[pid] = min(self.gone.get(pid, at), at)

    def candidates(self) -> set[int]:
        with self._lock:
            return set(self.current)

    def dead_at(self, pid: int | None, at: float) -> bool | None:
        """Whether ``pid`` was gone at time ``at`` (None: never seen, so unknown)."""
        with self._lock:
            if pid is None or pid not in self.seen:
                return None
            gone = self.gone.get(pid)
        return gone is not None and gone <= at + self.INTERVAL + LOG_TOLERANCE


# --- what the jobs table says ----------------------------------------------------------------

class StateMonitor:
    """Samples the jobs table 4 times a second: a final state, once seen, never changes (nor its
    finished_at), and while a server is up no job stays running long past its lease."""

    INTERVAL = 0.25

    def __init__(self, chaos: "Chaos"):
        self.chaos = chaos
        self.final_seen: dict[str, tuple] = {}
        self.max_overdue = 0.0
        self.samples = self.errors = 0
        self.last_error: str | None = None
        self._flagged: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-state-monitor", daemon=True)

    def start(self) -> "StateMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def take_max_overdue(self) -> float:
        value, self.max_overdue = self.max_overdue, 0.0
        return value

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            try:
                self.sample()
                self.samples += 1
            except Exception as exc:  # noqa: BLE001 - a database briefly unreachable (PostgreSQL restarts do not happen here)
                self.errors += 1
                self.last_error = repr(exc)

    def sample(self) -> None:
        chaos = self.chaos
        jobs = dict(chaos.jobs)
        if not jobs:
            return
        rows = chaos.server._select(
            "SELECT id, status, finished_at, attempt, lease_owner, lease_expires_at FROM jobs "
            f"WHERE id IN ({ids_sql(jobs)})")
        now = time.time()
        up_since = chaos.up_since
        for r in rows:
            job = jobs[r["id"]]
            seen = self.final_seen.get(r["id"])
            if r["status"] in TERMINAL:
                if seen is None:
                    self.final_seen[r["id"]] = (r["status"], r["finished_at"])
                elif seen != (r["status"], r["finished_at"]) and ("changed", r["id"]) not in self._flagged:
                    self._flagged.add(("changed", r["id"]))
                    chaos.violation("1-exactly-once", job, f"final state changed from {seen} to "
                                                          f"{(r['status'], r['finished_at'])}")
            elif seen is not None and ("left", r["id"]) not in self._flagged:
                self._flagged.add(("left", r["id"]))
                chaos.violation("1-exactly-once", job, f"left its final state {seen} for {r['status']} "
                                                      f"(attempt {r['attempt']})")
            if r["status"] == "running" and r["lease_expires_at"] is not None and up_since is not None:
                overdue = now - max(float(r["lease_expires_at"]), up_since)
                self.max_overdue = max(self.max_overdue, overdue)
                key = ("lease", r["id"], r["attempt"], r["lease_owner"])
                if overdue > SWEEP + LEASE_MARGIN and key not in self._flagged:
                    self._flagged.add(key)
                    chaos.violation("3-lease", job, f"running {overdue:.2f}s past its lease (owner "
                                                    f"{r['lease_owner']}, attempt {r['attempt']}) with a server up")

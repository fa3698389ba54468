"""The chaos loop's faults (ServerFaults, mixed into chaos.Chaos): SIGKILL of a worker running
a job (kill), SIGTERM of the master and a restart (term), SIGHUP (hup), SIGKILL of the whole
process group and a restart (full); and starting the server and waiting for its workers."""
from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from chaos_jobs import Job
from chaos_settings import GRACE
from chaos_watchers import worker_pid
from gunicorn_harness import group_members, log, pid_alive, wait_for

if TYPE_CHECKING:
    from chaos_checks import RoundRecord


class ServerFaults:
    """The Chaos methods that start the server and bring its faults (self.server, self.port,
    self.watcher, self.leaving, self.up_since, self.victims, self.rng, self.jobs and
    self.violation() are the Chaos object's)."""

    # -- server lifecycle -----------------------------------------------------------------
    def _start_server(self) -> None:
        if self.server._log_file is not None:  # the previous run's log (the master exited)
            self.server._log_file.close()
            self.server._log_file = None
        self.server.start(port=self.port)
        self.port = self.server.port
        self.leaving = set()
        self.watcher.poll()
        self.up_since = time.time()

    def _serving_workers(self) -> set[int]:
        return self.server.worker_pids() - self.leaving

    def _wait_workers(self) -> None:
        """3 live workers (old ones still leaving after a HUP aside), each running a dispatcher."""
        def ready():
            procs = self._serving_workers()
            return len(procs) == 3 and procs <= {w["pid"] for w in self.server.stats()["workers"]}
        wait_for(ready, timeout=60, interval=0.3, what="3 live workers with dispatchers")
        self.watcher.poll()

    # -- faults ---------------------------------------------------------------------------
    def _running_by_pid(self) -> dict[int, list[tuple[str, int]]]:
        """Live worker pid -> [(job id, attempt)] it holds a lease for (from the jobs table)."""
        live = self._serving_workers()
        out: dict[int, list[tuple[str, int]]] = {}
        for r in self.server._select("SELECT id, lease_owner, attempt FROM jobs WHERE status = 'running'"):
            pid = worker_pid(r["lease_owner"])
            if pid in live:
                out.setdefault(pid, []).append((r["id"], r["attempt"]))
        return out

    def _sigkill(self, prefer_recovered: bool = False) -> dict:
        busy = self._running_by_pid()
        pool = sorted(busy)
        if prefer_recovered:
            pool = sorted(p for p, js in busy.items() if any(a >= 2 for _j, a in js)) or pool
        victim = self.victims.choice(pool) if pool else self.victims.choice(sorted(self._serving_workers()))
        os.kill(victim, signal.SIGKILL)
        at = time.time()
        self.watcher.killed([victim], at)
        jobs = busy.get(victim, [])
        log(f"  SIGKILL worker {victim} holding {[(j[:8], a) for j, a in jobs]}")
        return {"victim": victim, "victim_jobs": [j for j, _a in jobs],
                "victim_attempts": [a for _j, a in jobs], "at": at}

    def _fault_kill(self, record: RoundRecord) -> None:
        record.fault_detail = self._sigkill()
        if self.rng.random() < 0.4:
            # again, once the first victim's jobs were recovered: a job killed on each of its
            # attempts ends ABANDONED
            time.sleep(self.rng.uniform(4.5, 7.0))
            try:
                self._wait_workers()
            except AssertionError:
                pass
            record.fault_detail["second_kill"] = self._sigkill(prefer_recovered=True)

    def _fault_term(self, record: RoundRecord) -> None:
        server = self.server
        pgid, old = server.pid, server.worker_pids()
        self.up_since = None
        t0, signalled = time.monotonic(), time.time()
        server.terminate(signal.SIGTERM)
        code = server.wait_exit(timeout=GRACE + 20)
        wait_for(lambda: not group_members(pgid), timeout=10, what="every gunicorn process to exit")
        stopped = time.monotonic() - t0
        self.watcher.killed(old | {pgid}, time.time())
        log(f"  SIGTERM: master exited with {code} after {stopped:.1f}s")
        if code != 0:
            self.violation("graceful-stop", None, f"gunicorn exited with {code} after SIGTERM")
        left = [r for r in server._select("SELECT id, kind, attempt, lease_owner FROM jobs WHERE status = 'running'")]
        for r in left:
            self.violation("graceful-stop", self.jobs.get(r["id"]) or Job(r["id"], r["kind"], 0),
                           f"left running by a graceful stop (attempt {r['attempt']}, owner {r['lease_owner']})")
        queued = server._select("SELECT count(*) AS n FROM jobs WHERE status = 'queued'")[0]["n"]
        self._start_server()
        record.fault_detail = {"exit_code": code, "seconds": round(stopped, 2), "signalled": signalled,
                               "queued_after_stop": queued,
                               "restart_seconds": round(time.monotonic() - t0 - stopped, 2), "old_workers": sorted(old)}

    def _fault_hup(self, record: RoundRecord) -> None:
        """gunicorn 27 on HUP starts new workers and SIGTERMs the old ones; it does not SIGKILL
        an old worker that outlives graceful_timeout (only its heartbeat TIMEOUT does), so the
        round goes on as soon as the new workers run, and the old ones' exits are recorded."""
        server = self.server
        old = server.worker_pids()
        self.leaving |= old
        self.up_since = None
        t0, signalled = time.monotonic(), time.time()
        server.terminate(signal.SIGHUP)
        self._wait_workers()
        ready = time.monotonic() - t0
        self.up_since = time.time()
        log(f"  SIGHUP: new workers ready after {ready:.1f}s")
        record.fault_detail = {"seconds": round(ready, 2), "signalled": signalled, "old_workers": sorted(old),
                               "new_workers": sorted(server.worker_pids() - old)}

    def _fault_full(self, record: RoundRecord) -> None:
        server = self.server
        members = group_members(server.pid) | {server.pid}
        self.up_since = None
        t0 = time.monotonic()
        server.kill_group()
        self.watcher.killed(members, time.time())
        busy = server._select("SELECT count(*) AS n FROM jobs WHERE status = 'running'")[0]["n"]
        self._start_server()
        log(f"  SIGKILL of the whole group ({busy} job(s) running), restarted in {time.monotonic() - t0:.1f}s")
        record.fault_detail = {"seconds": round(time.monotonic() - t0, 2), "running_when_killed": busy,
                               "killed": sorted(members)}

    # -- what a fault did ------------------------------------------------------------------
    def _old_workers_report(self, record: RoundRecord) -> None:
        """How long each signalled worker lived on (seconds after the signal; None: still alive)."""
        d = record.fault_detail
        self.watcher.poll()
        exits = {}
        for pid in d["old_workers"]:
            gone = self.watcher.gone.get(pid)
            exits[pid] = round(gone - d["signalled"], 2) if gone else None
        d["old_worker_exit_seconds"] = exits
        still = [pid for pid, s in exits.items() if s is None]
        if still:
            log(f"  note: old worker(s) {still} still alive {time.time() - d['signalled']:.1f}s after the "
                f"{record.fault.upper()}")
        self.leaving = {p for p in self.leaving if pid_alive(p)}

    @staticmethod
    def _fault_text(r: RoundRecord) -> str:
        d = r.fault_detail
        if r.fault == "kill":
            text = f"pid {d.get('victim')} +{r.fault_at}s ({len(d.get('victim_jobs', []))} job(s))"
            if d.get("second_kill"):
                text += f" + pid {d['second_kill'].get('victim')}"
            return text
        return f"+{r.fault_at}s, took {d.get('seconds', '?')}s"

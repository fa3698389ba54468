"""The chaos loop's checks after each round (InvariantChecks, mixed into chaos.Chaos): wait until
the round's jobs are final, then (1) exactly once, (2) never two live executions, from the job
logs, the file server's fetches, the crawl sites' requests and gunicorn's own log; and what a
round records (RoundRecord, Violation). The files root (invariant 4) is chaos_file_checks.py."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime

from chaos_jobs import Job
from chaos_settings import FETCH_TOLERANCE, LOG_TOLERANCE
from chaos_watchers import ids_sql, worker_pid
from gunicorn_harness import TERMINAL, log, overlapping, wait_for

FINAL_LINE = re.compile(r"^(succeeded in |failed |cancelled)")
START_LINE = re.compile(r"^attempt (\d+) of (\d+) started on (\S+)")
SWEEP_LINE = re.compile(r"^requeued: worker (\S+) stopped responding")
HANDBACK_LINE = re.compile(r"^handed back: ")
RETRY_LINE = re.compile(r"\(retrying in [0-9.]+s\)$")
STEP_LINE = re.compile(r"^step (\d+) of (\d+) done$")


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _process_lines(process_log: str) -> dict[str, list[tuple[float, int, str]]]:
    """job id -> [(time, pid, message)] of every line gunicorn's processes logged on a job's thread
    (the process log is not fenced: a stale execution's lines are here too)."""
    out: dict[str, list[tuple[float, int, str]]] = {}
    for line in process_log.splitlines():
        if not line.startswith("{") or '"job_id"' not in line:
            continue
        try:
            rec = json.loads(line)
            at = datetime.fromisoformat(rec["ts"]).timestamp()
        except (ValueError, KeyError):
            continue  # a line cut short by a SIGKILL
        if rec.get("job_id") and rec.get("pid"):
            out.setdefault(rec["job_id"], []).append((at, int(rec["pid"]), rec.get("message", "")))
    return out


@dataclass
class Violation:
    round: int
    invariant: str
    job: str | None
    kind: str | None
    detail: str

    def as_dict(self) -> dict:
        return {"round": self.round, "invariant": self.invariant, "job": self.job, "kind": self.kind,
                "detail": self.detail}


@dataclass
class RoundRecord:
    round: int
    fault: str
    fault_detail: dict = field(default_factory=dict)
    jobs: int = 0
    by_kind: dict = field(default_factory=dict)
    succeeded: int = 0
    abandoned: int = 0
    lost: int = 0
    progressing: int = 0
    duplicates: int = 0
    interrupted: int = 0
    submit_seconds: float | None = None
    fault_at: float | None = None
    drain_seconds: float | None = None
    round_seconds: float | None = None
    max_lease_overdue: float = 0.0
    stale_lock_files: int = 0
    unattributed_crawl_requests: int = 0
    violations: list = field(default_factory=list)


class InvariantChecks:
    """The Chaos methods that drain a round and check its jobs (self.server, self.files,
    self.drain_timeout, self.monitor, self.watcher, self.sites, self.violation() and
    self.violations are the Chaos object's; self._check_files() is chaos_file_checks')."""

    # -- drain and check ------------------------------------------------------------------
    def _drain_and_check(self, record: RoundRecord, jobs: list[Job], since: float, final: bool = False) -> None:
        ids = [j.id for j in jobs]
        deadline = time.monotonic() + self.drain_timeout
        rows = {}
        while True:
            rows = {r["id"]: r for r in self.server._select(f"SELECT * FROM jobs WHERE id IN ({ids_sql(ids)})")}
            if all(r["status"] in TERMINAL for r in rows.values()) and len(rows) == len(ids):
                record.drain_seconds = round(time.time() - since, 2)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        record.max_lease_overdue = round(self.monitor.take_max_overdue(), 2)
        # fetches cut off by a kill end at the file server's next write
        names = [j.fetch for j in jobs if j.fetch]
        try:
            wait_for(lambda: all(f.end is not None for n in names for f in self.files.for_path(n)), timeout=3,
                     what="the file server to see every fetch end")
        except AssertionError:
            pass
        time.sleep(0.3)
        done = [j for j in jobs if rows.get(j.id, {}).get("status") in TERMINAL]
        for job in jobs:
            if job in done:
                continue
            row = rows.get(job.id)
            if row is None:
                record.lost += 1
                self.violation("1-exactly-once", job, "its row is gone")
            elif not final and row["status"] == "running" and row["lease_expires_at"] and \
                    float(row["lease_expires_at"]) > time.time() and time.time() - float(row["updated_at"]) < 10:
                record.progressing += 1  # checked when it ends, in a later round
            else:
                record.lost += 1
                self.violation("1-exactly-once", job, f"not final after {self.drain_timeout:.0f}s: status "
                                                      f"{row['status']}, attempt {row['attempt']}, message {row['message']!r}")
                job.checked = True
        if not done:
            return
        logs = self._job_logs([j.id for j in done])
        files = self._job_files()
        process_lines = _process_lines(self.server.log_text())
        duplicated: set[str] = set()
        for job in done:
            row = rows[job.id]
            job.checked = True
            outcome = self._check_outcome(job, row, logs.get(job.id, []), duplicated)
            self._check_process_lines(job, logs.get(job.id, []), process_lines.get(job.id, []), duplicated)
            if outcome == "succeeded":
                record.succeeded += 1
            elif outcome == "abandoned":
                record.abandoned += 1
            if any(SWEEP_LINE.match(m) or HANDBACK_LINE.match(m) for _i, _at, m in logs.get(job.id, [])):
                record.interrupted += 1
            if job.kind == "download":
                self._check_fetches(job, row, files.get(job.id, []), duplicated)
            elif job.kind == "crawl":
                record.unattributed_crawl_requests += self._check_crawl(job, duplicated)
            elif job.kind == "sleep":
                self._check_steps(job, process_lines.get(job.id, []), duplicated)
            self._check_api(job, row, files.get(job.id, []))
        record.duplicates = len(duplicated)
        record.stale_lock_files = self._check_files()
        for job in done:
            if job.site is not None:
                job.site.close()
                self.sites.remove(job.site)
                job.site = None
        record.violations = [v.as_dict() for v in self.violations if v.round == record.round]

    def _job_logs(self, ids) -> dict[str, list[tuple[int, float, str]]]:
        out: dict[str, list[tuple[int, float, str]]] = {}
        for r in self.server._select(f"SELECT job_id, id, at, message FROM job_logs WHERE job_id IN ({ids_sql(ids)}) "
                                     "ORDER BY job_id, id"):
            out.setdefault(r["job_id"], []).append((r["id"], float(r["at"]), r["message"]))
        return out

    def _job_files(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in self.server._select("SELECT job_id, name, size FROM job_files"):
            out.setdefault(r["job_id"], []).append(r)
        return out

    # invariant 1, and 2 from the job's own log
    def _check_outcome(self, job: Job, row: dict, lines, duplicated: set) -> str:
        finals = [(i, at, m) for i, at, m in lines if FINAL_LINE.match(m)]
        sweeps = [(i, at, m) for i, at, m in lines if SWEEP_LINE.match(m)]
        if len(finals) != 1:
            self.violation("1-exactly-once", job, f"{len(finals)} final-state lines in its log: {[m for *_x, m in finals]}")
            duplicated.add(job.id)
        if row["finished_at"] is None:
            self.violation("1-exactly-once", job, f"{row['status']} without finished_at")
        elif finals and abs(float(row["finished_at"]) - finals[-1][1]) > 10:
            self.violation("1-exactly-once", job, f"finished_at {row['finished_at']} far from its final line "
                                                  f"({finals[-1][1]}: {finals[-1][2]!r})")
        if row["status"] == "succeeded":
            outcome = "succeeded"
        elif row["status"] == "failed" and row["error_code"] == "ABANDONED":
            outcome = "abandoned"
            # lost on every attempt: max_attempts - 1 sweep requeues, then the abandon
            if row["attempt"] != row["max_attempts"] or len(sweeps) != row["max_attempts"] - 1:
                self.violation("1-exactly-once", job, f"ABANDONED after attempt {row['attempt']} of "
                                                      f"{row['max_attempts']} with {len(sweeps)} sweep requeue(s)")
        else:
            outcome = "wrong"
            self.violation("1-exactly-once", job, f"ended {row['status']} {row['error_code']}: {row['error_message']!r} "
                                                  f"(attempt {row['attempt']})")
        # the sequence of executions in the log: start, end, start, ..., final
        active = None          # (attempt, worker, at) of the execution the log says runs now
        last_end: tuple[float, str] | None = None
        final_seen = False
        for _i, at, message in lines:
            if m := START_LINE.match(message):
                if final_seen:
                    self.violation("2-single-execution", job, f"{message!r} after its final state")
                    duplicated.add(job.id)
                if active is not None:
                    self.violation("2-single-execution", job, f"{message!r} while attempt {active[0]} on {active[1]} "
                                                              f"(started {active[2]:.3f}) had not ended")
                    duplicated.add(job.id)
                if last_end is not None and at < last_end[0] - LOG_TOLERANCE:
                    self.violation("2-single-execution", job, f"{message!r} at {at:.3f}, before the previous "
                                                              f"execution ended ({last_end[1]!r} at {last_end[0]:.3f})")
                    duplicated.add(job.id)
                active = (int(m.group(1)), m.group(3), at)
            elif sm := SWEEP_LINE.match(message):
                pid = worker_pid(sm.group(1))
                if self.watcher.dead_at(pid, at) is False:
                    self.violation("2-single-execution", job, f"the sweep requeued it at {at:.3f} from worker "
                                                              f"{sm.group(1)}, whose process was alive then")
                    duplicated.add(job.id)
                active, last_end = None, (at, message)
            elif HANDBACK_LINE.match(message) or RETRY_LINE.search(message):
                active, last_end = None, (at, message)
            elif FINAL_LINE.match(message):
                active, last_end, final_seen = None, (at, message), True
        return outcome

    # invariant 2, download: the file server's fetches of the job's URL
    def _check_fetches(self, job: Job, row: dict, files: list[dict], duplicated: set) -> None:
        fetches = self.files.for_path(job.fetch)
        pairs = overlapping(fetches)
        if pairs:
            self.violation("2-single-execution", job, "two fetches at once: " + "; ".join(
                f"[{a.start:.2f}, {a.end}] and [{b.start:.2f}, {b.end}]" for a, b in pairs))
            duplicated.add(job.id)
        still = [f for f in fetches if f.end is None]
        if still:
            self.violation("2-single-execution", job, f"{len(still)} fetch(es) still streaming after the job ended "
                                                      f"{row['status']}")
            duplicated.add(job.id)
        if row["status"] == "succeeded":
            if not any(f.complete for f in fetches):
                self.violation("1-exactly-once", job, f"succeeded without a complete fetch: {[vars(f) for f in fetches]}")
            result = _json(row["result"]) or {}
            sizes = [f["size"] for f in files]
            if sizes != [result.get("size")]:
                self.violation("1-exactly-once", job, f"result size {result.get('size')} but registered files {files}")

    # invariant 2, crawl: which worker sent each request to the job's own site
    def _check_crawl(self, job: Job, duplicated: set) -> int:
        by_pid = job.site.by_sender()
        unattributed = len(by_pid.pop(None, []))
        spans = sorted((min(t for t, _p in hits), max(t for t, _p in hits), pid) for pid, hits in by_pid.items())
        for i, (a_first, a_last, a_pid) in enumerate(spans):
            for b_first, b_last, b_pid in spans[i + 1:]:
                if a_last > b_first + FETCH_TOLERANCE:
                    self.violation("2-single-execution", job, f"worker {a_pid} crawled until {a_last:.2f}, after worker "
                                                              f"{b_pid} began at {b_first:.2f}")
                    duplicated.add(job.id)
        for pid, hits in by_pid.items():
            robots = sum(p == "/robots.txt" for _t, p in hits)
            if robots > 1:  # the same worker crawled it twice: only the job log can tell them apart
                log(f"  note: worker {pid} crawled {job.id[:8]} {robots} times")
        return unattributed

    # invariant 2, sleep: the step lines of gunicorn's own log (not fenced: every execution's)
    def _check_steps(self, job: Job, lines: list[tuple[float, int, str]], duplicated: set) -> None:
        steps = sorted((at, pid, int(m.group(1))) for at, pid, message in lines if (m := STEP_LINE.match(message)))
        runs: list[list] = []   # [pid, first, last, last step]
        current: dict[int, list] = {}
        for at, pid, step in steps:
            run = current.get(pid)
            if run is None or step <= run[3]:   # the steps start again: another execution
                run = [pid, at, at, step]
                current[pid] = run
                runs.append(run)
            else:
                run[2], run[3] = at, step
        runs.sort(key=lambda r: r[1])
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                if a[2] > b[1] + LOG_TOLERANCE:
                    self.violation("2-single-execution", job, f"execution on pid {a[0]} logged step {a[3]} at {a[2]:.3f}, "
                                                              f"after the one on pid {b[0]} began at {b[1]:.3f}")
                    duplicated.add(job.id)

    # invariant 2, every kind: what processes logged on the job's thread, against the job log's starts
    def _check_process_lines(self, job: Job, lines, proc_lines, duplicated: set) -> None:
        """Once an execution started (its job log line "attempt N started on host:pid:x"), no
        process that ran the job before may log anything more for it."""
        starts = [(at, worker_pid(m.group(3))) for _i, at, message in lines if (m := START_LINE.match(message))]
        if not starts or not proc_lines:
            return
        flagged = set()
        for at, pid, message in sorted(proc_lines):
            current = [s for s in starts if s[0] <= at - LOG_TOLERANCE]
            if not current or current[-1][1] == pid:
                continue
            began = current[-1][0]
            # only a process that ran the job before that start (a later execution whose start
            # line was never written, being killed within a second, is not a stale one)
            earlier = any(p == pid for s_at, p in starts if s_at < began) or \
                any(p == pid and a < began - LOG_TOLERANCE for a, p, _m in proc_lines)
            if earlier and pid not in flagged:
                flagged.add(pid)
                self.violation("2-single-execution", job, f"pid {pid} logged {message!r} at {at:.3f}, after the "
                                                          f"execution on pid {current[-1][1]} started at {began:.3f}")
                duplicated.add(job.id)

    def _check_api(self, job: Job, row: dict, files: list[dict]) -> None:
        if not self.server.running():
            return
        view = self.server.job(job.id)
        if view["status"] != row["status"]:
            self.violation("1-exactly-once", job, f"API says {view['status']}, the database {row['status']}")
        listed = sorted((f["name"], f["size"]) for f in view["files"])
        if listed != sorted((f["name"], f["size"]) for f in files):
            self.violation("4-files", job, f"GET lists {listed}, job_files has {files}")

"""The chaos loop: a real gunicorn (3 workers x 2 job slots) running jobs of every kind while,
round after round, something goes wrong, and after each round the invariants are checked.

Per round (a seeded RNG decides everything; the seed is printed and saved):

1. submit a mix of jobs of EVERY kind the server knows (the driver asks the server for its list
   and refuses to run if a kind has no job in the mix):
     download  3 x from the SlowFileServer, 1-3 s each
     sleep     2 x 1.5-3 s in ~0.25 s steps, each step logged (log_steps), one writing a file
     crawl     1 x of its own small generated site (tests/crawl_site.py), 12 pages, delay 0.3 s,
               one connection at a time: ~4 s
     cefr      1 x a two-sentence text (CEFR_PRELOAD on, as in production: see settings())
     ocr       1 x a small generated PNG, engine tesseract (PaddleOCR builds a 1.5 GB engine in
               15-25 s per worker: far too slow and heavy for a loop that kills workers)
     report    2 x a generated XLSX (no OCR) and a generated PNG (tesseract)
   the uploads go as multipart POST /api/v1/jobs (parts kind, params, file);
2. at a random moment 0.2-2.5 s after the last submission, one fault:
     kill  SIGKILL of a random worker that runs a job (most rounds); sometimes a second SIGKILL
           4.5-7 s later, of a worker running a job already recovered once, so a job can be
           lost more often than its max_attempts and end ABANDONED
     term  SIGTERM of the master, wait for it to exit, start again on the same data and port
     hup   SIGHUP of the master (new workers, the old ones stop gracefully; the round goes on
           once the new ones run, and records how long the old ones took to exit)
     full  SIGKILL of the whole process group, start again on the same data and port
3. wait (bounded) until every job of the round is final, then check:
   (1) exactly once: every job is final, succeeded, or failed ABANDONED after exactly
       max_attempts lost workers (counted apart); its job log has exactly one final-state line
       and nothing started after it; finished_at, once seen, never changes and the job never
       leaves its final state (a monitor thread samples the jobs table 4 times a second);
   (2) never two live executions:
       - download: the SlowFileServer's fetches of the job's URL never overlap in time;
       - crawl: each crawl has its own site, which finds out which gunicorn worker sent every
         request (the client socket's owner in /proc); the requests of different workers
         never interleave;
       - sleep: the step lines in gunicorn's own log (unfenced, with pid and job id) of
         different executions never interleave;
       - every kind: in the job's log an attempt starts only after the previous attempt's end
         line (requeued by the sweep or handed back), and a sweep requeue names a worker whose
         process had already died (a process watcher records when each gunicorn pid went
         away): a lease never expires under a live worker; and once an attempt started, no
         process that ran the job before logs anything more on the job's thread (gunicorn's
         log is not fenced, so a stale execution shows there: a cefr job loading its model,
         a crash, ...). The job log alone cannot show a stale execution: its lines are
         dropped with its other writes.
   (3) while a server is up, no job stays `running` more than SWEEP_INTERVAL + LEASE_MARGIN
       past its lease (sampled by the monitor thread the whole round);
   (4) no orphan files under FILES_ROOT: a finished job's folder holds out/ only, with exactly
       its registered files (job_files, as GET /api/v1/jobs/<id> lists them) at their sizes;
       no tmp/ or partial (.part) files; no folder of an unknown job; every upload file has a
       row; incoming/ is empty; every registered file exists. Lock files left for finished
       jobs are reported (stale_lock_files) but are not a failure: the cron cleanup removes
       them and they hold no data.
   after a SIGTERM, also: the graceful stop left no job `running`.

Each round records: jobs, succeeded, abandoned, lost (must be 0), duplicates (must be 0),
interrupted (jobs the fault actually hit), the fault and its details, time to drain; the summary
goes to test-artifacts/reliability/chaos.json after every round.

    .venv/bin/python tests/integration/chaos.py --rounds 20 [--seed N] [--postgres] [--faults hup,kill]

tests/integration/test_chaos.py runs it under pytest. Loopback only; every wait is bounded; the
script kills the server's process group when it ends, whatever happened.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from gunicorn_harness import (TERMINAL, IlgunServer, SlowFileServer, group_members, log,  # noqa: E402
                              overlapping, pid_alive, wait_for)
from tests.crawl_site import CrawlSite  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "reliability"

LEASE = 3.0           # LEASE_SECONDS: recovery after a kill takes about this long
SWEEP = 0.5           # SWEEP_INTERVAL
GRACE = 6             # GRACEFUL_TIMEOUT: the job engine waits GRACE - 3 s, then hands jobs back
LEASE_MARGIN = 3.0    # invariant 3: tolerated lag of the sweep behind an expired lease, beyond SWEEP
DRAIN_TIMEOUT = 90.0  # seconds a round waits for its jobs to finish
LOG_TOLERANCE = 0.05  # seconds: clock slack when comparing times written on one host
FETCH_TOLERANCE = 0.3 # seconds: crawl requests of two workers closer than this are not counted
CRAWL_DELAY = 0.3
CRAWL_PAGES = 12
SLEEP_STEP = 0.25

FAULTS = ("kill", "term", "hup", "full")
FINAL_LINE = re.compile(r"^(succeeded in |failed |cancelled)")
START_LINE = re.compile(r"^attempt (\d+) of (\d+) started on (\S+)")
SWEEP_LINE = re.compile(r"^requeued: worker (\S+) stopped responding")
HANDBACK_LINE = re.compile(r"^handed back: ")
RETRY_LINE = re.compile(r"\(retrying in [0-9.]+s\)$")
STEP_LINE = re.compile(r"^step (\d+) of (\d+) done$")


def settings(cefr_preload: bool = True) -> dict[str, str]:
    """What the chaos server runs with, on top of the harness's BASE_SETTINGS. CEFR_PRELOAD is
    on, as in production (the harness turns it off to start faster): without it every new
    worker loads the model inside its first cefr job, 5-45 s on a busy 2-core host."""
    return {"LEASE_SECONDS": str(LEASE), "SWEEP_INTERVAL": str(SWEEP), "GRACEFUL_TIMEOUT": str(GRACE),
            "CEFR_PRELOAD": "1" if cefr_preload else "0"}


def schedule(rounds: int, rng: random.Random) -> list[str]:
    """Faults for ``rounds`` rounds: mostly kills; term, hup and full each at least once from 4
    rounds on (with 2-3 rounds: a kill and 1-2 of the others, picked by the seed)."""
    if rounds <= 0:
        return []
    others = ["term", "hup", "full"]
    if rounds < 4:
        plan = ["kill"] + rng.sample(others, rounds - 1)
    else:
        n_other = max(3, round(rounds * 0.35))
        plan = [others[i % 3] for i in range(n_other)] + ["kill"] * (rounds - n_other)
    rng.shuffle(plan)
    return plan


def worker_pid(worker_id: str | None) -> int | None:
    """The pid in a dispatcher's worker id (host:pid:hex)."""
    try:
        return int(str(worker_id).split(":")[-2])
    except (IndexError, ValueError):
        return None


def _ids_sql(ids) -> str:
    return ",".join(f"'{uuid.UUID(str(i))}'" for i in ids) or "''"


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


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


def socket_owner(client_port: int, server_port: int, candidates) -> int | None:
    """The pid among ``candidates`` holding the client end of the loopback TCP connection
    client_port -> server_port (from /proc/net/tcp and the candidates' fd tables)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == client_port and int(remote.rsplit(":", 1)[1], 16) == server_port:
                inode = fields[9]
                break
        if inode:
            break
    if not inode or inode == "0":
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


class TracedSite(CrawlSite):
    """A CrawlSite that records, for every request, when it came and which process sent it."""

    def __init__(self, candidates, **kw):
        super().__init__(**kw)
        self.hits: list[tuple[float, int | None, str]] = []
        self._hits_lock = threading.Lock()
        site, base = self, self.httpd.RequestHandlerClass

        class Traced(base):
            def do_GET(self):
                if not hasattr(self, "_sender"):  # one handler per connection: look it up once
                    try:
                        self._sender = socket_owner(self.client_address[1], site.port, candidates())
                    except Exception:  # noqa: BLE001
                        self._sender = None
                with site._hits_lock:
                    site.hits.append((time.time(), self._sender, self.path))
                super().do_GET()

        self.httpd.RequestHandlerClass = Traced

    def by_sender(self) -> dict[int | None, list[tuple[float, str]]]:
        out: dict[int | None, list[tuple[float, str]]] = {}
        with self._hits_lock:
            for at, pid, path in self.hits:
                out.setdefault(pid, []).append((at, path))
        return out


# --- samples -----------------------------------------------------------------------------------

def png_bytes(lines) -> bytes:
    from service.ocr import samples
    buf = io.BytesIO()
    samples.text_image(lines).save(buf, "PNG")
    return buf.getvalue()


def xlsx_bytes(round_no: int) -> bytes:
    from openpyxl import Workbook
    wb = Workbook()
    ws = wb.active
    ws.title = "Sales"
    ws.append(["Date", "Item", "Qty", "Price"])
    for i in range(8):
        ws.append([f"2025-0{1 + i % 9}-1{i}", f"item {round_no}-{i}", i + round_no, round(1.5 * i + 0.25, 2)])
    notes = wb.create_sheet("Notes")
    notes.append([f"Invoice No. INV-2025-{round_no:04d}"])
    notes.append(["Total: $1,234.56"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


# --- bookkeeping -----------------------------------------------------------------------------

@dataclass
class Job:
    id: str
    kind: str
    round: int
    fetch: str | None = None           # download: the SlowFileServer path
    site: TracedSite | None = None     # crawl: its own site
    checked: bool = False


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
            f"WHERE id IN ({_ids_sql(jobs)})")
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


# --- the loop --------------------------------------------------------------------------------

class Chaos:
    def __init__(self, server: IlgunServer, files: SlowFileServer, rounds: int, seed: int | None = None,
                 out: Path | None = ARTIFACTS / "chaos.json", faults: list[str] | None = None,
                 drain_timeout: float = DRAIN_TIMEOUT):
        self.server, self.files = server, files
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1, 2 ** 31)
        self.rng = random.Random(self.seed)              # the plan, the mix, the moments
        self.victims = random.Random(self.seed ^ 0x5EED)  # which worker: depends on who is busy
        self.plan = list(faults) if faults else schedule(rounds, self.rng)
        assert all(f in FAULTS for f in self.plan), self.plan
        self.out = Path(out) if out else None
        self.drain_timeout = drain_timeout
        self.jobs: dict[str, Job] = {}
        self.records: list[RoundRecord] = []
        self.violations: list[Violation] = []
        self.up_since: float | None = None
        self.leaving: set[int] = set()   # old workers still exiting after a HUP
        self.port: int | None = None
        self.round_no = 0
        self.sites: list[TracedSite] = []
        self.watcher = ProcessWatcher(server)
        self.monitor = StateMonitor(self)
        self._vlock = threading.Lock()
        self.started = time.time()
        self.kinds: list[str] = []

    # -- reporting ------------------------------------------------------------------------
    def violation(self, invariant: str, job: Job | None, detail: str) -> None:
        v = Violation(self.round_no, invariant, job.id if job else None, job.kind if job else None, detail)
        with self._vlock:
            self.violations.append(v)
        log(f"VIOLATION [{invariant}] {v.kind or ''} {v.job or ''}: {detail}")

    def summary(self) -> dict:
        keys = ("jobs", "succeeded", "abandoned", "lost", "progressing", "duplicates", "interrupted",
                "stale_lock_files", "unattributed_crawl_requests")
        totals = {k: sum(getattr(r, k) for r in self.records) for k in keys}
        totals["rounds"] = len(self.records)
        totals["violations"] = len(self.violations)
        totals["faults"] = {f: sum(r.fault == f for r in self.records) for f in FAULTS}
        totals["double_kills"] = sum(bool(r.fault_detail.get("second_kill")) for r in self.records)
        drains = [r.drain_seconds for r in self.records if r.drain_seconds is not None]
        totals["max_drain_seconds"] = round(max(drains), 2) if drains else None
        return {
            "seed": self.seed, "plan": self.plan, "database": "postgresql" if self.server.on_postgres else "sqlite",
            "kinds": self.kinds, "settings": {k: v for k, v in self.server.settings.items() if k != "DATABASE_URL"},
            "started_at": datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self.started, 1),
            "monitor": {"samples": self.monitor.samples, "errors": self.monitor.errors,
                        "last_error": self.monitor.last_error},
            "totals": totals,
            "rounds": [{**{k: v for k, v in vars(r).items()}} for r in self.records],
            "violations": [v.as_dict() for v in self.violations],
        }

    def write_summary(self) -> dict:
        data = self.summary()
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, self.out)
        return data

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

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        log(f"chaos: seed {self.seed}, {len(self.plan)} round(s): {' '.join(self.plan)} "
            f"({'PostgreSQL' if self.server.on_postgres else 'SQLite'})")
        self.watcher.start()
        try:
            if not self.server.running():
                self._start_server()
            else:
                self.port = self.server.port
                self.up_since = time.time()
            self.kinds = self._server_kinds()
            self.monitor.start()
            for i, fault in enumerate(self.plan, 1):
                self.round_no = i
                record = self._round(i, fault)
                self.records.append(record)
                self.write_summary()
                log(f"round {i}/{len(self.plan)} {fault:<4} {self._fault_text(record)}: jobs {record.jobs}, "
                    f"succeeded {record.succeeded}, abandoned {record.abandoned}, lost {record.lost}, "
                    f"duplicates {record.duplicates}, interrupted {record.interrupted}, "
                    f"drain {record.drain_seconds}s, violations {len(record.violations)}")
            pending = [j for j in self.jobs.values() if not j.checked]
            if pending:  # jobs still progressing at the end of the last round
                self.round_no = len(self.plan) + 1
                record = RoundRecord(self.round_no, "none (final drain)")
                self._drain_and_check(record, pending, time.time(), final=True)
                self.records.append(record)
        finally:
            self.monitor.stop()
            self.watcher.stop()
            for site in self.sites:
                site.close()
            self.sites.clear()
        data = self.write_summary()
        t = data["totals"]
        log(f"chaos summary: seed {self.seed}, {t['rounds']} round(s), {t['jobs']} jobs, succeeded {t['succeeded']}, "
            f"abandoned {t['abandoned']}, lost {t['lost']}, duplicates {t['duplicates']}, interrupted "
            f"{t['interrupted']}, violations {t['violations']}, wall {data['wall_seconds']}s"
            + (f" -> {self.out}" if self.out else ""))
        return data

    @staticmethod
    def _fault_text(r: RoundRecord) -> str:
        d = r.fault_detail
        if r.fault == "kill":
            text = f"pid {d.get('victim')} +{r.fault_at}s ({len(d.get('victim_jobs', []))} job(s))"
            if d.get("second_kill"):
                text += f" + pid {d['second_kill'].get('victim')}"
            return text
        return f"+{r.fault_at}s, took {d.get('seconds', '?')}s"

    def _server_kinds(self) -> list[str]:
        """Every kind the server knows, from the error an unknown kind gets."""
        r = self.server.call("POST", "/api/v1/jobs", {"kind": "__chaos_probe__", "params": {}},
                             token=self.server.admin_token)
        assert r.status == 404 and r.body.get("error_code") == "UNKNOWN_KIND", r
        kinds = sorted(r.body["details"]["kinds"])
        missing = sorted(set(kinds) - set(MIX_KINDS))
        assert not missing, f"the chaos mix has no job of kind(s) {missing}: add them to Chaos._submit_mix"
        return kinds

    # -- one round ------------------------------------------------------------------------
    def _round(self, no: int, fault: str) -> RoundRecord:
        record = RoundRecord(no, fault)
        t0 = time.time()
        self._wait_workers()
        token = self.server.register(f"chaos-{uuid.uuid4().hex[:8]}-r{no}")
        todo = self._mix(no)
        t_submit = time.time()
        new = self._submit_mix(no, token, todo)
        submitted = time.time()
        record.submit_seconds = round(submitted - t_submit, 2)
        record.jobs = len(new)
        record.by_kind = {k: sum(j.kind == k for j in new) for k in sorted({j.kind for j in new})}
        time.sleep(self.rng.uniform(0.2, 2.5))
        record.fault_at = round(time.time() - submitted, 2)   # seconds after the last submission
        fault_started = time.time()
        getattr(self, f"_fault_{fault}")(record)
        carried = [j for j in self.jobs.values() if not j.checked and j.round < no]
        self._drain_and_check(record, new + carried, fault_started)
        if fault in ("hup", "term"):
            self._old_workers_report(record)
        record.round_seconds = round(time.time() - t0, 2)
        return record

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

    def _mix(self, no: int) -> list[tuple[str, object]]:
        """This round's jobs, in submission order, with their uploads made beforehand (so the
        submissions take a second, not several)."""
        rng = self.rng
        todo: list[tuple[str, object]] = [("download", round(rng.uniform(1.0, 3.0), 2)) for _ in range(3)]
        todo += [("sleep", (round(rng.uniform(1.5, 3.0), 2), i == 0)) for i in range(2)]
        todo += [("crawl", None), ("cefr", None),
                 ("ocr", png_bytes([f"Chaos round {no}", f"check {rng.randrange(10 ** 6)}"])),
                 ("report", ("book.xlsx", xlsx_bytes(no))),
                 ("report", ("receipt.png", png_bytes([f"Invoice No. INV-{no:04d}-{rng.randrange(1000)}",
                                                       "Total: $1,234.56"])))]
        rng.shuffle(todo)
        return todo

    def _submit_mix(self, no: int, token: str, todo: list[tuple[str, object]]) -> list[Job]:
        jobs = []
        for kind, arg in todo:
            if kind == "download":
                name = f"chaos-r{no}-{uuid.uuid4().hex[:12]}"
                job = Job(self.server.submit(token, "download", {"url": self.files.url(name, arg)}), kind, no, fetch=name)
            elif kind == "sleep":
                duration, write = arg
                params = {"duration": duration, "steps": max(2, round(duration / SLEEP_STEP)), "log_steps": True}
                if write:
                    params["write_file"] = True
                job = Job(self.server.submit(token, "sleep", params), kind, no)
            elif kind == "crawl":
                site = TracedSite(self.watcher.candidates)
                self.sites.append(site)
                params = {"url": site.url("/"), "max_depth": 2, "max_pages": CRAWL_PAGES, "delay": CRAWL_DELAY,
                          "concurrency": 1}
                job = Job(self.server.submit(token, "crawl", params), kind, no, site=site)
            elif kind == "cefr":
                text = (f"I like my cat and she likes round {no}. The committee's equivocal stance on "
                        f"the {self.rng.randrange(1000)} proposals remains contentious among economists.")
                job = Job(self.server.submit(token, "cefr", {"text": text}), kind, no)
            elif kind == "ocr":
                job = Job(self._submit_upload(token, "ocr", {"engine": "tesseract"}, "page.png", arg, "image/png"),
                          kind, no)
            else:
                name, content = arg
                if name.endswith(".xlsx"):
                    params = {"ocr": False}
                    ctype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
                else:
                    params, ctype = {"engine": "tesseract"}, "image/png"
                job = Job(self._submit_upload(token, "report", params, name, content, ctype), kind, no)
            self.jobs[job.id] = job
            jobs.append(job)
        return jobs

    def _submit_upload(self, token: str, kind: str, params: dict, filename: str, content: bytes,
                       content_type: str) -> str:
        """Multipart POST /api/v1/jobs (parts kind, params, file); retried with the same
        Idempotency-Key if the connection drops."""
        import requests
        key = uuid.uuid4().hex
        with requests.Session() as session:
            session.trust_env = False  # no proxy for loopback
            for attempt in range(4):
                try:
                    r = session.post(f"http://127.0.0.1:{self.server.port}/api/v1/jobs", timeout=30,
                                     headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key,
                                              "Connection": "close"},
                                     data={"kind": kind, "params": json.dumps(params)},
                                     files={"file": (filename, content, content_type)})
                except requests.ConnectionError:
                    if attempt == 3:
                        raise
                    time.sleep(0.3 * (attempt + 1))
                    continue
                assert r.status_code in (200, 202), (r.status_code, r.text[:500])
                return r.json()["data"]["id"]
        raise AssertionError("unreachable")

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

    # -- drain and check ------------------------------------------------------------------
    def _drain_and_check(self, record: RoundRecord, jobs: list[Job], since: float, final: bool = False) -> None:
        ids = [j.id for j in jobs]
        deadline = time.monotonic() + self.drain_timeout
        rows = {}
        while True:
            rows = {r["id"]: r for r in self.server._select(f"SELECT * FROM jobs WHERE id IN ({_ids_sql(ids)})")}
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
        for r in self.server._select(f"SELECT job_id, id, at, message FROM job_logs WHERE job_id IN ({_ids_sql(ids)}) "
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

    # invariant 4: the files root
    def _check_files(self) -> int:
        root = self.server.files_root
        jobs = {r["id"]: r for r in self.server._select("SELECT id, owner_id, kind, status FROM jobs")}
        registered = self._job_files()
        uploads = {r["id"] for r in self.server._select("SELECT id FROM uploads")}
        problems: list[tuple[str | None, str]] = []
        stale_locks = 0
        if not root.is_dir():
            return 0
        for entry in sorted(root.iterdir()):
            if entry.name not in ("users", "incoming", "locks"):
                problems.append((None, f"unexpected {entry.relative_to(root)}"))
        incoming = root / "incoming"
        if incoming.is_dir():
            for p in sorted(incoming.rglob("*")):
                problems.append((None, f"partial upload left: {p.relative_to(root)}"))
        seen_jobs: set[str] = set()
        for user in sorted((root / "users").glob("*")) if (root / "users").is_dir() else []:
            for entry in sorted(user.iterdir()):
                if entry.name not in ("jobs", "uploads"):
                    problems.append((None, f"unexpected {entry.relative_to(root)}"))
            for up in sorted((user / "uploads").glob("*")) if (user / "uploads").is_dir() else []:
                if up.name not in uploads:
                    problems.append((None, f"upload file without a row: {up.relative_to(root)}"))
            for job_dir in sorted((user / "jobs").glob("*")) if (user / "jobs").is_dir() else []:
                row = jobs.get(job_dir.name)
                if row is None:
                    problems.append((None, f"folder of an unknown job: {job_dir.relative_to(root)} "
                                           f"{[str(p.relative_to(job_dir)) for p in job_dir.rglob('*')]}"))
                    continue
                seen_jobs.add(job_dir.name)
                if str(row["owner_id"]) != user.name:
                    problems.append((row["id"], f"job folder under user {user.name}, owner {row['owner_id']}"))
                if row["status"] not in TERMINAL:
                    continue  # running or queued: its folder is work in progress
                names = {f["name"]: f["size"] for f in registered.get(row["id"], [])}
                if not names:
                    problems.append((row["id"], f"{row['status']} job with no registered file keeps a folder: "
                                                f"{[str(p.relative_to(job_dir)) for p in job_dir.rglob('*')]}"))
                    continue
                for child in sorted(job_dir.iterdir()):
                    if child.name != "out":
                        problems.append((row["id"], f"{row['status']} job keeps {child.name}/: "
                                                    f"{[str(p.relative_to(job_dir)) for p in child.rglob('*')]}"))
                out = job_dir / "out"
                present = {p.name: p.stat().st_size for p in out.iterdir()} if out.is_dir() else {}
                for name in sorted(set(present) - set(names)):
                    problems.append((row["id"], f"unregistered file out/{name}"))
                for name, size in sorted(names.items()):
                    if name not in present:
                        problems.append((row["id"], f"registered file out/{name} is missing"))
                    elif present[name] != size:
                        problems.append((row["id"], f"out/{name} has {present[name]} bytes, registered {size}"))
        for job_id, files in registered.items():
            if job_id not in seen_jobs and job_id in jobs:
                problems.append((job_id, f"registered files {[f['name'] for f in files]} but no folder"))
        locks = root / "locks"
        for lock in sorted(locks.glob("*")) if locks.is_dir() else []:
            row = jobs.get(lock.stem)
            if row is None or row["status"] in TERMINAL:
                stale_locks += 1
        for job_id, text in problems:
            job = self.jobs.get(job_id) if job_id else None
            if job_id and job is None:
                job = Job(job_id, jobs.get(job_id, {}).get("kind"), 0)
            self.violation("4-files", job, text)
        return stale_locks


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


MIX_KINDS = ("download", "sleep", "crawl", "cefr", "ocr", "report")


# --- the script ------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--faults", help="a fixed comma-separated schedule instead of the seeded one, e.g. kill,term")
    ap.add_argument("--postgres", action="store_true",
                    help="run on a fresh database of the local PostgreSQL (tests/integration/pg_support.py)")
    ap.add_argument("--out", default=str(ARTIFACTS / "chaos.json"))
    ap.add_argument("--keep", action="store_true", help="keep the data folder even when every check passed")
    ap.add_argument("--cefr-preload", type=int, choices=(0, 1), default=1,
                    help="0: every worker loads the CEFR model inside its first cefr job (a long step "
                         "that does not stop when asked)")
    args = ap.parse_args(argv)
    if args.seed is None and os.environ.get("ILGUN_CHAOS_SEED"):
        args.seed = int(os.environ["ILGUN_CHAOS_SEED"])
    import contextlib
    import shutil
    with contextlib.ExitStack() as stack:
        extra = {}
        if args.postgres:
            from pg_support import fresh_database
            extra["DATABASE_URL"] = stack.enter_context(fresh_database("ilgun_chaos"))
        data = Path(tempfile.mkdtemp(prefix="ilgun-chaos-"))
        log(f"data folder {data}")
        server = IlgunServer(data, {**settings(bool(args.cefr_preload)), **extra}, name="chaos")
        files = SlowFileServer().start()
        stack.callback(files.stop)
        stack.callback(server.kill_group)   # runs first: the servers go before the database
        server.prepare()
        chaos = Chaos(server, files, args.rounds, seed=args.seed, out=Path(args.out),
                      faults=args.faults.split(",") if args.faults else None)
        summary = chaos.run()
        t = summary["totals"]
        ok = not summary["violations"] and t["lost"] == 0 and t["duplicates"] == 0
        if ok and not args.keep:
            server.kill_group()
            shutil.rmtree(data, ignore_errors=True)
        else:
            log(f"data folder kept: {data}")
        for v in summary["violations"][:30]:
            print(json.dumps(v), file=sys.stderr)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

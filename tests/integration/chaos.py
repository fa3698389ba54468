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

This module is the driver (the rounds, the CLI, the summary); the rest is beside it:
chaos_jobs.py the job mix, chaos_faults.py the faults, chaos_checks.py and chaos_file_checks.py
the checks after each round, chaos_watchers.py the process watcher and the jobs-table monitor,
chaos_settings.py the times and tolerances.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# the modules of the loop, beside this one (they need the paths above: import them after)
from chaos_checks import InvariantChecks, RoundRecord, Violation  # noqa: E402
from chaos_faults import ServerFaults  # noqa: E402
from chaos_file_checks import FilesRootCheck  # noqa: E402
from chaos_jobs import Job, JobMix, TracedSite  # noqa: E402
from chaos_settings import DRAIN_TIMEOUT, settings  # noqa: E402,F401 (test_chaos.py: chaos.settings())
from chaos_watchers import ProcessWatcher, StateMonitor  # noqa: E402
from gunicorn_harness import IlgunServer, SlowFileServer, log  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "reliability"

FAULTS = ("kill", "term", "hup", "full")


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


# --- the loop --------------------------------------------------------------------------------

class Chaos(JobMix, ServerFaults, InvariantChecks, FilesRootCheck):
    """The loop: its rounds here, their parts in the mixins (the job mix, the server and its
    faults, the checks after each round), with the two samplers of chaos_watchers."""

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

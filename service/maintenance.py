"""The cron-driven cleanup (scripts/cleanup): expired jobs and their files, orphaned folders,
stale partial and lock files, expired token-blocklist and rate-limit rows, per-user disk usage,
and the database's own upkeep. Free of Flask; safe while gunicorn serves:

- it never touches a queued or running job (only final states past their TTL are deleted,
  each through JobStore.delete, which refuses anything running);
- a job folder is only removed while holding that job's lock without waiting (a folder whose
  lock is held belongs to a running execution and is skipped);
- only one cleanup runs at a time (a lock file in ILGUN_DATA; a second run exits with 2).

    python -m service.maintenance [--dry-run] [--vacuum] [--verbose]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import sqlalchemy as sa
from filelock import FileLock, Timeout

from service.store import ratelimit
from service.store.jobs import ACTIVE, JobStore
from service.store.uploads import UploadStore
from service.store.users import UserStore
from service.workspace import Workspace

EXIT_OK, EXIT_ERRORS, EXIT_BUSY = 0, 1, 2


@dataclass
class Report:
    dry_run: bool
    deleted_jobs: int = 0
    deleted_uploads: int = 0
    freed_bytes: int = 0
    removed_paths: int = 0
    tokens: int = 0
    rate_limits: int = 0
    over_quota: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def item(self, what: str, size: int = 0) -> None:
        self.freed_bytes += size
        self.lines.append(f"{'would delete' if self.dry_run else 'deleted'} {what} ({_human(size)})")

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (f"cleanup{' (dry run)' if self.dry_run else ''}: {self.deleted_jobs} expired job(s), "
                f"{self.deleted_uploads} expired upload(s), "
                f"{self.removed_paths} stale path(s), {verb} {_human(self.freed_bytes)}; "
                f"{self.tokens} revoked token(s) and {self.rate_limits} rate-limit counter(s) expired; "
                f"{len(self.over_quota)} user(s) over quota; {len(self.errors)} error(s)")


class Cleanup:
    def __init__(self, config: Mapping[str, Any], engine: sa.Engine, workspace: Workspace, clock=time.time):
        self.config, self.engine, self.workspace, self.clock = config, engine, workspace, clock
        self.jobs = JobStore(engine)
        self.users = UserStore(engine)
        self.uploads = UploadStore(engine)

    def run(self, dry_run: bool = False, vacuum: bool = False) -> Report:
        report = Report(dry_run)
        for step in (self._expired_jobs, self._expired_uploads, self._orphan_folders, self._stale_locks, self._expired_rows,
                     self._disk_usage, lambda r: self._database_upkeep(r, vacuum)):
            try:
                step(report)
            except Exception as exc:  # noqa: BLE001 - report it, go on with the other steps
                report.errors.append(f"{getattr(step, '__name__', 'step')}: {type(exc).__name__}: {exc}")
        return report

    # -- jobs past their result TTL -------------------------------------------------------
    def _expired_jobs(self, report: Report) -> None:
        now = self.clock()
        ttl = self.config["RESULT_TTL_DAYS"]
        for job in self.jobs.finished_before({status: now - days * 86400 for status, days in ttl.items()}):
            size = _tree_size(self.workspace.job_dir(job["owner_id"], job["id"]))
            if not report.dry_run:
                if self.jobs.delete(job["id"], None, expect_status=job["status"]) is None:
                    continue  # retried meanwhile: queued again, not ours
                self.workspace.remove_job(job["owner_id"], job["id"], lock_timeout=0)
            report.item(f"job {job['id']} ({job['status']}, user {job['owner_id']})", size)
            report.deleted_jobs += 1

    # -- uploads past UPLOAD_TTL_DAYS that no queued or running job reads; stale upload files --
    def _expired_uploads(self, report: Report) -> None:
        now = self.clock()
        in_use = self.jobs.active_file_ids()
        for row in self.uploads.created_before(now - float(self.config["UPLOAD_TTL_DAYS"]) * 86400):
            if row["id"] in in_use:
                continue
            path = self.workspace.upload_path(row["owner_id"], row["id"])
            size = path.stat().st_size if path.is_file() else 0
            if not report.dry_run:
                self.uploads.delete(row["id"], None)
                path.unlink(missing_ok=True)
            report.item(f"upload {row['id']} ({row['name']}, user {row['owner_id']})", size)
            report.deleted_uploads += 1
        cutoff = now - self.config["CLEANUP_GRACE_SECONDS"]
        # an upload a killed worker was receiving; a live one is written to, so its mtime is fresh
        stale = [p for p in sorted(self.workspace.incoming_dir().glob("*.part")) if p.stat().st_mtime < cutoff]
        # a stored file whose record is gone (a crash between the two)
        stale += [p for p in sorted((self.workspace.root / "users").glob("*/uploads/*"))
                  if _is_uuid(p.name) and p.stat().st_mtime < cutoff and not self.uploads.exists(p.name)]
        for path in stale:
            report.item(f"stale upload file {path.relative_to(self.workspace.root)}", path.stat().st_size)
            report.removed_paths += 1
            if not report.dry_run:
                path.unlink(missing_ok=True)

    # -- folders no job references, and partial files of jobs that are not running --------
    def _orphan_folders(self, report: Report) -> None:
        cutoff = self.clock() - self.config["CLEANUP_GRACE_SECONDS"]
        users_root = self.workspace.root / "users"
        if not users_root.is_dir():
            return
        for job_dir in sorted(users_root.glob("*/jobs/*")):
            job_id = job_dir.name
            if not _is_uuid(job_id) or _newest_mtime(job_dir) > cutoff:
                continue
            status = self.jobs.status_of(job_id)
            if status in ACTIVE:
                continue
            target = job_dir if status is None else job_dir / "tmp"   # a finished job keeps out/
            if target.exists():
                kind = "orphan folder" if status is None else "partial files"
                self._remove_locked(job_id, target, f"{kind} {target.relative_to(self.workspace.root)}", report,
                                    forget_lock=status is None)

    def _stale_locks(self, report: Report) -> None:
        cutoff = self.clock() - self.config["CLEANUP_GRACE_SECONDS"]
        locks = self.workspace.root / "locks"
        if not locks.is_dir():
            return
        for lock_file in sorted(locks.glob("*.lock")):
            job_id = lock_file.stem
            if not _is_uuid(job_id) or lock_file.stat().st_mtime > cutoff:
                continue
            if self.jobs.status_of(job_id) not in ACTIVE:
                self._remove_unlocked(FileLock(str(lock_file)), lock_file,
                                      f"lock file {lock_file.relative_to(self.workspace.root)}", report)

    def _remove_locked(self, job_id: str, path: Path, what: str, report: Report, forget_lock: bool) -> None:
        """Remove a job's folder (or part of it) under the job's own lock."""
        if self._remove_unlocked(self.workspace.job_lock(job_id), path, what, report) and forget_lock:
            self.workspace.forget_job_lock(job_id)  # no job, no execution: its lock file can go

    @staticmethod
    def _remove_unlocked(lock, path: Path, what: str, report: Report) -> bool:
        """Remove ``path`` while holding ``lock``, taken without waiting: a held lock means an
        execution owns the path, which is then skipped. A dry run only reports (taking a file
        lock would create its file). True if the path was removed."""
        if report.dry_run:
            report.item(what, _tree_size(path))
            report.removed_paths += 1
            return False
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        try:
            report.item(what, _tree_size(path))
            report.removed_paths += 1
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        finally:
            lock.release()
        return True

    # -- rows that only keep tables small -------------------------------------------------
    def _expired_rows(self, report: Report) -> None:
        if report.dry_run:
            report.tokens = self.users.count_expired_tokens()
            report.rate_limits = ratelimit.count_expired(self.engine)
            return
        report.tokens = self.users.purge_expired_tokens()
        report.rate_limits = ratelimit.purge_expired(self.engine)

    # -- usage ----------------------------------------------------------------------------
    def _disk_usage(self, report: Report) -> None:
        quota = int(self.config["USER_DISK_QUOTA_BYTES"])
        users_root = self.workspace.root / "users"
        if not users_root.is_dir():
            return
        for user_dir in sorted(users_root.iterdir(), key=lambda p: p.name):
            if user_dir.name.isdigit():
                used = _tree_size(user_dir)
                if used > quota:
                    report.over_quota.append((int(user_dir.name), used))
                    report.lines.append(f"user {user_dir.name} uses {_human(used)}, over the quota of {_human(quota)}")

    def _database_upkeep(self, report: Report, vacuum: bool) -> None:
        if report.dry_run:
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA optimize")
                if vacuum:
                    conn.exec_driver_sql("VACUUM")
            else:
                conn.exec_driver_sql("VACUUM ANALYZE" if vacuum else "ANALYZE")


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _tree_size(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _newest_mtime(path: Path) -> float:
    return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")])


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cleanup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list what would go, with sizes; change nothing")
    parser.add_argument("--vacuum", action="store_true", help="also VACUUM the database (rewrites it: weekly)")
    parser.add_argument("--verbose", action="store_true", help="print every item, not only the summary")
    args = parser.parse_args(argv)

    from service import create_app   # the app's settings and stores; no dispatcher starts
    app = create_app()
    service = app.extensions["ilgun"]
    try:
        with FileLock(os.path.join(app.config["ILGUN_DATA"], "cleanup.lock"), timeout=0):
            report = Cleanup(app.config, service.engine, service.workspace).run(dry_run=args.dry_run,
                                                                                vacuum=args.vacuum)
    except Timeout:
        print("cleanup: another cleanup is running; nothing done", file=sys.stderr)
        return EXIT_BUSY
    if args.verbose or args.dry_run:
        for line in report.lines:
            print(line)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    print(report.summary())
    service.engine.dispose()
    return EXIT_ERRORS if report.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

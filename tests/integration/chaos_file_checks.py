"""Invariant 4 of the chaos loop (FilesRootCheck, mixed into chaos.Chaos): no orphan files under
FILES_ROOT. A finished job's folder holds out/ only, with exactly its registered files at their
sizes; no tmp/ or partial files, no folder of an unknown job, every upload file has a row,
incoming/ is empty, every registered file exists. Stale lock files are counted, not failed."""
from __future__ import annotations

from chaos_jobs import Job
from gunicorn_harness import TERMINAL


class FilesRootCheck:
    """The Chaos method that checks the files root (self.server, self.jobs, self._job_files() and
    self.violation() are the Chaos object's)."""

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

"""How many gunicorn workers, threads per worker and job executor threads to run on this machine.

``gunicorn.conf.py`` calls :func:`choose_profile`; ``python -m service.profile [--json]`` shows
what it would choose and why. No Flask imports: this runs in the gunicorn master before any app.

Profiles:

* ``small`` (1 core): 1 worker x 4 threads, MAX_WORKERS 3. One process avoids paying the
  per-process memory twice on a tiny box; the threads keep slow requests from blocking others.
* ``medium`` (2 cores): 3 workers x 2 threads, MAX_WORKERS 2.
* ``large`` (more than 2 cores): 2N+1 workers x 2 threads, MAX_WORKERS 2, with the worker
  count capped by available memory (see :data:`PER_WORKER_MEMORY_BYTES`).

MAX_WORKERS is the number of job executor threads each gunicorn worker runs, so the machine
runs ``workers x MAX_WORKERS`` jobs at once.

``ILGUN_PROFILE=small|medium|large|auto`` forces a profile (``auto``, the default, picks by
cores). ``WEB_CONCURRENCY``, ``THREADS`` and ``MAX_WORKERS`` override single numbers.

Containers: the CPU affinity mask covers taskset and cpuset limits but not a CFS quota
(``docker --cpus``, Kubernetes CPU limits), and /proc/meminfo shows the host's memory, not the
container's limit. Both cgroup v2 limits are therefore read too and the smaller value wins.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Mapping

MIB = 1024 * 1024
GIB = 1024 * MIB

# Memory budgeted per gunicorn worker when sizing the large profile. A worker is a full
# interpreter with Flask, SQLAlchemy and the job kinds imported (roughly 100-150 MiB resident)
# plus its in-process job engine, whose MAX_WORKERS executor threads hold the working data of
# the jobs they run. 512 MiB covers the baseline with room for two ordinary jobs; memory-hungry
# job kinds need fewer workers (set WEB_CONCURRENCY) rather than a larger constant here.
PER_WORKER_MEMORY_BYTES = 512 * MIB
# What one PaddleOCR engine process takes at its peak beside the workers (bench/ocr.py: 1.3-1.8 GB
# PSS, up to 2 GB RSS). The ocr kind runs as many jobs at once as there are cores, one engine
# process each; the profile says what that needs and, where memory is short, the limit to set.
OCR_ENGINE_MEMORY_BYTES = 1792 * MIB

PROFILE_NAMES = ("small", "medium", "large")
# Environment variables that replace one number of the chosen profile.
OVERRIDE_VARIABLES = {"workers": "WEB_CONCURRENCY", "threads": "THREADS", "max_workers": "MAX_WORKERS"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO_PATH = Path("/proc/meminfo")


@dataclasses.dataclass
class Profile:
    name: str
    workers: int
    threads: int
    max_workers: int
    reasons: list[str]


# --- reading settings -------------------------------------------------------------------------

def env_int(env: Mapping[str, str], name: str, default: int | None, *, minimum: int = 1) -> int | None:
    """``env[name]`` as an int of at least ``minimum``; ``default`` when unset or blank.

    Raises ValueError naming the variable, so a typo in a deployment fails at start-up with a
    message that says which setting to fix.
    """
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {raw!r}")
    return value


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _format_bytes(amount: int) -> str:
    return f"{amount / GIB:.1f} GiB" if amount >= GIB else f"{amount // MIB} MiB"


# --- detecting the machine --------------------------------------------------------------------

def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """Whole cores allowed by a cgroup v2 CPU quota (rounded up), or None without a quota."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpu_cores(cgroup_root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """Cores this process may use, and where that number came from."""
    if hasattr(os, "sched_getaffinity"):
        cores, source = len(os.sched_getaffinity(0)), "the CPU affinity of this process"
    else:
        cores, source = os.cpu_count() or 1, "os.cpu_count()"
    quota_cores = cgroup_cpu_limit(cgroup_root)
    if quota_cores is not None and quota_cores < cores:
        return quota_cores, f"the cgroup CPU quota (lower than the {cores} cores in {source})"
    return max(1, cores), source


def meminfo_available_bytes(meminfo_path: Path = MEMINFO_PATH) -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where there is no such file."""
    try:
        for line in meminfo_path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def cgroup_available_bytes(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """Room left under a cgroup v2 memory limit, or None without a limit.

    Counts reclaimable page cache (inactive_file) as free, as the kubelet does, because
    memory.current includes it and the kernel drops it before it would OOM-kill a worker.
    """
    try:
        limit_text = (cgroup_root / "memory.max").read_text().strip()
        if limit_text == "max":
            return None
        used = int((cgroup_root / "memory.current").read_text().strip())
        inactive_file = 0
        stat_path = cgroup_root / "memory.stat"
        if stat_path.exists():
            for line in stat_path.read_text().splitlines():
                field, _, value = line.partition(" ")
                if field == "inactive_file":
                    inactive_file = int(value)
        return max(0, int(limit_text) - (used - inactive_file))
    except (OSError, ValueError):
        return None


def available_memory_bytes(meminfo_path: Path = MEMINFO_PATH,
                           cgroup_root: Path = CGROUP_ROOT) -> tuple[int | None, str]:
    """Memory the workers can use (the smaller of host and cgroup), and where it came from."""
    host = meminfo_available_bytes(meminfo_path)
    container = cgroup_available_bytes(cgroup_root)
    if container is not None and (host is None or container < host):
        return container, "the cgroup memory limit"
    if host is not None:
        return host, "MemAvailable in /proc/meminfo"
    return None, "nowhere (no /proc/meminfo, no cgroup limit)"


# --- choosing ---------------------------------------------------------------------------------

def _profile_name(env: Mapping[str, str], cores: int) -> tuple[str, str]:
    requested = env.get("ILGUN_PROFILE", "").strip().lower() or "auto"
    if requested in PROFILE_NAMES:
        return requested, f"profile '{requested}' because ILGUN_PROFILE={requested}"
    if requested != "auto":
        raise ValueError(
            f"ILGUN_PROFILE must be one of small, medium, large, auto; got {env['ILGUN_PROFILE']!r}"
        )
    if cores == 1:
        return "small", "profile 'small' because there is 1 core"
    if cores == 2:
        return "medium", "profile 'medium' because there are 2 cores"
    return "large", f"profile 'large' because there are {cores} cores (more than 2)"


def _large_worker_count(cores: int, mem_available: int | None, mem_source: str) -> tuple[int, str]:
    by_cores = 2 * cores + 1
    reason = f"workers = {by_cores}: 2 x {cores} cores + 1, the usual gunicorn rule"
    if mem_available is None:
        return by_cores, reason + f"; no memory cap because available memory was found {mem_source}"
    by_memory = max(1, mem_available // PER_WORKER_MEMORY_BYTES)
    budget = (f"{_format_bytes(mem_available)} available (from {mem_source}) at "
              f"{_format_bytes(PER_WORKER_MEMORY_BYTES)} per worker allows {by_memory}")
    if by_memory < by_cores:
        return by_memory, f"workers = {by_memory} instead of {by_cores} (2 x {cores} cores + 1): {budget}"
    return by_cores, f"{reason}; {budget}, so memory does not limit it"


def choose_profile(env: Mapping[str, str] = os.environ, cores: int | None = None,
                   mem_available_bytes: int | None = None) -> Profile:
    """Pick workers, threads and MAX_WORKERS for this machine; see the module docstring.

    ``cores`` and ``mem_available_bytes`` are detected when not given (memory caps only the
    large profile; every profile states what its OCR engines need of it). Raises ValueError for a bad ILGUN_PROFILE,
    WEB_CONCURRENCY, THREADS or MAX_WORKERS.
    """
    reasons: list[str] = []
    if cores is None:
        cores, core_source = usable_cpu_cores()
        reasons.append(f"{_plural(cores, 'usable CPU core')}, from {core_source}")
    else:
        cores = max(1, cores)
        reasons.append(f"{_plural(cores, 'CPU core')}, as given by the caller")

    name, why_name = _profile_name(env, cores)
    reasons.append(why_name)

    if name == "small":
        workers, threads, max_workers = 1, 4, 3
        reasons.append("workers = 1: one process on a small machine, so its memory is paid once")
        reasons.append("threads = 4: so one slow request does not hold up the others in the single worker")
        reasons.append("max_workers = 3 job executor threads: the small profile's default")
    elif name == "medium":
        workers, threads, max_workers = 3, 2, 2
        reasons.append("workers = 3: the medium profile's default for 2 cores")
        reasons.append("threads = 2 per worker: the medium profile's default")
        reasons.append("max_workers = 2 job executor threads per worker: the medium profile's default")
    else:
        if mem_available_bytes is None:
            mem_available_bytes, mem_source = available_memory_bytes()
        else:
            mem_source = "the caller"
        workers, why_workers = _large_worker_count(cores, mem_available_bytes, mem_source)
        threads, max_workers = 2, 2
        reasons.append(why_workers)
        reasons.append("threads = 2 per worker: more processes rather than more threads, "
                       "because one Python process runs Python code on one core at a time (the GIL)")
        reasons.append("max_workers = 2 job executor threads per worker: the large profile's default")

    chosen = {"workers": workers, "threads": threads, "max_workers": max_workers}
    for setting, variable in OVERRIDE_VARIABLES.items():
        override = env_int(env, variable, None)
        if override is not None:
            reasons.append(f"{setting} = {override} from {variable} (the profile chose {chosen[setting]})")
            chosen[setting] = override
    workers, threads, max_workers = chosen["workers"], chosen["threads"], chosen["max_workers"]

    reasons.append(f"so up to {workers * threads} requests and {workers * max_workers} jobs "
                   f"run at once ({workers} x {threads} threads, {workers} x {max_workers} job threads)")
    if mem_available_bytes is None and name != "large":   # the large profile looked already
        mem_available_bytes = available_memory_bytes()[0]
    reasons.append(_ocr_memory_reason(cores, workers, mem_available_bytes))
    return Profile(name=name, workers=workers, threads=threads, max_workers=max_workers, reasons=reasons)


def _ocr_memory_reason(cores: int, workers: int, mem_available: int | None) -> str:
    need = cores * OCR_ENGINE_MEMORY_BYTES
    text = (f"OCR with PaddleOCR: up to {cores} engine process(es) beside the workers (the ocr kind runs "
            f"{cores} job(s) at once, one per core), ~{_format_bytes(OCR_ENGINE_MEMORY_BYTES)} each at "
            f"peak: {_format_bytes(need)} on top of the workers' {_format_bytes(workers * PER_WORKER_MEMORY_BYTES)}")
    if mem_available is None:
        return text
    room = mem_available - workers * PER_WORKER_MEMORY_BYTES
    fits = max(0, room // OCR_ENGINE_MEMORY_BYTES)
    if fits >= cores:
        return text + f"; {_format_bytes(mem_available)} available, so it fits"
    return text + (f"; only {_format_bytes(mem_available)} available: set KIND_LIMITS='{{\"ocr\": "
                   f"{{\"global\": {max(1, fits)}}}}}' or OCR_ENGINE=tesseract (~100 MB per job)")


# --- command line -----------------------------------------------------------------------------

def format_profile(profile: Profile) -> str:
    lines = [
        f"ilgun gunicorn profile: {profile.name}",
        f"  workers      {profile.workers}",
        f"  threads      {profile.threads}",
        f"  max_workers  {profile.max_workers}",
        "why:",
    ]
    lines += [f"  - {reason}" for reason in profile.reasons]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.profile",
        description="Show the gunicorn profile (workers, threads, MAX_WORKERS) chosen for this machine.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        profile = choose_profile()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(profile), indent=2))
    else:
        print(format_profile(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())

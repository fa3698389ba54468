"""Crawl benchmark: pages/s of ilgun's crawl kind, run as a job by a real gunicorn, against
Scrapy on the same local site at the same concurrency, in one run.

    .venv/bin/python bench/crawl.py                       # 1,000 pages; concurrency 4 and 16; 2 rounds
    .venv/bin/python bench/crawl.py --pages 2000 --concurrency 8 --rounds 3 --modes extract

1. The site (bench/crawl_site.py): N generated ~14 KB pages on 127.0.0.1, served by nginx as
   files (``apt-get install nginx-light``; it costs next to nothing, so the crawlers are what is
   measured), or with ``--server python`` from memory by a Python process. HTTP/1.1 keep-alive.
2. Modes: "links" = follow every same-host link and record each page's title; "extract" = that
   plus three CSS fields per page (h1 text, an attribute, all tags as a list).
3. Scrapy (``scrapy runspider bench/crawl_scrapy_spider.py``): CONCURRENT_REQUESTS and
   CONCURRENT_REQUESTS_PER_DOMAIN = the concurrency, no delay, robots.txt obeyed, items to a
   JSON-lines feed. Time = its stats' start_time -> the spider's close (the process start excluded).
4. ilgun: one ``crawl`` job per run (concurrency, delay 0, robots obeyed, max_pages above the
   site), submitted over HTTP to a gunicorn (ILGUN_PROFILE=medium) started once. Time = the
   job record's started_at -> finished_at (writing pages.jsonl and pages.csv included).
5. Rounds alternate which side goes first; the table gives the median of each side and their
   ratio, plus CPU seconds per page (Scrapy's process; ilgun's whole gunicorn group).

Only 127.0.0.1 is contacted. Prints a table and writes bench/results/crawl-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench_support import (BENCH_DIR, REPO_ROOT, BenchError, free_port, group_cpu_seconds, interrupt_on_signals,
                           package_version, reproduce_command, run_files, stop_all_processes, utc_epoch, venv_tool,
                           wait_for)

EXTRACT = {"h1": "h1", "sku": "span.price@data-sku", "tags": {"selector": "span.tag", "all": True}}


NGINX_CONF = """user root; worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; default_type text/html; types {{ text/html html; text/plain txt; }}
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  server {{ listen 127.0.0.1:{port}; root {root}/site; index index.html; keepalive_requests 1000000; }} }}
"""


def start_site(pages: int, log_dir: Path, server: str) -> tuple[subprocess.Popen, str]:
    """nginx serving the pages as files (a server that costs next to nothing, so the crawlers are
    what is measured), or the Python server of bench/crawl_site.py when nginx is missing."""
    port = free_port()
    log = open(log_dir / "site.log", "w")
    if server == "nginx":
        from crawl_site import build_site
        root = log_dir / "nginx"
        for path, body in build_site(pages).items():
            target = root / "site" / (path.lstrip("/") or "index.html")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        (root / "tmp").mkdir(exist_ok=True)
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf")], stdout=log,
                                stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "crawl_site.py"), "--pages", str(pages),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(base + "/robots.txt", timeout=1).status_code == 200, "starting"
        except requests.RequestException:
            return False, "starting"
    wait_for(up, label="site", timeout=30)
    return proc, base


def run_scrapy(base: str, concurrency: int, extract: bool, log_dir: Path, tag: str) -> dict:
    stats_file, items = log_dir / f"scrapy-{tag}-stats.json", log_dir / f"scrapy-{tag}-items.jsonl"
    items.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_STATS": str(stats_file), "BENCH_EXTRACT": "1" if extract else "0"}
    settings = {"CONCURRENT_REQUESTS": concurrency, "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
                "DOWNLOAD_DELAY": 0, "ROBOTSTXT_OBEY": True, "LOG_LEVEL": "INFO", "TELNETCONSOLE_ENABLED": False,
                "DEPTH_LIMIT": 0, "CLOSESPIDER_TIMEOUT": 600}
    cmd = [venv_tool("scrapy"), "runspider", str(BENCH_DIR / "crawl_scrapy_spider.py"), "-a", f"start={base}/",
           "-o", f"{items}:jsonlines"]
    for name, value in settings.items():
        cmd += ["-s", f"{name}={value}"]
    started = time.monotonic()
    with open(log_dir / f"scrapy-{tag}.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir)
        _pid, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise BenchError(f"scrapy exited {status}; see {log_dir}/scrapy-{tag}.log")
    stats = json.loads(stats_file.read_text())
    seconds = stats["closed_epoch"] - utc_epoch(stats["start_time"])
    pages = sum(1 for _ in items.open())
    return {"pages": pages, "seconds": seconds, "pages_per_s": pages / seconds, "wall": time.monotonic() - started,
            "cpu": usage.ru_utime + usage.ru_stime, "responses": stats.get("response_received_count")}


class IlgunSide:
    def __init__(self, args, log_dir: Path):
        sys.path.insert(0, str(BENCH_DIR))
        from ilgun_runner import IlgunHosts, IlgunOptions
        opts = IlgunOptions(jobs=1, clients=1, timeout=600, log_dir=log_dir, profile="medium")
        self.hosts = IlgunHosts(opts, "crawl", database_url="")
        extra = {"ILGUN_ALLOW_PRIVATE_URLS": "1", "CRAWL_MAX_PAGES": str(max(10000, args.pages * 2)),
                 "CRAWL_MAX_CONCURRENCY": str(max(args.concurrency)), "CRAWL_MAX_DEPTH": "50"}
        for server in self.hosts.servers:
            server.env.update(extra)
        self.hosts.start()

    def run(self, base: str, concurrency: int, extract: bool, pages: int) -> dict:
        params = {"url": base + "/", "max_pages": pages * 2, "max_depth": 50, "delay": 0, "concurrency": concurrency}
        if extract:
            params["extract"] = EXTRACT
        cpu0, started = group_cpu_seconds(self.hosts.procs[0]), time.monotonic()
        job = self.hosts.api("POST", "/api/v1/jobs", json={"kind": "crawl", "params": params})

        def finished():
            view = self.hosts.api("GET", f"/api/v1/jobs/{job['id']}")
            return view["status"] in ("succeeded", "failed", "cancelled"), f"{view['progress']:.0f}% {view['message'] or ''}"[:70]
        wait_for(finished, label=f"ilgun c={concurrency}", timeout=900, interval=0.2)
        view = self.hosts.api("GET", f"/api/v1/jobs/{job['id']}")
        if view["status"] != "succeeded":
            raise BenchError(f"crawl job {view['status']}: {view['error']}")
        seconds = utc_epoch(view["finished_at"]) - utc_epoch(view["started_at"])
        result = view["result"]
        return {"pages": result["pages"], "seconds": seconds, "pages_per_s": result["pages"] / seconds,
                "wall": time.monotonic() - started, "cpu": group_cpu_seconds(self.hosts.procs[0]) - cpu0,
                "errors": result["errors"]}

    def stop(self):
        self.hosts.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["links", "extract"])
    parser.add_argument("--server", choices=["nginx", "python"], default="nginx" if shutil.which("nginx") else "python",
                        help="what serves the site (default nginx when installed: apt-get install nginx-light)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    interrupt_on_signals()
    out, log_dir = run_files("crawl", args.out)
    site_proc, base = start_site(args.pages, log_dir, args.server)
    ilgun = None
    runs = []
    try:
        ilgun = IlgunSide(args, log_dir)
        for round_no in range(args.rounds):
            for mode in args.modes:
                for concurrency in args.concurrency:
                    sides = ["scrapy", "ilgun"] if round_no % 2 == 0 else ["ilgun", "scrapy"]
                    for side in sides:
                        tag = f"r{round_no}-{mode}-c{concurrency}"
                        extract = mode == "extract"
                        figures = run_scrapy(base, concurrency, extract, log_dir, tag) if side == "scrapy" \
                            else ilgun.run(base, concurrency, extract, args.pages)
                        runs.append({"side": side, "mode": mode, "concurrency": concurrency, "round": round_no, **figures})
                        print(f"  {tag} {side:6}: {figures['pages']} pages in {figures['seconds']:.2f}s = "
                              f"{figures['pages_per_s']:.1f} pages/s, {figures['cpu'] / figures['pages'] * 1000:.2f} "
                              f"CPU-ms/page", file=sys.stderr)
    finally:
        if ilgun is not None:
            ilgun.stop()
        site_proc.terminate()
        site_proc.wait(timeout=10)
        stop_all_processes()
    rows = []
    print(f"\ncrawl benchmark: {args.pages}-page local site served by {args.server}, {args.rounds} round(s), medians")
    print(f"{'mode':8} {'conc':>4} {'scrapy p/s':>11} {'ilgun p/s':>10} {'ratio':>6} {'scrapy CPU-ms/p':>16} {'ilgun CPU-ms/p':>15}")
    for mode in args.modes:
        for concurrency in args.concurrency:
            pick = lambda side, key: statistics.median(r[key] for r in runs if r["side"] == side and r["mode"] == mode and r["concurrency"] == concurrency)  # noqa: E731
            cpu = lambda side: statistics.median(r["cpu"] / r["pages"] * 1000 for r in runs if r["side"] == side and r["mode"] == mode and r["concurrency"] == concurrency)  # noqa: E731
            row = {"mode": mode, "concurrency": concurrency, "scrapy_pages_per_s": pick("scrapy", "pages_per_s"),
                   "ilgun_pages_per_s": pick("ilgun", "pages_per_s"), "scrapy_cpu_ms_per_page": cpu("scrapy"),
                   "ilgun_cpu_ms_per_page": cpu("ilgun"), "scrapy_pages": pick("scrapy", "pages"),
                   "ilgun_pages": pick("ilgun", "pages")}
            row["ratio"] = row["ilgun_pages_per_s"] / row["scrapy_pages_per_s"]
            rows.append(row)
            print(f"{mode:8} {concurrency:>4} {row['scrapy_pages_per_s']:>11.1f} {row['ilgun_pages_per_s']:>10.1f} "
                  f"{row['ratio']:>5.2f}x {row['scrapy_cpu_ms_per_page']:>16.2f} {row['ilgun_cpu_ms_per_page']:>15.2f}")
    print("target: ilgun >= scrapy (ratio >= 1.00) at the same concurrency")
    command = reproduce_command("crawl.py", argv)
    print(f"reproduce: {command}")
    summary = {"command": command, "rows": rows, "runs": runs, "pages": args.pages, "server": args.server,
               "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
               "versions": {m: package_version(m) for m in ("scrapy", "twisted", "lxml", "beautifulsoup4", "requests")}}
    out.write_text(json.dumps(summary, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

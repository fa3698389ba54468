"""CEFR benchmark: texts/s and latency of POST /api/v1/cefr through a real gunicorn against the
raw transformers pipeline on the same texts with the same CPU, and the 2-core profile's memory
with the model loaded, in one run.

    .venv/bin/python bench/cefr.py                      # 600 texts, 4 client threads
    .venv/bin/python bench/cefr.py --texts 1200 --clients 8

1. Texts: sentences of CEFR-SP's dev split (../shared/data/cefr-sp/wikiauto_dev.tsv), each with a
   running number appended so no two are equal and nothing is answered from the cache.
2. Raw: ``--procs`` processes (default: the usable cores), each with its own
   ``transformers.pipeline("text-classification", model=<the default model>, top_k=None,
   truncation=True)`` and one torch thread, share one queue of texts, one text per call (as
   the endpoint grades them). Latency = the pipeline call.
3. Service: a real gunicorn (ILGUN_PROFILE=medium: 3 workers, 2 executor slots each; the model
   preloaded in the master), ``--clients`` threads each POSTing texts on a keep-alive session.
   Latency = the client's round trip (HTTP, JSON, auth, the executor hop included).
4. Memory: PSS of the master and each worker after the run (/proc/<pid>/smaps_rollup), and the
   same with CEFR_PRELOAD=0 (each worker loads its own copy) for comparison.

Only 127.0.0.1 is contacted. Prints a table and writes bench/results/cefr-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import requests

from bench_support import (BENCH_DIR, REPO_ROOT, interrupt_on_signals, package_version, percentile,
                           reproduce_command, run_files, stop_all_processes)

sys.path.insert(0, str(REPO_ROOT))
DEV = REPO_ROOT.parent / "shared" / "data" / "cefr-sp" / "wikiauto_dev.tsv"


def texts(n: int) -> list[str]:
    sentences = [line.split("\t")[0] for line in DEV.read_text().splitlines() if line.strip()]
    return [f"{sentences[i % len(sentences)]} ({i})" for i in range(n)]


def _raw_worker(model_dir: str, jobs, results) -> None:
    import torch
    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import pipeline
    pipe = pipeline("text-classification", model=model_dir, top_k=None, truncation=True, device="cpu")
    pipe("warm up")
    results.put("ready")
    latencies, first, last = [], None, None
    while True:
        text = jobs.get()
        if text is None:
            break
        started = time.time()
        first = first or started
        pipe(text)
        last = time.time()
        latencies.append(last - started)
    results.put((latencies, first, last))


def run_raw(model_dir: str, items: list[str], procs: int) -> dict:
    """Texts/s from the first text taken to the last answered (model loading excluded, as the
    service's model is loaded before its clients start)."""
    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=_raw_worker, args=(model_dir, jobs, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    for _ in workers:
        assert results.get(timeout=300) == "ready"
    for text in items:
        jobs.put(text)
    for _ in workers:
        jobs.put(None)
    latencies, firsts, lasts = [], [], []
    for _ in workers:
        part, first, last = results.get(timeout=900)
        latencies += part
        firsts.append(first)
        lasts.append(last)
    for w in workers:
        w.join(30)
    wall = max(lasts) - min(firsts)
    return {"texts": len(latencies), "texts_per_s": len(latencies) / wall, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000}


def run_service(hosts, items: list[str], clients: int) -> dict:
    token, base = hosts.token, hosts.base
    latencies, errors, lock = [], [], threading.Lock()
    queue = list(items)

    def client():
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while True:
            with lock:
                if not queue:
                    return
                text = queue.pop()
            started = time.perf_counter()
            r = session.post(base + "/api/v1/cefr", json={"text": text}, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                (latencies.append(elapsed) if r.status_code == 200 else errors.append(r.status_code))
    for text in items[:clients * 2]:  # warm every worker's model (and skip those in the figures)
        requests.post(base + "/api/v1/cefr", json={"text": "warm " + text}, timeout=60,
                      headers={"Authorization": f"Bearer {token}"})
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    wall = time.monotonic() - t0
    return {"texts": len(latencies), "errors": len(errors), "texts_per_s": len(latencies) / wall,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


def pss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(hosts) -> dict:
    master = hosts.procs[0].pid
    children = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    return {"master": round(pss_mb(master)), "workers": [round(pss_mb(p)) for p in children],
            "total": round(pss_mb(master) + sum(pss_mb(p) for p in children))}


def start_service(log_dir: Path, label: str, preload: bool):
    sys.path.insert(0, str(BENCH_DIR))
    from ilgun_runner import IlgunHosts, IlgunOptions
    hosts = IlgunHosts(IlgunOptions(jobs=1, clients=1, timeout=600, log_dir=log_dir, profile="medium"), label,
                       database_url="")
    for server in hosts.servers:
        server.env["CEFR_PRELOAD"] = "1" if preload else "0"
    return hosts.start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--procs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    interrupt_on_signals()
    from service.cefr.classifier import check_model
    model_dir = str(check_model({}))
    out, log_dir = run_files("cefr", args.out)
    items = texts(args.texts)
    summary = {"command": reproduce_command("cefr.py", argv), "texts": args.texts, "clients": args.clients,
               "procs": args.procs, "model_dir": model_dir,
               "versions": {m: package_version(m) for m in ("torch", "transformers", "gunicorn")}}
    try:
        print(f"raw: {args.procs} processes, one pipeline each", file=sys.stderr)
        summary["raw"] = run_raw(model_dir, items, args.procs)
        print(f"service: gunicorn medium profile, {args.clients} clients, model preloaded", file=sys.stderr)
        hosts = start_service(log_dir, "cefr-preload", preload=True)
        try:
            summary["service"] = run_service(hosts, items, args.clients)
            summary["memory_preload"] = memory(hosts)
        finally:
            hosts.stop()
        print("service again without preload, for its memory", file=sys.stderr)
        hosts = start_service(log_dir, "cefr-no-preload", preload=False)
        try:
            # many connections, so every worker gets requests and loads its own copy
            run_service(hosts, items[:120], 12)
            summary["memory_no_preload"] = memory(hosts)
        finally:
            hosts.stop()
    finally:
        stop_all_processes()
    raw, svc = summary["raw"], summary["service"]
    print(f"\ncefr benchmark: {args.texts} texts (CEFR-SP dev sentences), one per call")
    print(f"{'side':28} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'raw pipeline':28} {raw['texts_per_s']:>8.1f} {raw['p50_ms']:>8.1f} {raw['p99_ms']:>8.1f}")
    print(f"{'service POST /api/v1/cefr':28} {svc['texts_per_s']:>8.1f} {svc['p50_ms']:>8.1f} {svc['p99_ms']:>8.1f}"
          f"   errors {svc['errors']}")
    print(f"service / raw texts/s: {svc['texts_per_s'] / raw['texts_per_s']:.2f}x")
    for key in ("memory_preload", "memory_no_preload"):
        m = summary[key]
        print(f"{key.replace('_', ' ')}: PSS MB master {m['master']}, workers {m['workers']}, total {m['total']}")
    print(f"reproduce: {summary['command']}")
    out.write_text(json.dumps(summary, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Raw OCR throughput without the service: N processes, one engine each, reading generated A4
pages (150 dpi, 11 pt, ~40 lines). The service's OCR benchmark compares against this.

    .venv/bin/python bench/ocr_raw.py --engine paddle --procs 2 --pages 6
    .venv/bin/python bench/ocr_raw.py --engine tesseract --procs 2 --pages 12

Each process reports: engine start (import + build), first call (warm-up, on a small image),
seconds per page, peak RSS, and RSS/PSS from /proc/self/smaps_rollup after the cache released
the engine (gc.collect + malloc_trim). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import difflib
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def memory() -> dict:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def worker(engine_name: str, pages: int, seed: int, data: str, queue) -> None:
    from service.ocr import samples
    from service.ocr.cache import EngineCache
    base = memory()
    cache = EngineCache({"ILGUN_DATA": data}, size=1, idle_ttl=0)
    docs = [samples.a4_page(dpi=150, seed=seed * 100 + i) for i in range(pages)]
    began = time.perf_counter()
    with cache.use(engine_name) as engine:
        start = time.perf_counter() - began
        first = engine.warm()
        loaded = memory()
        times, scores = [], []
        for image, truth in docs:
            t = time.perf_counter()
            lines = engine.recognize(image)
            times.append(time.perf_counter() - t)
            scores.append(difflib.SequenceMatcher(None, " ".join(x.text for x in lines), " ".join(truth)).ratio())
        engine = None
    busy = memory()
    cache.release_all()
    released = memory()
    queue.put({"pid": os.getpid(), "start_s": round(start, 2), "first_call_s": round(first, 2),
               "page_s": [round(x, 2) for x in times], "similarity_min": round(min(scores), 4),
               "lines_per_page": len(docs[0][1]), "mem_before": base, "mem_loaded": loaded,
               "mem_after_pages": busy, "mem_after_release": released})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="paddle", choices=("paddle", "tesseract"))
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--pages", type=int, default=6, help="pages per process")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")  # a fresh interpreter each: nothing of paddle shared or forked
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as data:
        began = time.perf_counter()
        procs = [ctx.Process(target=worker, args=(args.engine, args.pages, i, data, queue)) for i in range(args.procs)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.perf_counter() - began
    pages = args.procs * args.pages
    page_time = sum(sum(r["page_s"]) for r in results) / pages
    print(json.dumps({"engine": args.engine, "procs": args.procs, "pages": pages, "wall_s": round(wall, 1),
                      "mean_page_s": round(page_time, 2),
                      # steady state: pages over the longest process's page time (start and warm-up excluded)
                      "pages_per_s": round(pages / max(sum(r["page_s"]) for r in results), 3),
                      "cpus": os.cpu_count(), "workers": results}, indent=1))


if __name__ == "__main__":
    main()

"""OCR jobs go to the workers whose PaddleOCR engine is warm: a real gunicorn (3 workers), real
PaddleOCR engine processes, one engine place on the host (OCR_ENGINES_PER_HOST=1). Every job,
whichever worker took its POST, runs on the one worker holding the engine, which is built once;
and that worker's engine process is its child, at a lower CPU priority."""
from __future__ import annotations

import io
import os
import re

import requests

from gunicorn_harness import child_pids
from service.ocr import samples

JOBS = 5


def _png(lines) -> bytes:
    buf = io.BytesIO()
    samples.text_image(lines).save(buf, "PNG")
    return buf.getvalue()


def test_ocr_jobs_run_where_the_engine_is_warm(ilgun_factory):
    server = ilgun_factory({"OCR_ENGINES_PER_HOST": "1", "OCR_ENGINE_IDLE_TTL": "300"})
    token = server.register("reader")
    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": f"Bearer {token}"}
    texts = [samples.SAMPLE_LINES[i:i + 1] for i in range(JOBS)]
    file_ids = []
    for i, lines in enumerate(texts):
        r = requests.post(base + "/api/v1/files", headers={**auth, "Connection": "close"}, timeout=30,
                          files={"file": (f"page{i}.png", _png(lines), "image/png")})
        assert r.status_code == 201, r.text
        file_ids.append(r.json()["data"]["id"])

    # the first job builds the engine on some worker
    first = server.submit(token, "ocr", {"file_id": file_ids[0]})
    assert server.wait_jobs([first], timeout=180, token=token)[first]["status"] == "succeeded"
    # the rest, submitted at once on fresh connections (so their POSTs land on every worker)
    rest = [server.submit(token, "ocr", {"file_id": f}) for f in file_ids[1:]]
    final = server.wait_jobs(rest, timeout=180, token=token)
    assert all(j["status"] == "succeeded" for j in final.values()), final
    for job_id, lines in zip([first, *rest], texts):
        text = server.job(job_id, token)["result"]["text"]
        assert " ".join(text.split()) == " ".join(" ".join(lines).split()), (text, lines)

    workers = set()
    for job_id in [first, *rest]:
        log = server.call("GET", f"/api/v1/jobs/{job_id}/log?tail=100", token=token).data["lines"]
        pids = [m.group(1) for line in log if (m := re.search(r"started on [^:\s]+:(\d+):", line["message"]))]
        workers.add(int(pids[-1]))
    assert len(workers) == 1, f"OCR jobs ran on several workers: {workers}"
    assert len(re.findall(r"OCR engine paddle loaded", server.log_text())) == 1, server.log_tail()

    (worker,) = workers
    engines = [pid for pid in child_pids(worker)
               if "paddle_server.py" in open(f"/proc/{pid}/cmdline").read()]
    assert len(engines) == 1
    assert os.getpriority(os.PRIO_PROCESS, engines[0]) >= 10 and os.sched_getscheduler(engines[0]) == os.SCHED_IDLE
    assert all("paddle" not in open(f"/proc/{w}/maps").read() for w in server.worker_pids()), \
        "PaddleOCR was loaded into a gunicorn worker"

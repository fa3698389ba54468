"""The chaos loop's job mix: one job of every kind the server knows in each round (JobMix,
mixed into chaos.Chaos), the generated PNG and XLSX it uploads, the crawl site each crawl job
gets (TracedSite: which process sent each request), and Job, what the loop keeps of a job."""
from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass

from chaos_settings import CRAWL_DELAY, CRAWL_PAGES, SLEEP_STEP
from tests.crawl_site import CrawlSite

MIX_KINDS = ("download", "sleep", "crawl", "cefr", "ocr", "report")


# --- the crawl site -----------------------------------------------------------------------------

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


# --- submitting -------------------------------------------------------------------------------

class JobMix:
    """The Chaos methods that choose and submit a round's jobs (self.server, self.files, self.rng,
    self.watcher, self.jobs and self.sites are the Chaos object's)."""

    def _server_kinds(self) -> list[str]:
        """Every kind the server knows, from the error an unknown kind gets."""
        r = self.server.call("POST", "/api/v1/jobs", {"kind": "__chaos_probe__", "params": {}},
                             token=self.server.admin_token)
        assert r.status == 404 and r.body.get("error_code") == "UNKNOWN_KIND", r
        kinds = sorted(r.body["details"]["kinds"])
        missing = sorted(set(kinds) - set(MIX_KINDS))
        assert not missing, f"the chaos mix has no job of kind(s) {missing}: add them to Chaos._submit_mix"
        return kinds

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

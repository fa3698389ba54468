"""Each kind's result view on the job page (templates/results/<kind>.html), through the real app:
a finished job is put in the store with a result shaped exactly as its kind returns it (the report's
is made by the real analysis of a generated PDF) and its files in the job's folder, then its page
is read by a signed-in browser client. Running real OCR or crawl jobs here would only be slower."""
from __future__ import annotations

import hashlib
import json
import mimetypes
import re

import pytest

from service.engine.status import JobStatus
from tests.conftest import PASSWORD

HTML = {"Accept": "text/html"}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


# -- helpers ---------------------------------------------------------------------------------
class Browser:
    """A test client signed in through the sign-in form, as a browser is."""

    def __init__(self, app, username: str):
        self.client = app.test_client()
        form = self.get("/login").get_data(as_text=True)
        token = CSRF_FIELD.search(form).group(1)
        resp = self.client.post("/login", data={"csrf_token": token, "username": username, "password": PASSWORD},
                                headers=HTML)
        assert resp.status_code == 302, resp.get_data(as_text=True)[:300]

    def get(self, url: str):
        return self.client.get(url, headers=HTML)

    def page(self, url: str) -> str:
        resp = self.get(url)
        text = resp.get_data(as_text=True)
        assert resp.status_code == 200 and "Traceback" not in text, text[:500]
        return text


def finished_job(app, owner: str, kind: str, params: dict, result: dict | None, files: dict[str, bytes] | None = None,
                 status: JobStatus = JobStatus.SUCCEEDED) -> str:
    """A job of ``owner`` that ran and finished with ``result`` and ``files``, recorded the way an
    execution records it: claimed, its outputs in the job's out/ folder, then finished."""
    from service.engine.dispatcher import policy_for
    from service.store.claims import ClaimStore
    svc = app.extensions["ilgun"]
    owner_id = svc.users.by_username(owner)["id"]
    policy = policy_for(svc.kinds[kind], app.config)
    job, _ = svc.jobs.submit(owner_id, policy, params, svc.bounds)
    claims = ClaimStore(svc.engine)
    [claimed] = claims.claim("test-worker", 1, {kind: policy}, 30)
    assert claimed["id"] == job["id"]
    out = svc.workspace.output_dir(owner_id, job["id"])
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name, data in (files or {}).items():
        (out / name).write_bytes(data)
        records.append({"name": name, "size": len(data),
                        "content_type": mimetypes.guess_type(name)[0] or "application/octet-stream",
                        "sha256": hashlib.sha256(data).hexdigest()})
    assert claims.finish(job["id"], claimed["run_token"], status, result=result, files=records, kind=kind,
                         duration=0.1)
    return job["id"]


@pytest.fixture
def alice(app) -> Browser:
    app.extensions["ilgun"].users.create("alice", PASSWORD)
    return Browser(app, "alice")


def result_section(page: str) -> str:
    """The job page's result section only (so a match is the view's, not the parameters')."""
    start = page.index('<section class="result"')
    markers = ('<section aria-labelledby="files-heading"', '<section class="actions"')
    ends = [page.find(marker, start) for marker in markers]
    return page[start:min(end for end in ends if end != -1)]


def assert_no_inline_style_or_script(page: str) -> None:
    assert " style=" not in page and "<style" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)


# -- download ------------------------------------------------------------------------------------
DOWNLOAD_BODY = b"col1,col2\n1,2\n"


def download_result(body: bytes = DOWNLOAD_BODY) -> dict:
    return {"url": "http://files.example.org/latest", "final_url": "https://cdn.example.org/v2/data.csv",
            "filename": "data.csv", "size": len(body), "content_type": "text/csv; charset=utf-8",
            "sha256": hashlib.sha256(body).hexdigest(),
            "redirects": [{"url": "http://files.example.org/latest", "status": 301},
                          {"url": "https://files.example.org/latest", "status": 302}],
            "http_status": 200}


def test_download_view_shows_the_file_its_checksum_and_where_it_came_from(app, alice):
    job_id = finished_job(app, "alice", "download", {"url": "http://files.example.org/latest", "filename": None,
                                                     "sha256": None},
                          download_result(), {"data.csv": DOWNLOAD_BODY})
    page = alice.page(f"/jobs/{job_id}")
    view = result_section(page)
    assert hashlib.sha256(DOWNLOAD_BODY).hexdigest() in view
    assert "text/csv; charset=utf-8" in view and f"{len(DOWNLOAD_BODY)} bytes" in view
    assert f'href="/jobs/{job_id}/files/data.csv" download>Download data.csv</a>' in view
    assert '<a href="https://cdn.example.org/v2/data.csv" rel="nofollow noopener">' in view  # final URL
    assert "301 from" in view and "302 from" in view
    assert_no_inline_style_or_script(page)
    resp = alice.get(f"/jobs/{job_id}/files/data.csv")
    assert resp.status_code == 200 and resp.data == DOWNLOAD_BODY
    assert resp.headers["Content-Disposition"].startswith("attachment")


# -- ocr -----------------------------------------------------------------------------------------
def ocr_line(text: str, confidence: float, y: int) -> dict:
    return {"text": text, "box": [[10, y], [400, y], [400, y + 30], [10, y + 30]], "confidence": confidence}


def ocr_result(*, second_page_text: str = "Scanned line one\nScanned line two", truncated: bool = False,
               lines_in_result: bool = True) -> dict:
    lines = [ocr_line(t, c, 40 * i) for i, (t, c) in enumerate(zip(second_page_text.split("\n"), (0.9, 0.8)))]
    pages = [{"number": 1, "source": "pdf-text", "text": "The first page has a real text layer.", "lines": [],
              "seconds": 0.004},
             {"number": 2, "source": "pdf-render", "text": second_page_text,
              "lines": lines if lines_in_result else [], "seconds": 1.234}]
    text = "\n\n".join(p["text"] for p in pages)
    return {"file_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "file_name": "scan.pdf",
            "page_count": 5 if truncated else 2, "pages_read": 2, "truncated": truncated,
            "engine": {"name": "paddle", "model": "PaddleOCR 3 PP-OCRv5_mobile_det + en_PP-OCRv5_mobile_rec"},
            "ocr_pages": 1, "seconds": 1.5, "ocr_seconds": 1.23, "text": text, "pages": pages,
            "lines_in_result": lines_in_result}


def ocr_files(result: dict) -> dict[str, bytes]:
    return {"text.txt": result["text"].encode(), "ocr.json": json.dumps(result).encode()}


def test_ocr_view_shows_each_pages_text_lines_and_confidence(app, alice):
    result = ocr_result()
    job_id = finished_job(app, "alice", "ocr", {"file_id": result["file_id"], "engine": "paddle", "lang": None,
                                                "force_ocr": False, "max_pages": 500}, result, ocr_files(result))
    page = alice.page(f"/jobs/{job_id}")
    view = result_section(page)
    assert "Page 1" in view and "Page 2" in view
    assert "<pre class=\"ocr-text\">The first page has a real text layer.</pre>" in view
    assert "<pre class=\"ocr-text\">Scanned line one\nScanned line two</pre>" in view
    assert "from the PDF&#39;s text layer" in view and "PDF page read by OCR" in view
    assert "2 lines · mean confidence 85.0%" in view  # (0.9 + 0.8) / 2
    assert "PaddleOCR 3 PP-OCRv5_mobile_det" in view
    assert f"/jobs/{job_id}/files/text.txt" in view and f"/jobs/{job_id}/files/ocr.json" in view
    assert "were read" not in view and "too many text lines" not in view
    assert_no_inline_style_or_script(page)


def test_ocr_view_warns_of_a_truncated_document_and_boxes_kept_in_ocr_json(app, alice):
    result = ocr_result(truncated=True, lines_in_result=False)
    job_id = finished_job(app, "alice", "ocr", {"file_id": result["file_id"], "engine": "paddle", "lang": None,
                                                "force_ocr": False, "max_pages": 2}, result, ocr_files(result))
    view = result_section(alice.page(f"/jobs/{job_id}"))
    assert "Only the first 2 of 5 pages were read" in view
    assert "too many text lines" in view and f'href="/jobs/{job_id}/files/ocr.json"' in view
    assert "2 lines" in view and "mean confidence" not in view  # counted from the text


# -- report --------------------------------------------------------------------------------------
def real_report(tmp_path, lines: list[str]) -> tuple[dict, dict[str, bytes]]:
    """The report kind's result and files for a generated PDF, made by the real analysis (no OCR)."""
    import io

    from service.ocr import samples
    from service.reports import analyze, render_html, write_xlsx
    pdf = tmp_path / "invoice.pdf"
    pdf.write_bytes(samples.text_pdf([lines]))
    result = analyze(pdf, {}, ocr=None, name="invoice.pdf")
    xlsx = io.BytesIO()
    write_xlsx(result, xlsx)
    return result, {"report.json": json.dumps(result).encode(), "report.html": render_html(result).encode(),
                    "report.xlsx": xlsx.getvalue()}


REPORT_PARAMS = {"file_id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "ocr": False, "include_gps": False,
                 "file_name": "invoice.pdf"}


def test_report_view_shows_key_fields_and_the_report_in_a_sandboxed_frame(app, alice, tmp_path):
    result, files = real_report(tmp_path, ["Invoice No. INV-2024-117", "Date: 2024-03-03", "Total: 1,250.00 EUR",
                                           "Contact: billing@example.com"])
    job_id = finished_job(app, "alice", "report", REPORT_PARAMS, result, files)
    page = alice.page(f"/jobs/{job_id}")
    view = result_section(page)
    assert "invoice.pdf" in view and "PDF" in view
    for text in ("billing@example.com", "2024-03-03", "1250.00 EUR", "INV-2024-117"):
        assert text in view, text
    assert re.search(r"<strong>1</strong> email<", view) and re.search(r"<strong>0</strong> phone numbers", view)
    frame = f'<iframe class="report" sandbox title="Report" src="/jobs/{job_id}/files/report.html?view=1"></iframe>'
    assert frame in view
    for name in ("report.json", "report.xlsx"):
        assert f'href="/jobs/{job_id}/files/{name}" download' in view
    assert_no_inline_style_or_script(page)
    assert "frame-src 'self'" in alice.get(f"/jobs/{job_id}").headers["Content-Security-Policy"]

    shown = alice.get(f"/jobs/{job_id}/files/report.html?view=1")
    assert shown.status_code == 200 and shown.mimetype == "text/html"
    assert shown.headers["Content-Disposition"] == "inline"
    csp = shown.headers["Content-Security-Policy"]
    assert re.search(r"(^|;)\s*sandbox\s*(;|$)", csp) and "default-src 'none'" in csp  # sandboxed, scripts never allowed
    assert shown.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert b"billing@example.com" in shown.data
    plain = alice.get(f"/jobs/{job_id}/files/report.html")  # without view=1: a download
    assert plain.headers["Content-Disposition"].startswith("attachment")


def test_report_view_lists_warnings(app, alice, tmp_path):
    result, files = real_report(tmp_path, ["Just one line of text with enough letters in it."])
    result["warnings"].append({"code": "PAGES_TRUNCATED", "message": "Only the first 200 pages were analysed."})
    job_id = finished_job(app, "alice", "report", REPORT_PARAMS, result, files)
    view = result_section(alice.page(f"/jobs/{job_id}"))
    assert "<code>PAGES_TRUNCATED</code> Only the first 200 pages were analysed." in view
    assert "No dates, amounts, emails" in view


# -- crawl ---------------------------------------------------------------------------------------
CRAWL_PARAMS = {"urls": ["https://site.example/"], "max_pages": 50, "max_depth": 2, "concurrency": 4,
                "allowed_domains": [], "include": [], "exclude": [],
                "extract": {"price": {"selector": ".price", "all": False}, "tags": {"selector": ".tag", "all": True}},
                "respect_robots": True, "delay": 0.5}


def crawl_row(url: str, *, depth: int = 1, title: str | None = "A page", status: int | None = 200, fields=None,
              error=None, skipped=None, final_url=None) -> dict:
    """One pages.jsonl line as service/crawl/crawler.py _record writes it."""
    return {"url": url, "final_url": final_url or url, "status": status, "depth": depth, "title": title,
            "fields": fields if fields is not None else {}, "out_links": 3, "fetched_at": "2024-05-01T10:00:00.000Z",
            "elapsed": 0.0123, "content_type": "text/html; charset=utf-8", "size": 2048, "redirects": 0,
            "attempts": 1, "error": error, "skipped": skipped}


def crawl_result(pages: int, *, partial: bool = False) -> dict:
    """service/crawl/crawler.py _summary."""
    return {"pages": pages, "ok": pages - 2, "errors": 1, "retries": 1,
            "skipped": {"max_depth": 4, "offsite": 7, "robots": 2}, "status_counts": {"200": pages - 1, "404": 1},
            "bytes": 2048 * pages, "duration_seconds": 4.2, "pages_per_second": round(pages / 4.2, 2),
            "max_depth_reached": 2, "start_urls": ["https://site.example/"],
            "robots": {"https://site.example/robots.txt": "parsed"},
            "limits": {"max_pages": 50, "max_depth": 2, "concurrency": 4, "delay": 0.5}, "partial": partial}


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def test_crawl_view_shows_counters_and_a_table_of_pages(app, alice):
    rows = [crawl_row("https://site.example/", depth=0, title="Home", fields={"price": None, "tags": []}),
            crawl_row("https://site.example/shop/1", title="Blue mug", fields={"price": "9.50 EUR",
                                                                              "tags": ["kitchen", "blue"]}),
            crawl_row("https://site.example/gone", title=None, status=404,
                      error={"code": "HTTP_404", "message": "The server answered 404."}),
            crawl_row("https://site.example/file.zip", title=None, skipped="not_html")]
    job_id = finished_job(app, "alice", "crawl", CRAWL_PARAMS, crawl_result(len(rows)),
                          {"pages.jsonl": jsonl(rows), "pages.csv": b"url\n"})
    page = alice.page(f"/jobs/{job_id}")
    view = result_section(page)
    assert '<span class="n">4</span> pages' in view and '<span class="n">13</span> skipped' in view
    assert "7 on another site" in view and "2 blocked by robots.txt" in view and "0.95" in view
    table = view[view.index('<table class="crawl-pages">'):]
    assert table.count("<tr>") == 1 + len(rows)  # header + one per page
    assert '<th scope="col">price</th><th scope="col">tags</th>' in table
    assert '<a href="https://site.example/shop/1" rel="nofollow noopener">https://site.example/shop/1</a>' in table
    assert "Blue mug" in table and "9.50 EUR" in table and "<li>kitchen</li><li>blue</li>" in table
    assert "HTTP_404" in table and "skipped: not HTML" in table
    assert "All 4 pages" in table and f'href="/jobs/{job_id}/files/pages.csv"' in table
    assert "cancelled before it ended" not in view
    assert_no_inline_style_or_script(page)


def test_crawl_view_shows_the_first_200_rows_and_says_when_the_crawl_was_cut_short(app, alice):
    rows = [crawl_row(f"https://site.example/p/{i}", title=f"Page number {i}") for i in range(230)]
    job_id = finished_job(app, "alice", "crawl", CRAWL_PARAMS, crawl_result(len(rows), partial=True),
                          {"pages.jsonl": jsonl(rows)}, status=JobStatus.CANCELLED)
    view = result_section(alice.page(f"/jobs/{job_id}"))
    assert "cancelled before it ended" in view
    assert "The first 200 of 230 pages" in view
    assert "Page number 199<" in view and "Page number 200<" not in view


def test_crawled_urls_other_than_http_stay_text(app, alice):
    rows = [crawl_row("javascript:alert(1)//", title="js"), crawl_row("data:text/html,hello", title="data"),
            crawl_row("http://site.example/ok", title="fine")]
    job_id = finished_job(app, "alice", "crawl", CRAWL_PARAMS, crawl_result(len(rows)), {"pages.jsonl": jsonl(rows)})
    view = result_section(alice.page(f"/jobs/{job_id}"))
    assert 'href="javascript:' not in view and 'href="data:' not in view
    assert "javascript:alert(1)//" in view and "data:text/html,hello" in view
    assert '<a href="http://site.example/ok" rel="nofollow noopener">' in view


# -- cefr ----------------------------------------------------------------------------------------
def cefr_result(sentences: list[tuple[str, str, dict]]) -> dict:
    """service/cefr/classifier.py CefrModel.grade, with the default model's real info (its metrics.json)."""
    from service.cefr import classifier
    from service.cefr.assemble import DEFAULT_TARGET
    scores = {"A1": 0.01, "A2": 0.04, "B1": 0.2, "B2": 0.55, "C1": 0.15, "C2": 0.05}
    return {"level": "B2", "scores": scores, "expected_level": 3.89, "method": classifier.METHOD,
            "sentence_count": len(sentences), "words": 9 * len(sentences), "truncated": False,
            "sentences": [{"text": text, "level": level, "scores": s} for text, level, s in sentences],
            "model": classifier._model_info(DEFAULT_TARGET), "cached": False}


def one_hot(level: str, share: float = 0.7) -> dict:
    rest = round((1 - share) / 5, 6)
    return {lv: share if lv == level else rest for lv in ("A1", "A2", "B1", "B2", "C1", "C2")}


def test_cefr_view_shows_the_level_a_bar_chart_sentences_and_the_model(app, alice):
    from markupsafe import escape

    from service.pages.presenters import percent
    result = cefr_result([("The cat sat on the mat.", "A1", one_hot("A1", 0.8)),
                          ("Notwithstanding the ramifications, the committee deliberated.", "C1", one_hot("C1"))])
    job_id = finished_job(app, "alice", "cefr", {"text": "…"}, result)
    page = alice.page(f"/jobs/{job_id}")
    view = result_section(page)
    assert '<span class="level">B2</span>' in view and "Upper intermediate" in view
    assert "overall scores = the sentences&#39; scores averaged" in view  # the method
    svg = view[view.index("<svg"):view.index("</svg>")]
    bars = re.findall(r'<rect class="bar" x="40" y="\d+" width="([\d.]+)"', svg)
    assert [float(w) for w in bars] == [3.0, 12.0, 60.0, 165.0, 45.0, 15.0]  # score × 300
    assert svg.count('class="level-row chosen"') == 1 and "B2 55.0%" in svg
    table = view[view.index('<table class="cefr-sentences">'):]
    assert table.count("<tr>") == 3 and "The cat sat on the mat." in table and "80.0%" in table
    model, words = result["model"], " ".join(view.split())
    assert str(escape(model["name"])) in words and str(escape(model["description"])) in words
    assert (f"exact level {percent(model['dev']['exact_accuracy'])} of the time, "
            f"within one level {percent(model['dev']['within_one_accuracy'])}") in words
    assert_no_inline_style_or_script(page)


def test_cefr_view_points_to_cefr_json_when_the_result_keeps_only_200_sentences(app, alice):
    sentences = [(f"Sentence number {i} is short.", "A2", one_hot("A2")) for i in range(200)]
    result = {**cefr_result(sentences), "sentence_count": 250, "sentences_in_result": False}
    job_id = finished_job(app, "alice", "cefr", {"text": "…"}, result, {"cefr.json": b"{}"})
    view = result_section(alice.page(f"/jobs/{job_id}"))
    assert "The first 200 of 250 sentences" in " ".join(view.split())
    assert f'href="/jobs/{job_id}/files/cefr.json"' in view
    assert view.count("<tr>") == 201


# -- sleep ---------------------------------------------------------------------------------------
def test_sleep_view_is_a_short_summary(app_factory):
    app = app_factory(SLEEP_KIND_FOR_EVERYONE=True)
    app.extensions["ilgun"].users.create("alice", PASSWORD)
    job_id = finished_job(app, "alice", "sleep", {"duration": 0.5, "steps": 2, "write_file": True},
                          {"slept": 0.5, "steps": 2, "attempt": 1, "began_at": 1714557600.123456},
                          {"sleep.txt": b"job x attempt 1\n"})
    view = result_section(Browser(app, "alice").page(f"/jobs/{job_id}"))
    assert "Slept 0.5 s in 2 steps, on attempt 1." in " ".join(view.split())
    assert f'href="/jobs/{job_id}/files/sleep.txt"' in view


# -- result content is data, never markup ----------------------------------------------------------
def test_html_in_results_is_escaped_in_every_view(app, alice, tmp_path):
    ocr = ocr_result(second_page_text=f"{XSS}\nplain")
    ocr_id = finished_job(app, "alice", "ocr", {"file_id": ocr["file_id"]}, ocr, ocr_files(ocr))
    rows = [crawl_row("https://site.example/x", title=XSS, fields={"price": XSS, "tags": [XSS]},
                      error={"code": "HTTP_500", "message": f'"><img src=x onerror=alert(1)>{XSS}'}, status=500)]
    crawl_id = finished_job(app, "alice", "crawl", CRAWL_PARAMS, crawl_result(1), {"pages.jsonl": jsonl(rows)})
    cefr_id = finished_job(app, "alice", "cefr", {"text": XSS}, cefr_result([(XSS, "A1", one_hot("A1"))]))
    report, files = real_report(tmp_path, [f"Contact: {XSS} billing@example.com"])
    report["source"]["name"] = XSS
    report_id = finished_job(app, "alice", "report", REPORT_PARAMS, report, files)
    download = {**download_result(), "filename": "x.csv", "content_type": XSS, "final_url": f"https://e.org/{XSS}"}
    download_id = finished_job(app, "alice", "download", {"url": "http://files.example.org/latest"}, download,
                               {"x.csv": DOWNLOAD_BODY})
    for job_id in (ocr_id, crawl_id, cefr_id, report_id, download_id):
        page = alice.page(f"/jobs/{job_id}")
        view = result_section(page)
        assert XSS not in page and "<img src=x" not in page, job_id
        assert XSS_ESCAPED in view, job_id
        assert_no_inline_style_or_script(page)
    # the report's own HTML escapes too, and is served sandboxed whatever it holds
    shown = alice.get(f"/jobs/{report_id}/files/report.html?view=1")
    assert XSS.encode() not in shown.data and "sandbox" in shown.headers["Content-Security-Policy"]


def test_web_url_accepts_only_http_and_https_with_a_host():
    from service.pages.presenters import is_web_url
    for url in ("http://example.org", "https://example.org/a?b=c#d", "HTTPS://EXAMPLE.ORG/"):
        assert is_web_url(url), url
    for url in ("javascript:alert(1)", " javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x",
                "vbscript:x", "//example.org/", "/relative", "http:///nohost", "https://[::1", "", None, 42):
        assert not is_web_url(url), url

"""The ocr and report kinds end to end: upload → job → engine → result and files, with real
PaddleOCR and Tesseract, generated documents with known contents, and hostile documents."""
from __future__ import annotations

import difflib
import hashlib
import io
import zipfile

import pytest
from openpyxl import Workbook

from service.ocr import available, samples
from service.reports.schema import validate
from tests.conftest import assert_error, assert_ok, sign_up

TRUTH = "\n".join(samples.SAMPLE_LINES)


def similarity(got: str, want: str) -> float:
    return difflib.SequenceMatcher(None, " ".join(got.split()), " ".join(want.split())).ratio()


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def text_png() -> bytes:
    return png_bytes(samples.text_image())


def submit_with_file(api, kind: str, data: bytes, name: str, params: str = "{}"):
    return api.client.post("/api/v1/jobs", data={"kind": kind, "params": params, "file": (io.BytesIO(data), name)},
                           headers=api.headers(), content_type="multipart/form-data")


def run(api, kind, data, name, params="{}", timeout=120.0) -> dict:
    job = assert_ok(submit_with_file(api, kind, data, name, params), 202)
    assert job["params"]["file_name"] == name
    return api.wait(job["id"], timeout=timeout)


def files_of(api, job) -> dict[str, bytes]:
    out = {}
    for f in job["files"]:
        body = api.get(f"/api/v1/jobs/{job['id']}/files/{f['name']}")
        assert body.status_code == 200 and hashlib.sha256(body.data).hexdigest() == f["sha256"]
        out[f["name"]] = body.data
    return out


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter
    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(samples.text_pdf([["A secret page with enough words on it."]]))).pages:
        writer.add_page(page)
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="AES-256")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def workbook() -> bytes:
    wb = Workbook()
    ws = wb.active
    ws.title = "Sales"
    ws.append(["Region", "Units", "Price"])
    for row in (["North", 10, 2.5], ["South", 20, 3.5], ["East", 30, 4.0]):
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_report_of_a_workbook_has_its_statistics_and_three_files(alice, dispatcher):
    job = run(alice, "report", workbook(), "sales.xlsx", '{"ocr": false}')
    assert job["status"] == "succeeded", job
    result = job["result"]
    validate(result)
    sheet = result["sheets"][0]
    assert sheet["name"] == "Sales"
    units = next(c for c in sheet["columns"] if c["header"] == "Units")
    assert units["numeric"] == {"count": 3, "sum": 60, "mean": 20, "min": 10, "max": 30}
    files = files_of(alice, job)
    assert set(files) == {"report.json", "report.html", "report.xlsx"}
    assert b"Sales" in files["report.html"] and files["report.xlsx"].startswith(b"PK")
    assert zipfile.ZipFile(io.BytesIO(files["report.xlsx"])).testzip() is None


def test_report_of_a_pdf_finds_its_key_fields(alice, dispatcher):
    pdf = samples.text_pdf([["Invoice No. INV-2024-117", "Date: 2024-03-03", "Total: 1,250.00 EUR",
                             "Contact: billing@example.com"]])
    job = run(alice, "report", pdf, "invoice.pdf", '{"ocr": false}')
    assert job["status"] == "succeeded", job
    fields = {(f["type"], f["value"] if f["type"] != "money" else f["amount"]) for f in job["result"]["fields"]}
    assert ("email", "billing@example.com") in fields and ("date", "2024-03-03") in fields
    assert ("money", "1250.00") in fields
    assert any(f["type"] == "reference" and "INV-2024-117" in f["text"] for f in job["result"]["fields"])


def test_ocr_of_an_image_with_paddle(alice, dispatcher, text_png):
    job = run(alice, "ocr", text_png, "lines.png")
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["engine"]["name"] == "paddle" and result["ocr_pages"] == 1 and result["page_count"] == 1
    assert similarity(result["text"], TRUTH) >= 0.95, result["text"]
    line = result["pages"][0]["lines"][0]
    assert len(line["box"]) == 4 and 0 < line["confidence"] <= 1
    files = files_of(alice, job)
    assert files["text.txt"].decode() == result["text"]
    log = alice.get(f"/api/v1/jobs/{job['id']}/log").get_json()["data"]["lines"]
    assert any("1 by OCR" in l["message"] for l in log)


def test_ocr_of_a_pdf_uses_the_text_layer_and_ocrs_the_scanned_page(alice, dispatcher, text_png):
    from PIL import Image
    text_only = samples.text_pdf([["The first page has a real text layer with enough letters."]])
    job = run(alice, "ocr", text_only, "text.pdf")
    assert job["status"] == "succeeded" and job["result"]["pages"][0]["source"] == "pdf-text"
    assert job["result"]["engine"]["name"] is None  # no engine was needed
    scanned = samples.image_pdf([Image.open(io.BytesIO(text_png))])
    job = run(alice, "ocr", scanned, "scan.pdf")
    assert job["status"] == "succeeded", job
    assert job["result"]["pages"][0]["source"] == "pdf-render"
    assert similarity(job["result"]["text"], TRUTH) >= 0.95


def test_ocr_with_tesseract_and_report_of_an_image_with_ocr(alice, dispatcher, text_png):
    if not available.tesseract_binary():
        pytest.skip("tesseract is not installed (CI installs it)")
    job = run(alice, "ocr", text_png, "lines.png", '{"engine": "tesseract", "lang": "eng"}')
    assert job["status"] == "succeeded" and job["result"]["engine"]["name"] == "tesseract"
    assert similarity(job["result"]["text"], TRUTH) >= 0.95
    job = run(alice, "report", text_png, "lines.png", '{"engine": "tesseract"}')
    assert job["status"] == "succeeded", job
    assert similarity(job["result"]["text"]["content"], TRUTH) >= 0.95
    assert any(f["type"] == "money" for f in job["result"]["fields"])


def test_engines_and_languages_not_installed_are_a_400_naming_the_fix(alice, text_png):
    resp = submit_with_file(alice, "ocr", text_png, "a.png", '{"engine": "tesseract", "lang": "zzz"}')
    body = assert_error(resp, 400, {"OCR_LANGUAGE_UNAVAILABLE", "OCR_ENGINE_UNAVAILABLE"})
    assert "apt-get install" in body["message"]
    resp = submit_with_file(alice, "ocr", text_png, "a.png", '{"engine": "paddle", "lang": "kor"}')
    assert "tesseract" in assert_error(resp, 400, "OCR_LANGUAGE_UNAVAILABLE")["message"]
    assert_error(submit_with_file(alice, "ocr", text_png, "a.png", '{"engine": "gocr"}'), 400, "VALIDATION_ERROR")
    assert alice.get("/api/v1/files").get_json()["data"]["total"] == 0   # refused jobs keep no file


def test_another_users_or_a_deleted_file(app, alice, bob, dispatcher, text_png):
    upload = alice.client.post("/api/v1/files", data={"file": (io.BytesIO(text_png), "a.png")},
                               headers=alice.headers(), content_type="multipart/form-data").get_json()["data"]
    assert_error(bob.submit("ocr", {"file_id": upload["id"]}), 404, "FILE_NOT_FOUND")
    assert_error(bob.submit("report", {"file_id": upload["id"]}), 404, "FILE_NOT_FOUND")
    assert_error(alice.submit("ocr", {"file_id": "../../etc/passwd"}), 400, "VALIDATION_ERROR")
    # deleted after the submit, before the job ran: a failed job, not a crash
    svc = app.extensions["ilgun"]
    svc.dispatcher.stop(timeout=1)
    svc.dispatcher = None
    job = assert_ok(alice.submit("report", {"file_id": upload["id"], "ocr": False}), 202)
    assert_ok(alice.delete(f"/api/v1/files/{upload['id']}"))
    from service.runtime import start_worker_runtime
    start_worker_runtime(app)
    done = alice.wait(job["id"], timeout=30)
    assert done["status"] == "failed" and done["error"]["code"] == "FILE_NOT_FOUND"


def test_hostile_documents_fail_cleanly_and_the_worker_goes_on(alice, dispatcher):
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(400):           # 400 MiB of zeros, about 400 KiB compressed
                member.write(chunk)
    job = run(alice, "report", bomb.getvalue(), "bomb.xlsx")
    assert job["status"] == "failed" and job["error"]["code"] == "XLSX_TOO_LARGE", job
    png = samples.png_bomb()
    job = run(alice, "ocr", png, "bomb.png")
    assert job["status"] == "failed" and job["error"]["code"] == "IMAGE_TOO_LARGE", job
    job = run(alice, "report", png, "bomb.png")
    assert job["status"] == "failed" and job["error"]["code"] == "IMAGE_TOO_LARGE", job
    truncated = samples.text_pdf([["A page of text that is long enough to count as text."]])[:200]
    job = run(alice, "ocr", truncated, "cut.pdf")
    assert job["status"] == "failed" and job["error"]["code"] == "PDF_INVALID", job
    cut_png = png_bytes(samples.text_image())[:300]     # a truncated upload: PNG by its magic bytes
    job = run(alice, "ocr", cut_png, "cut.png")
    assert job["status"] == "failed" and job["error"]["code"] == "IMAGE_INVALID", job
    job = run(alice, "report", cut_png, "cut.png")
    assert job["status"] == "failed" and job["error"]["code"] == "IMAGE_INVALID", job
    job = run(alice, "ocr", encrypted_pdf(), "secret.pdf")
    assert job["status"] == "failed" and job["error"]["code"] == "PDF_ENCRYPTED", job
    job = run(alice, "report", encrypted_pdf(), "secret.pdf")
    assert job["status"] == "failed" and job["error"]["code"] == "PDF_ENCRYPTED", job
    job = run(alice, "report", workbook(), "fine.xlsx", '{"ocr": false}')   # the worker is fine
    assert job["status"] == "succeeded"


def test_a_big_ocr_result_keeps_its_boxes_in_the_file_only(app_factory, text_png):
    import json

    from tests.conftest import running_app
    app, admin = running_app(app_factory, OCR_RESULT_MAX_LINES=2)
    job = run(admin, "ocr", text_png, "lines.png")
    assert job["status"] == "succeeded", job
    assert job["result"]["lines_in_result"] is False and job["result"]["pages"][0]["lines"] == []
    assert similarity(job["result"]["text"], TRUTH) >= 0.95       # the text stays whole
    full = json.loads(files_of(admin, job)["ocr.json"])
    assert len(full["pages"][0]["lines"]) == len(samples.SAMPLE_LINES)


def test_ocr_preload_loads_and_warms_the_engine_when_a_worker_starts(app_factory):
    import time

    from service.ocr import get_cache
    app = app_factory(OCR_PRELOAD=True)
    cache = get_cache(app.config)
    cache.release_all()
    loads = cache.loads
    from service.runtime import start_worker_runtime
    start_worker_runtime(app)
    deadline = time.monotonic() + 60
    while not any(e["engine"] == "paddle" and e["loaded"] and e["uses"] >= 1 for e in cache.snapshot()):
        assert time.monotonic() < deadline, cache.snapshot()
        time.sleep(0.2)
    assert cache.loads == loads + 1

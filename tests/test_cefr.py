"""The cefr kind and POST /api/v1/cefr with the real default model (assembled by `make test`'s
setup into the venv): scores as the transformers pipeline gives them, long texts, threads,
the cache, the executor (never the request thread) and the missing-model error."""
from __future__ import annotations

import threading

import pytest

from service.cefr import classifier
from service.cefr.classifier import LEVELS
from service.errors import ModelUnavailable
from tests.conftest import assert_error, assert_ok

ELEMENTARY = ["I like my cat.", "This is my house.", "He has a red car.", "We go to school every day."]
ADVANCED = ["The ramifications of the committee's equivocal stance on fiscal consolidation remain contentious "
            "among economists.",
            "Notwithstanding the ostensible robustness of the methodology, its epistemological underpinnings "
            "warrant rigorous scrutiny."]


@pytest.fixture(scope="module")
def model():
    return classifier.get_model({})


def test_scores_are_the_pipelines_for_all_six_levels(model):
    texts = ELEMENTARY[:2] + ADVANCED[:1]
    ours = model.scores(texts)
    theirs = model.pipeline(texts, top_k=None, truncation=True)
    for mine, reference in zip(ours, theirs):
        assert list(mine) == list(LEVELS)
        assert abs(sum(mine.values()) - 1) < 1e-4
        for item in reference:
            assert abs(mine[item["label"].upper()] - item["score"]) < 1e-4


def test_elementary_sentences_grade_below_advanced_ones(model):
    easy = [model.grade(t)["expected_level"] for t in ELEMENTARY]
    hard = [model.grade(t)["expected_level"] for t in ADVANCED]
    assert max(easy) < min(hard), (easy, hard)
    assert model.grade(ADVANCED[0])["level"] in ("B2", "C1", "C2")
    assert model.grade(ELEMENTARY[0])["level"] in ("A1", "A2")


def test_long_texts_are_cut_into_sentences_and_combined(model):
    text = " ".join(ELEMENTARY * 30 + ADVANCED * 30)   # ~2,500 tokens
    result = model.grade(text)
    assert result["sentence_count"] == len(ELEMENTARY) * 30 + len(ADVANCED) * 30
    assert result["level"] in LEVELS and abs(sum(result["scores"].values()) - 1) < 1e-3
    assert "weighted by their word counts" in result["method"]
    run_on = "word " * 2500  # no punctuation at all: cut into runs the model can read whole
    cut = model.grade(run_on)
    assert cut["sentence_count"] == 2500 // 80 + 1 and cut["words"] == 2500


def test_threads_share_one_model(model):
    errors, results = [], []

    def work(text):
        try:
            for _ in range(5):
                results.append(model.scores([text])[0])
        except Exception as exc:  # noqa: BLE001 - "Already borrowed" would land here
            errors.append(repr(exc))
    threads = [threading.Thread(target=work, args=(t,)) for t in ELEMENTARY + ADVANCED]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 5 * len(threads)


def test_identical_texts_come_from_the_cache(monkeypatch):
    config = {"CEFR_CACHE_SIZE": 10, "CEFR_CACHE_TTL": 60}
    monkeypatch.setattr(classifier, "_cache", None)
    first = classifier.grade(config, "The cat sat on the mat today.")
    again = classifier.grade(config, "The cat sat on the mat today.")
    assert first["cached"] is False and again["cached"] is True
    assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    assert classifier.cached_grade(config, "Another text entirely.") is None


def test_a_missing_model_says_how_to_make_it(tmp_path, monkeypatch):
    with pytest.raises(ModelUnavailable) as missing:
        classifier.check_model({"CEFR_MODEL": str(tmp_path / "nothing")})
    assert missing.value.code == "CEFR_MODEL_MISSING" and "CEFR_MODEL" in missing.value.message
    monkeypatch.setattr("service.cefr.assemble.DEFAULT_TARGET", tmp_path / "not-assembled")
    with pytest.raises(ModelUnavailable) as default_missing:
        classifier.check_model({})
    assert "make setup" in default_missing.value.message and "service.cefr.assemble" in default_missing.value.message


def test_sync_endpoint_runs_on_an_executor_thread(app, alice, dispatcher, monkeypatch):
    seen = []
    real = classifier.grade
    monkeypatch.setattr(classifier, "grade", lambda *a, **kw: seen.append(threading.current_thread().name) or real(*a, **kw))
    data = assert_ok(alice.post("/api/v1/cefr", {"text": "My name is Tom. I am ten."}))
    assert data["level"] in LEVELS and set(data["scores"]) == set(LEVELS) and data["model"]["dir"]
    assert seen and seen[0].startswith("ilgun-job")  # the worker's executor, not the request thread
    again = assert_ok(alice.post("/api/v1/cefr", {"text": "My name is Tom. I am ten."}))
    assert again["cached"] is True and len(seen) == 1  # answered from the cache


def test_sync_endpoint_errors(app_factory, alice, dispatcher):
    assert_error(alice.post("/api/v1/cefr", {"text": "x" * 5001}), 400, "VALIDATION_ERROR")
    assert_error(alice.post("/api/v1/cefr", {}), 400, "VALIDATION_ERROR")
    assert_error(alice.post("/api/v1/cefr", {"text": "Hi.", "other": 1}), 400, "VALIDATION_ERROR")
    for _ in range(dispatcher.slots):
        assert dispatcher.reserve_slot()
    try:
        body = assert_error(alice.post("/api/v1/cefr", {"text": "Every slot is busy now."}), 503, "EXECUTOR_BUSY")
    finally:
        for _ in range(dispatcher.slots):
            dispatcher.release_slot()
    assert body["details"] is None or isinstance(body["details"], dict)


def test_missing_model_answers_503_at_submit_and_now(app_factory, tmp_path):
    from tests.conftest import sign_up
    app = app_factory(CEFR_MODEL=str(tmp_path / "none"))
    user = sign_up(app, app.test_client(), "carol")
    assert_error(user.submit("cefr", {"text": "Hello there."}), 503, "CEFR_MODEL_MISSING")
    assert_error(user.post("/api/v1/cefr", {"text": "Hello there."}), 503, "CEFR_MODEL_MISSING")


def test_cefr_job_result_and_file_for_long_texts(app, alice, dispatcher):
    job = assert_ok(alice.submit("cefr", {"text": "I like tea. " * 3 + ADVANCED[0]}), 202)
    done = alice.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["level"] in LEVELS and result["sentence_count"] == 4 and result["model"]["name"]
    long_job = assert_ok(alice.submit("cefr", {"text": "I like tea. " * 250}), 202)
    done = alice.wait(long_job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["result"]["sentences_in_result"] is False
    assert {f["name"] for f in done["files"]} == {"cefr.json"}


def test_sync_endpoint_times_out_and_gives_the_slot_back(app_factory, monkeypatch):
    import time

    from service.runtime import start_worker_runtime
    from tests.conftest import sign_up
    app = app_factory(CEFR_SYNC_TIMEOUT=0.2)
    user = sign_up(app, app.test_client(), "dave")
    dispatcher = start_worker_runtime(app)
    monkeypatch.setattr(classifier, "grade", lambda *a, **kw: time.sleep(1.0) or {})
    started = time.monotonic()
    assert_error(user.post("/api/v1/cefr", {"text": "A slow one."}), 503, "CEFR_TIMEOUT")
    assert time.monotonic() - started < 0.9  # answered at the timeout, not when grading ended
    deadline = time.monotonic() + 5
    while dispatcher._free_slots() != dispatcher.slots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dispatcher._free_slots() == dispatcher.slots  # the slot came back when the work ended

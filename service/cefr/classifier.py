"""The CEFR model in a process: loaded once (in the gunicorn master when CEFR_PRELOAD, so the
workers share its memory), graded on executor threads, results cached by text.

Why not call the pipeline from several threads directly: its fast tokenizer is a Rust object
that refuses concurrent use ("Already borrowed"). So tokenising holds a lock (fast), and the
model's forward pass runs outside it: torch releases the GIL there, so two executor threads
grade at once. Scores are the pipeline's own (softmax over the logits); tests check them
against ``pipeline(...)(text, top_k=None)``.

Fork safety: torch is set to one thread before anything loads, and nothing runs inference in
the master: an OpenMP (libgomp) pool created before fork hangs the children. The warm-up
inference runs in each worker after fork (``warm_up``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from cachetools import TTLCache

from service.cefr.text import pieces
from service.errors import ModelUnavailable

log = logging.getLogger(__name__)

LEVELS = ("A1", "A2", "B1", "B2", "C1", "C2")
METHOD = ("each sentence graded (long ones cut into runs of at most 80 words); overall scores = the "
          "sentences' scores averaged, weighted by their word counts; level = the highest overall score")
MAX_RESULT_PIECES = 200  # per-sentence levels kept in a result (all of them go to cefr.json)


CefrModelMissing = ModelUnavailable  # 503 CEFR_MODEL_MISSING (service/errors.py)


def model_dir(config: Mapping[str, Any]) -> Path:
    configured = str(config.get("CEFR_MODEL") or "").strip()
    if configured:
        return Path(configured).expanduser()
    from service.cefr.assemble import DEFAULT_TARGET
    return DEFAULT_TARGET


def check_model(config: Mapping[str, Any]) -> Path:
    """The model folder, or CefrModelMissing naming the command that makes it."""
    path = model_dir(config)
    if not (path / "config.json").is_file():
        how = ("run `make setup` (or `.venv/bin/python -m service.cefr.assemble`) to assemble the default model"
               if not config.get("CEFR_MODEL") else "CEFR_MODEL must name a local sequence-classification model folder")
        raise CefrModelMissing(f"No CEFR model at {path}: {how}.", details={"model_dir": str(path)})
    return path


def _levels_of(id2label: Mapping[int, str]) -> list[str]:
    """The model's labels as CEFR levels: named A1..C2 (any case), or six LABEL_i taken in order."""
    labels = [str(id2label[i]).strip().upper() for i in range(len(id2label))]
    if sorted(labels) == sorted(LEVELS):
        return labels
    if len(labels) == 6 and all(label.startswith("LABEL_") for label in labels):
        return list(LEVELS)
    raise CefrModelMissing(f"The model's labels {labels} are not the six CEFR levels A1..C2.")


class CefrModel:
    def __init__(self, path: Path, *, max_length: int = 128, batch_size: int = 32, torch_threads: int = 1):
        import torch
        torch.set_num_threads(torch_threads)  # before anything loads: see the module docstring
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import pipeline
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load in the service's logs
        started = time.monotonic()
        self.pipeline = pipeline("text-classification", model=str(path), tokenizer=str(path),
                                 device="cpu", truncation=True, top_k=None)
        self.model, self.tokenizer = self.pipeline.model.eval(), self.pipeline.tokenizer
        self.levels = _levels_of(self.model.config.id2label)
        self.path, self.max_length, self.batch_size = path, max_length, batch_size
        self.info = _model_info(path)
        self.load_seconds = time.monotonic() - started
        self._tokenizer_lock = threading.Lock()

    def scores(self, texts: list[str]) -> list[dict[str, float]]:
        """Each text's probability per level (the pipeline's softmax), in LEVELS order."""
        import torch
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                     return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**encoded).logits
        out = []
        for row in torch.softmax(logits.float(), dim=-1).tolist():
            by_level = dict(zip(self.levels, row))
            out.append({level: round(by_level[level], 6) for level in LEVELS})
        return out

    def grade(self, text: str, *, progress: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None, max_pieces: int = 5000) -> dict:
        parts = pieces(text)
        truncated = len(parts) > max_pieces
        parts = parts[:max_pieces]
        graded: list[dict[str, float]] = []
        for start in range(0, len(parts), self.batch_size):
            if cancelled is not None and cancelled():
                return {}
            graded += self.scores(parts[start:start + self.batch_size])
            if progress is not None:
                progress(len(graded), len(parts))
        weights = [len(p.split()) for p in parts]
        total = sum(weights) or 1
        overall = {lv: round(sum(w * s[lv] for w, s in zip(weights, graded)) / total, 6) for lv in LEVELS}
        level = max(LEVELS, key=lambda lv: overall[lv]) if parts else None
        expected = sum((i + 1) * overall[lv] for i, lv in enumerate(LEVELS)) if parts else None
        sentences = [{"text": p[:300], "level": max(LEVELS, key=s.get), "scores": s} for p, s in zip(parts, graded)]
        return {"level": level, "scores": overall, "expected_level": round(expected, 3) if parts else None,
                "method": METHOD if len(parts) > 1 else "one sentence: the model's scores for it",
                "sentence_count": len(parts), "words": sum(weights), "truncated": truncated,
                "sentences": sentences, "model": self.info}


def _model_info(path: Path) -> dict:
    """What the model is and how it did on dev, for every result: the default model's metrics
    file (service/cefr/model/metrics.json) or a metrics.json in a custom model's folder."""
    info: dict[str, Any] = {"dir": str(path)}
    from service.cefr.assemble import DEFAULT_TARGET
    candidates = [path / "metrics.json"]
    if path.resolve() == DEFAULT_TARGET.resolve():
        candidates.insert(0, Path(__file__).resolve().parent / "model" / "metrics.json")
    for candidate in candidates:
        if candidate.is_file():
            try:
                metrics = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            dev = metrics.get("dev") if isinstance(metrics.get("dev"), dict) else metrics
            info["name"] = metrics.get("name") or path.name
            if metrics.get("model"):
                info["description"] = metrics["model"]
            data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
            if data.get("licence"):
                info["training_data"] = f"{data.get('name', '')}, {data['licence']}".strip(", ")
            info["dev"] = {"exact_accuracy": dev.get("accuracy", dev.get("exact_accuracy")),
                           "within_one_accuracy": dev.get("within_one_accuracy"), "macro_f1": dev.get("macro_f1")}
            break
    info.setdefault("name", path.name)
    return info


# -- the process's model and cache ---------------------------------------------------------
_lock = threading.Lock()
_models: dict[str, CefrModel] = {}
_cache: TTLCache | None = None


def get_model(config: Mapping[str, Any]) -> CefrModel:
    path = check_model(config)
    key = str(path.resolve())
    model = _models.get(key)
    if model is None:
        with _lock:
            model = _models.get(key)
            if model is None:
                model = _models[key] = CefrModel(
                    path, max_length=int(config.get("CEFR_MAX_LENGTH", 128)),
                    batch_size=int(config.get("CEFR_BATCH_SIZE", 32)),
                    torch_threads=int(config.get("CEFR_TORCH_THREADS", 1)))
                log.info("CEFR model loaded from %s in %.1fs", path, model.load_seconds)
    return model


def cache(config: Mapping[str, Any]) -> TTLCache:
    global _cache
    with _lock:
        if _cache is None:
            _cache = TTLCache(maxsize=int(config.get("CEFR_CACHE_SIZE", 2048)),
                              ttl=float(config.get("CEFR_CACHE_TTL", 3600)))
        return _cache


def cache_key(model: CefrModel, text: str) -> str:
    return hashlib.sha256(f"{model.path}\0{text}".encode()).hexdigest()


def cached_grade(config: Mapping[str, Any], text: str) -> dict | None:
    """A cached result for ``text``, or None (cheap: safe on a request thread)."""
    model = _models.get(str(model_dir(config).resolve()))
    if model is None:
        return None
    results = cache(config)
    with _lock:
        hit = results.get(cache_key(model, text))
    return {**hit, "cached": True} if hit is not None else None


def grade(config: Mapping[str, Any], text: str, **kw) -> dict:
    """Grade ``text`` (from the cache when it was graded before in this process)."""
    model = get_model(config)
    key, results = cache_key(model, text), cache(config)
    with _lock:
        hit = results.get(key)
    if hit is not None:
        return {**hit, "cached": True}
    result = model.grade(text, **kw)
    if result:
        with _lock:
            results[key] = result
    return {**result, "cached": False}


def preload(config: Mapping[str, Any]) -> CefrModel | None:
    """Load the model in this (master) process, no inference; None when there is none yet."""
    try:
        return get_model(config)
    except CefrModelMissing as exc:
        log.warning("CEFR model not preloaded: %s", exc.message)
        return None


def warm_up(config: Mapping[str, Any]) -> threading.Thread | None:
    """After fork: one inference on a background thread, so the first real request does not pay
    for torch's lazy start-up. Only if the model is already loaded (preloaded in the master)."""
    model = _models.get(str(model_dir(config).resolve()))
    if model is None:
        return None
    thread = threading.Thread(target=lambda: model.scores(["A warm-up sentence."]), name="cefr-warm-up",
                              daemon=True)
    thread.start()
    return thread

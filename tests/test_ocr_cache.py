"""The engine cache's rules with stand-in engines (fast and deterministic): lazy loading, LRU
size, the one-PaddleOCR-per-process rule, idle TTL and the reaper, waiting for room, failed
loads. test_ocr_engines.py checks the same cache with the real PaddleOCR."""
from __future__ import annotations

import threading
import time

import pytest

from service.ocr.cache import EngineCache
from service.ocr.engines import EngineSpec, OcrEngine
from service.ocr.errors import EngineBusy, EngineWaitCancelled


class FakeEngine(OcrEngine):
    def __init__(self, name, key, log):
        self.name, self.key, self.log = name, key, log
        self.closed = False
        log.append(("load", key))

    def recognize(self, image):
        return []

    def close(self):
        self.closed = True
        self.log.append(("close", self.key))


def make_cache(size=1, ttl=0.0, fail=()):
    log: list = []

    def resolver(name, options, config):
        options = options or {}
        key = (name, options.get("variant", "a"))
        if key in fail:
            def build():
                log.append(("failed", key))
                raise RuntimeError("broken model")
        else:
            def build():
                return FakeEngine(name, key, log)
        return EngineSpec(name, key, name != "light", build)
    return EngineCache({}, size=size, idle_ttl=ttl, resolver=resolver), log


def test_loads_lazily_once_and_keeps_the_engine():
    cache, log = make_cache()
    assert log == [] and cache.snapshot() == []
    for _ in range(3):
        with cache.use("paddle") as engine:
            first = first if _ else engine
            assert engine is first
    assert log == [("load", ("paddle", "a"))] and cache.loads == 1
    (entry,) = cache.snapshot()
    assert entry["uses"] == 3 and entry["loaded"] and not entry["busy"]


def test_lru_drops_the_least_recently_used_idle_engine():
    cache, log = make_cache(size=2)
    for name in ("tesseract-like-heavy", "paddle", "tesseract-like-heavy", "other"):
        with cache.use(name):
            pass
    # size 2: loading "other" dropped "paddle", the least recently used
    assert ("close", ("paddle", "a")) in log and cache.releases == 1
    assert {e["engine"] for e in cache.snapshot()} == {"tesseract-like-heavy", "other"}


def test_only_one_paddle_engine_whatever_the_size():
    cache, log = make_cache(size=4)
    with cache.use("paddle", {"variant": "a"}):
        pass
    with cache.use("other"):
        pass
    with cache.use("paddle", {"variant": "b"}):
        pass
    assert log == [("load", ("paddle", "a")), ("load", ("other", "a")), ("close", ("paddle", "a")),
                   ("load", ("paddle", "b"))]


def test_light_engines_are_built_per_use_and_not_held():
    cache, log = make_cache()
    with cache.use("paddle"):
        with cache.use("light"):  # does not wait for room, does not evict
            pass
    assert cache.loads == 1 and [e["engine"] for e in cache.snapshot()] == ["paddle"]
    assert log.count(("close", ("light", "a"))) == 1


def test_idle_engines_are_released_by_the_reaper_and_on_next_use():
    cache, log = make_cache(ttl=0.2)
    with cache.use("paddle") as engine:
        pass
    assert cache._reaper is not None and cache._reaper.is_alive()
    deadline = time.monotonic() + 3
    while cache.releases == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.snapshot() == [] and engine.closed and cache.releases == 1
    cache.close()

    lazy, _ = make_cache(ttl=0.1)
    lazy._reaper_enabled = False  # only the check on the next use
    with lazy.use("paddle") as first:
        pass
    time.sleep(0.15)
    with lazy.use("paddle") as second:
        assert second is not first and first.closed
    assert lazy.loads == 2


def test_a_busy_engine_is_never_released():
    cache, _ = make_cache(ttl=0.05)
    with cache.use("paddle") as engine:
        time.sleep(0.3)
        assert cache.release_expired() == 0 and cache.release_all() == 0 and not engine.closed
    cache.close()
    assert engine.closed


def test_a_thread_needing_room_waits_for_the_other_engine_to_be_idle():
    cache, log = make_cache(size=1)
    order = []
    release = threading.Event()

    def holder():
        with cache.use("paddle"):
            order.append("paddle in use")
            release.wait(5)
        order.append("paddle done")

    t = threading.Thread(target=holder)
    t.start()
    while not order:
        time.sleep(0.01)
    with pytest.raises(EngineBusy):
        with cache.use("other", timeout=0.3):
            pass
    with pytest.raises(EngineWaitCancelled):
        with cache.use("other", cancelled=lambda: True):
            pass
    threading.Timer(0.3, release.set).start()
    with cache.use("other"):
        order.append("other in use")
    t.join(5)
    assert order == ["paddle in use", "paddle done", "other in use"]
    assert log[-2:] == [("close", ("paddle", "a")), ("load", ("other", "a"))]
    assert [e["engine"] for e in cache.snapshot()] == ["other"]


def test_a_failed_load_leaves_nothing_behind_and_is_retried():
    cache, log = make_cache(fail={("paddle", "a")})
    for _ in range(2):
        with pytest.raises(RuntimeError):
            with cache.use("paddle"):
                pass
    assert log == [("failed", ("paddle", "a"))] * 2 and cache.snapshot() == [] and cache.loads == 0
    with cache.use("other"):  # the slot is free
        pass

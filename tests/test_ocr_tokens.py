"""The host's places for PaddleOCR engines (service/ocr/tokens.py): file locks shared by the
worker processes; the cache takes one before building a heavy engine and gives it back when it
drops it; a process waiting for one gets another process's idle engine dropped; the dispatcher
does not claim OCR jobs where no place is free. The real multi-worker case, with PaddleOCR, is in
tests/integration/test_gunicorn_ocr.py; here the engines are stand-ins (test_ocr_cache.py)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.engine.local_room import LocalRoom
from service.ocr.cache import EngineCache
from service.ocr.engines import EngineSpec, OcrEngine
from service.ocr.errors import EngineBusy
from service.ocr.tokens import EngineTokens


class StandIn(OcrEngine):
    name = "paddle"

    def recognize(self, image):
        return []


def heavy(name, options, config):
    return EngineSpec("paddle", ("paddle",), True, StandIn)


def worker_cache(folder, count=1, ttl=300.0) -> EngineCache:
    """One gunicorn worker's cache: its own EngineTokens object on the host's shared folder."""
    return EngineCache({}, size=1, idle_ttl=ttl, resolver=heavy, tokens=EngineTokens(folder, count))


def test_a_token_is_held_by_one_process_at_a_time(tmp_path):
    a, b = EngineTokens(tmp_path, 1), EngineTokens(tmp_path, 1)   # two processes' views
    assert a.free_or_held() and not a.held          # looking does not take it
    assert a.try_take() and a.held
    assert not b.try_take() and not b.free_or_held()
    assert a.try_take()                              # a process holds at most one, taking again is a no-op
    a.give_back()
    assert b.free_or_held() and b.try_take() and not a.free_or_held()


def test_two_tokens_two_holders(tmp_path):
    views = [EngineTokens(tmp_path, 2) for _ in range(3)]
    assert [v.try_take() for v in views] == [True, True, False]


def test_a_dead_process_leaves_no_token_behind(tmp_path):
    script = ("import sys; from service.ocr.tokens import EngineTokens; "
              f"t = EngineTokens({str(tmp_path)!r}, 1); assert t.try_take(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).resolve().parents[1]))
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = EngineTokens(tmp_path, 1)
        assert not mine.try_take()
        holder.kill()
        holder.wait(10)
        assert mine.try_take()
    finally:
        holder.kill()


def test_the_cache_holds_a_token_exactly_while_it_holds_a_heavy_engine(tmp_path):
    cache = worker_cache(tmp_path)
    assert not cache.tokens.held
    with cache.use("paddle"):
        assert cache.tokens.held
    assert cache.tokens.held                        # kept with the idle engine
    cache.release_all()
    assert not cache.tokens.held
    cache.close()


def test_a_waiting_worker_gets_another_workers_idle_engine_dropped(tmp_path):
    a, b = worker_cache(tmp_path), worker_cache(tmp_path)
    try:
        with a.use("paddle"):
            pass                                    # a: engine loaded, idle, place held (TTL 300 s)
        began = time.monotonic()
        with b.use("paddle", timeout=10):
            waited = time.monotonic() - began
            assert b.tokens.held and not a.tokens.held
        assert a.releases == 1 and b.loads == 1
        assert waited < 5, waited                   # a's reaper answers within about a second
    finally:
        a.close(), b.close()


def test_a_busy_engine_is_not_taken_away(tmp_path):
    a, b = worker_cache(tmp_path), worker_cache(tmp_path)
    try:
        with a.use("paddle"):
            with pytest.raises(EngineBusy):
                with b.use("paddle", timeout=2.0):
                    pass
            assert a.releases == 0 and b.loads == 0
    finally:
        a.close(), b.close()


def test_a_failed_build_gives_the_token_back(tmp_path):
    def broken(name, options, config):
        def build():
            raise RuntimeError("broken model")
        return EngineSpec("paddle", ("paddle",), True, build)
    cache = EngineCache({}, size=1, idle_ttl=0, resolver=broken, tokens=EngineTokens(tmp_path, 1))
    with pytest.raises(RuntimeError):
        with cache.use("paddle"):
            pass
    assert not cache.tokens.held and EngineTokens(tmp_path, 1).free_or_held()


def test_local_room_keeps_a_gated_kind_out_of_claims_and_direct_starts():
    open_ = threading.Event()
    room = LocalRoom({"ocr": 1}, {"ocr": open_.is_set})
    assert room.take([]) == {"ocr": 0}              # closed: no OCR job claimed here
    assert not room.reserve_one("ocr", [])
    open_.set()
    got = room.take([])
    assert got == {"ocr": 1}
    room.give_back(got)
    assert room.reserve_one("ocr", [])


def test_a_failing_gate_counts_as_open():
    def gate():
        raise OSError("disk")
    room = LocalRoom({}, {"ocr": gate})
    assert room.take([]) == {} and room.reserve_one("ocr", [])


def test_tokens_from_config(tmp_path):
    assert EngineTokens.from_config({"ILGUN_DATA": str(tmp_path), "OCR_ENGINES_PER_HOST": 0}) is None
    assert EngineTokens.from_config({"OCR_ENGINES_PER_HOST": 2}) is None   # no data folder to meet in
    t = EngineTokens.from_config({"ILGUN_DATA": str(tmp_path), "OCR_ENGINES_PER_HOST": 3})
    assert t.count == 3 and str(t.folder).startswith(str(tmp_path))


def test_the_ocr_gate_looks_at_the_tokens_at_most_every_quarter_second(tmp_path, monkeypatch):
    """The dispatcher asks the gate before every claim; a look takes file locks, so it is reused
    for EngineGate.LOOK_SECONDS (stale answers are safe: see EngineGate)."""
    from types import SimpleNamespace

    from service.kinds import ocr
    tokens, looks, now = EngineTokens(tmp_path, 1), [], [100.0]
    real_look = tokens.free_or_held

    def counted_look():
        looks.append(now[0])
        return real_look()
    tokens.free_or_held = counted_look
    monkeypatch.setattr(ocr, "get_cache", lambda config: SimpleNamespace(tokens=tokens))
    assert isinstance(ocr.OcrKind().local_gate({}), ocr.EngineGate)
    gate = ocr.EngineGate({}, clock=lambda: now[0])
    other = EngineTokens(tmp_path, 1)
    try:
        assert gate() and looks == [100.0]
        assert other.try_take()                      # another worker takes the only place
        now[0] += ocr.EngineGate.LOOK_SECONDS / 2
        assert gate() and len(looks) == 1            # within the window: the last answer
        now[0] += ocr.EngineGate.LOOK_SECONDS / 2
        assert not gate() and len(looks) == 2        # a new look sees it taken
        other.give_back()
        assert not gate() and len(looks) == 2
        now[0] += ocr.EngineGate.LOOK_SECONDS
        assert gate() and len(looks) == 3
    finally:
        other.give_back()

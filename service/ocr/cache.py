"""A per-process cache of OCR engines: loaded on first use, lent to one thread at a time,
dropped when idle.

Why: a PaddleOCR engine costs ~2 s to build, ~6 s of first-call warm-up and ~1.7 GB at its
peak (in its own process, engines.PaddleEngine), so it is kept between jobs; but a gunicorn
worker that has not OCR'd for a while should give the memory back, and one engine per worker
is what the memory of a small host allows. So:

* ``OCR_ENGINE_CACHE_SIZE`` (default 1) heavy engines at most per process, least recently used
  dropped first; at most one PaddleOCR engine whatever the size (different settings wait for the
  other to be dropped). A thread that needs room waits until an engine is idle.
* each engine is used by one thread at a time: ``use()`` blocks, checking the caller's
  ``cancelled()`` and ``timeout`` four times a second so a cancelled job stops waiting.
* an engine unused for ``OCR_ENGINE_IDLE_TTL`` seconds is dropped by a daemon reaper thread
  (and on the next ``use()``): its process exits, and here every reference is let go, then
  gc.collect() and malloc_trim().
* an engine found dead after use (its process was killed, or overran a page's time limit) is
  dropped at once, so the next use builds a new one.
* a heavy engine needs one of the host's engine places (tokens.py, OCR_ENGINES_PER_HOST) before it
  is built and gives it back when dropped; a process waiting for one gets the other workers'
  idle engines dropped within a second (the reaper watches for that too).
* light engines (tesseract: a process per page, nothing held here) are built per use, not counted.

Threads do not survive fork: use ``get_cache(config)`` in the worker, never in gunicorn's master.
Do not nest ``use()`` calls in one thread: with a size of 1 the inner one would wait forever
for room (it times out if given a timeout).
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

from service.ocr import engines
from service.ocr.errors import EngineBusy, EngineWaitCancelled
from service.ocr.tokens import EngineTokens

log = logging.getLogger(__name__)

WAIT_SLICE = 0.25  # how often a waiting thread looks at cancelled() and its deadline
_FROM_CONFIG = object()


class _Entry:
    __slots__ = ("spec", "engine", "busy", "loading", "waiters", "last_used", "loaded_at", "uses", "load_seconds")

    def __init__(self, spec: engines.EngineSpec):
        self.spec = spec
        self.engine: engines.OcrEngine | None = None
        self.busy = False        # lent to a thread (or being loaded or dropped)
        self.loading = False
        self.waiters = 0         # threads waiting for this very engine: it is not dropped under them
        self.last_used = time.monotonic()
        self.loaded_at: float | None = None
        self.uses = 0
        self.load_seconds = 0.0

    @property
    def held(self) -> bool:
        return self.engine is not None or self.loading


class EngineCache:
    def __init__(self, config: Mapping, *, size: int | None = None, idle_ttl: float | None = None,
                 resolver: Callable[..., engines.EngineSpec] = engines.resolve, reaper: bool = True,
                 tokens: EngineTokens | None | object = _FROM_CONFIG):
        self.config = config
        self.size = max(1, int(size if size is not None else config.get("OCR_ENGINE_CACHE_SIZE", 1)))
        self.idle_ttl = float(idle_ttl if idle_ttl is not None else config.get("OCR_ENGINE_IDLE_TTL", 300.0))
        self._resolve = resolver
        # the host's places for heavy engines (tokens.py), taken before one is built
        self.tokens = EngineTokens.from_config(config) if tokens is _FROM_CONFIG else tokens
        self._cond = threading.Condition()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()  # least recently used first
        # out of the table but not yet freed: still counted, so a new engine never overlaps them
        self._dropping: list[_Entry] = []
        # also without a TTL when engine places are shared: it answers workers waiting for one
        self._reaper_enabled = reaper and (self.idle_ttl > 0 or self.tokens is not None)
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()
        self.loads = 0       # engines built, for tests and metrics
        self.releases = 0    # engines dropped

    # -- the one entry point -----------------------------------------------------------------
    @contextmanager
    def use(self, name: str, options: Mapping | None = None, *, cancelled: Callable[[], bool] | None = None,
            timeout: float | None = None) -> Iterator[engines.OcrEngine]:
        """The engine for ``name`` and ``options``, for this thread alone until the block ends.
        Raises the domain errors of engines.resolve, EngineWaitCancelled or EngineBusy."""
        spec = self._resolve(name, options, self.config)
        if not spec.heavy:
            engine = spec.build()
            try:
                yield engine
            finally:
                engine.close()
            return
        self.release_expired()
        deadline = None if timeout is None else time.monotonic() + timeout
        entry = self._acquire(spec, cancelled, deadline)
        try:
            yield entry.engine
        finally:
            if not getattr(entry.engine, "alive", True):
                self._discard_dead(entry)
            with self._cond:
                entry.busy = False
                entry.uses += 1
                entry.last_used = time.monotonic()
                if entry.engine is None and entry.waiters == 0 and self._entries.get(spec.key) is entry:
                    del self._entries[spec.key]
                self._cond.notify_all()

    def warm(self, name: str, options: Mapping | None = None, **wait) -> float:
        """Load the engine if needed and run one small recognition; the seconds the latter took."""
        with self.use(name, options, **wait) as engine:
            return engine.warm()

    def preload(self, name: str, options: Mapping | None = None) -> threading.Thread:
        """warm() on a daemon thread, so a worker can start serving at once; errors are logged."""
        def run():
            try:
                seconds = self.warm(name, options)
                log.info("OCR engine %s preloaded (warm-up %.1f s)", name, seconds)
            except Exception as exc:  # a missing engine must not take the worker down
                log.warning("OCR engine %s could not be preloaded: %s", name, exc)
        thread = threading.Thread(target=run, name=f"ocr-preload-{name}", daemon=True)
        thread.start()
        return thread

    # -- lending ---------------------------------------------------------------------------
    def _wait(self, cancelled, deadline) -> None:
        """One slice of waiting on the condition (held by the caller)."""
        if cancelled is not None and cancelled():
            raise EngineWaitCancelled()
        remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise EngineBusy()
        self._cond.wait(min(WAIT_SLICE, remaining))

    def _acquire(self, spec: engines.EngineSpec, cancelled, deadline) -> _Entry:
        with self._cond:
            entry = self._entries.get(spec.key)
            if entry is None:
                entry = self._entries[spec.key] = _Entry(spec)
            self._entries.move_to_end(spec.key)
            entry.waiters += 1
            try:
                # while we wait (waiters > 0) nothing drops or removes this entry
                while entry.busy:
                    self._wait(cancelled, deadline)
                entry.busy = True
            finally:
                entry.waiters -= 1
                if not entry.busy and not entry.held and entry.waiters == 0:
                    self._entries.pop(spec.key, None)  # gave up waiting on a never-loaded entry
            if entry.engine is not None:
                return entry
        try:
            self._make_room(entry, cancelled, deadline)
            if self.tokens is not None:
                self.tokens.take(cancelled, deadline)
            began = time.perf_counter()
            engine = spec.build()
        except BaseException:
            with self._cond:
                entry.loading = entry.busy = False
                if entry.waiters == 0 and self._entries.get(spec.key) is entry:
                    del self._entries[spec.key]
                self._cond.notify_all()
            self._give_back_token()
            raise
        with self._cond:
            entry.engine, entry.loading = engine, False
            entry.loaded_at = time.monotonic()
            entry.load_seconds = time.perf_counter() - began
            self.loads += 1
        log.info("OCR engine %s loaded in %.1f s", spec.name, entry.load_seconds)
        self.start_reaper()
        return entry

    def _make_room(self, entry: _Entry, cancelled, deadline) -> None:
        """Drop idle engines until ``entry`` may load; marks it loading. ``entry`` is busy (ours)."""
        while True:
            with self._cond:
                held = [e for e in self._entries.values() if e is not entry and e.held] + self._dropping
                blocking = [e for e in held if e.spec.name == "paddle"] if entry.spec.name == "paddle" else []
                if len(held) < self.size and not blocking:
                    entry.loading = True
                    return
                # the least recently used idle engine, preferring one that is in the way
                idle = [e for e in (blocking or held) if not e.busy and e.waiters == 0 and not e.loading]
                if not idle:
                    self._wait(cancelled, deadline)
                    continue
                victim = idle[0]
                victim.busy = True
                del self._entries[victim.spec.key]
                self._dropping.append(victim)
            self._drop(victim, "room for " + entry.spec.name)

    # -- letting go -----------------------------------------------------------------------
    def _drop(self, entry: _Entry, why: str) -> None:
        """Called without the condition held; entry is busy and out of the table."""
        engine, entry.engine = entry.engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception:
                log.exception("closing OCR engine %s failed", entry.spec.name)
            del engine
        gc.collect()
        engines._trim_heap()
        with self._cond:
            self._dropping.remove(entry)
            self.releases += 1
            self._cond.notify_all()
        self._give_back_token()
        log.info("OCR engine %s released (%s)", entry.spec.name, why)

    def _give_back_token(self) -> None:
        """Once no heavy engine is held or being built here, another worker may build one."""
        if self.tokens is None:
            return
        with self._cond:
            if any(e.held for e in self._entries.values()) or self._dropping:
                return
            self.tokens.give_back()

    def _discard_dead(self, entry: _Entry) -> None:
        """Free a dead engine; ``entry`` is busy (ours) and stays in the table, empty, so a
        thread waiting for it builds a new engine when it gets it."""
        engine, entry.engine = entry.engine, None
        try:
            engine.close()
        except Exception:
            log.exception("closing OCR engine %s failed", entry.spec.name)
        with self._cond:
            self.releases += 1
        log.warning("OCR engine %s dropped: its process is gone", entry.spec.name)
        self._give_back_token()

    def _take(self, pick: Callable[[_Entry, float], bool]) -> list[_Entry]:
        now = time.monotonic()
        with self._cond:
            chosen = [e for e in self._entries.values()
                      if e.engine is not None and not e.busy and e.waiters == 0 and pick(e, now)]
            for e in chosen:
                e.busy = True
                del self._entries[e.spec.key]
                self._dropping.append(e)
        return chosen

    def release_expired(self) -> int:
        """Drop engines idle for longer than the TTL; how many were dropped."""
        if self.idle_ttl <= 0:
            return 0
        chosen = self._take(lambda e, now: now - e.last_used >= self.idle_ttl)
        for e in chosen:
            self._drop(e, f"idle for {self.idle_ttl:g} s")
        return len(chosen)

    def release_all(self) -> int:
        """Drop every idle engine (engines in use stay)."""
        chosen = self._take(lambda e, now: True)
        for e in chosen:
            self._drop(e, "released")
        return len(chosen)

    def close(self) -> None:
        self._stop.set()
        self.release_all()

    # -- the reaper ------------------------------------------------------------------------
    def start_reaper(self) -> None:
        """Started when the first engine loads; a daemon: it must never keep a worker alive."""
        if not self._reaper_enabled or (self._reaper and self._reaper.is_alive()):
            return
        # every second at most: it also answers other workers waiting for an engine place
        interval = max(0.05, min(self.idle_ttl / 4, 1.0)) if self.idle_ttl > 0 else 1.0

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.release_expired()
                    if self.tokens is not None and self.tokens.held and self.tokens.wanted():
                        for e in self._take(lambda e, now: True):
                            self._drop(e, "another worker needs the engine place")
                except Exception:
                    log.exception("OCR engine reaper failed")
        self._reaper = threading.Thread(target=loop, name="ocr-engine-reaper", daemon=True)
        self._reaper.start()

    def snapshot(self) -> list[dict]:
        """The engines held, for metrics and debugging."""
        now = time.monotonic()
        with self._cond:
            return [{"engine": e.spec.name, "model": e.engine.model if e.engine else None,
                     "loaded": e.engine is not None, "busy": e.busy, "waiters": e.waiters, "uses": e.uses,
                     "idle_seconds": round(now - e.last_used, 1), "load_seconds": round(e.load_seconds, 2)}
                    for e in self._entries.values()]


_process_cache: EngineCache | None = None
_process_pid: int | None = None
_process_lock = threading.Lock()


def get_cache(config: Mapping) -> EngineCache:
    """This process's cache (made on first call, again after a fork: the reaper thread and the
    locks do not survive one)."""
    global _process_cache, _process_pid
    with _process_lock:
        if _process_cache is None or _process_pid != os.getpid():
            _process_cache, _process_pid = EngineCache(config), os.getpid()
        return _process_cache


def close_process_cache() -> None:
    """Drop this process's engines (a worker leaving); a no-op if it never made a cache."""
    global _process_cache
    with _process_lock:
        cache = _process_cache if _process_pid == os.getpid() else None
        _process_cache = None
    if cache is not None:
        cache.close()

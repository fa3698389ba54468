"""Per-process limits on running jobs of a kind (a kind's ``per_process_limit``).

Why: some kinds hold a large, not thread-safe engine per process (PaddleOCR: ~1.7 GB, one
instance per process, one caller at a time). Two such jobs in one worker would queue on the
engine's lock while holding two executor slots; spread over workers they run in parallel.

Three paths start jobs in a process — the claim loop, a finishing job claiming the next one in
its finish transaction, and a submit starting its job directly — and they run at the same
time. Each takes the room it may fill *before* its transaction and gives it back only once the
jobs it got are registered as running, so no two of them can both fill the last place.
Called with the dispatcher's lock held.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Iterable

log = logging.getLogger(__name__)


class LocalRoom:
    def __init__(self, limits: dict[str, int], gates: dict[str, Callable[[], bool]] | None = None):
        self.limits = {kind: int(n) for kind, n in limits.items() if n is not None}
        # kind -> may this process start one now? (JobKind.local_gate: e.g. an OCR engine place)
        self.gates = dict(gates or {})
        self._held: Counter = Counter()   # places handed to claims and reservations in flight

    def _closed(self, kind: str) -> bool:
        gate = self.gates.get(kind)
        if gate is None:
            return False
        try:
            return not gate()
        except Exception:  # a gate's trouble must not stop this worker claiming
            log.exception("the %s kind's gate failed; treating it as open", kind)
            return False

    def take(self, running: Iterable[str], finishing: str | None = None) -> dict[str, int]:
        """Hold every free place of each limited kind for one claim; ``finishing``: the kind of
        the job whose finish this claim shares a transaction with (its place frees up)."""
        if not self.limits and not self.gates:
            return {}
        counts = Counter(running)
        if finishing is not None:
            counts[finishing] -= 1
        room = {kind: max(0, limit - counts[kind] - self._held[kind]) for kind, limit in self.limits.items()}
        for kind in self.gates:
            if self._closed(kind):
                room[kind] = 0
        self._held.update(room)
        return room

    def give_back(self, room: dict[str, int] | None) -> None:
        """After the claimed jobs are registered as running (they count there now)."""
        if room:
            self._held.subtract(room)

    def reserve_one(self, kind: str, running: Iterable[str]) -> bool:
        """One place for a direct start; False if the kind is at its limit here."""
        if self._closed(kind):
            return False
        if kind not in self.limits:
            return True
        if self.limits[kind] - Counter(running)[kind] - self._held[kind] <= 0:
            return False
        self._held[kind] += 1
        return True

    def release_one(self, kind: str) -> None:
        if kind in self.limits:
            self._held[kind] -= 1

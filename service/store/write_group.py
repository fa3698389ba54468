"""Group commit for the hot-path writes of one SQLite file in one process (rawsql.write).

Why: SQLite lets one transaction write at a time, and every submit and every finished job is a
write transaction. Under the engine benchmark the write lock (WriterQueue) was held ~70 % of
the time: ~0.7 ms per transaction on average (p90 1.5–1.9 ms, p99 4–5 ms: the holder waits for
the GIL between statements while the process's other threads run), and a writer waited ~0.8 ms
for its turn. Meanwhile the process's other threads queued up behind it with writes of their own.
Here those queued writes ride along: the thread that gets the turn (the leader) runs every write
waiting in this process in its one transaction — one BEGIN IMMEDIATE, one COMMIT, one lock
hand-over and one page-cache refill for the lot — and each caller gets its own result or
exception once the transaction has committed. A write alone in the queue runs as before.

Semantics are those of separate transactions run one after another: the writes of a batch run
in the order they arrived, under the same write lock, and a write sees the ones before it. A
write that raises must leave no trace: the batch then rolls back and runs again with each write
in its own SAVEPOINT, so the failing one is undone alone (the fast path has no savepoints: a
failure is rare, and writes are required to be safe to re-run, as for the lock retries). Nothing
is reported before COMMIT, so durability is unchanged; a failed COMMIT fails every write of the
batch.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

BATCH_MAX = 32          # writes per transaction; a leader does not run the others' work unboundedly


class _Request:
    __slots__ = ("fn", "done", "result", "error", "lead", "event")

    def __init__(self, fn: Callable):
        self.fn = fn
        self.done = False
        self.result = None
        self.error: BaseException | None = None
        self.lead = False
        self.event: threading.Event | None = None   # only a writer that waits needs one

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class WriteGroup:
    """Writes waiting for one file's turn in this process. ``commit_batch(take)`` runs one
    transaction: once it holds the write lock it calls ``take()`` for the requests to run (all
    that are waiting by then, so writes that arrive while the leader waits for the lock ride
    along) and fills in each one's result or error (it must not raise for a request's own
    failure); the group decides who leads and who waits."""

    def __init__(self, commit_batch: Callable[[Callable[[], list]], None], wait_limit: float):
        self._commit_batch = commit_batch
        self._wait_limit = wait_limit
        self._mutex = threading.Lock()
        self._pending: deque[_Request] = deque()
        self._leading = False
        self._taken: list[_Request] = []   # the batch the leader is running
        self.stats = {"transactions": 0, "writes": 0}   # tests and benchmarks; not exact under threads

    def run(self, fn: Callable):
        request = _Request(fn)
        with self._mutex:
            self._pending.append(request)
            if not self._leading:
                self._leading = request.lead = True
            else:
                request.event = threading.Event()
        if not request.lead and not request.event.wait(self._wait_limit):
            # The leader is stuck in its turn (see WriterQueue.turn). A request still waiting is
            # taken back and run alone; one already in a batch is being run: wait for it.
            with self._mutex:
                mine = request in self._pending and not request.lead
                if mine:
                    self._pending.remove(request)
            if mine:
                self._commit_batch(lambda: [request])
                return request.outcome()
            request.event.wait()
        if request.lead:
            self._lead(request)
        return request.outcome()

    def _take(self) -> list[_Request]:
        with self._mutex:
            self._taken = [self._pending.popleft() for _ in range(min(len(self._pending), BATCH_MAX))]
        return self._taken

    def _lead(self, request: _Request) -> None:
        try:
            while not request.done:
                self._taken = []
                try:
                    self._commit_batch(self._take)
                except BaseException as exc:  # an interrupt mid-batch: nobody may wait forever
                    for r in self._taken:
                        if not r.done:
                            r.error, r.done = exc, True
                    raise
                finally:
                    self.stats["transactions"] += 1
                    self.stats["writes"] += len(self._taken)
                    for r in self._taken:
                        if r is not request:
                            r.event.set()
        finally:
            with self._mutex:
                if self._pending:   # the next waiting writer leads; this thread's caller goes on
                    successor = self._pending[0]
                    successor.lead = True
                    successor.event.set()
                else:
                    self._leading = False

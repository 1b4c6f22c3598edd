"""Dynamic batching: concurrent requests coalesced into few forward passes.

Requests wait in a bounded FIFO queue counted in texts (a request with many texts counts them
all). One dispatcher thread takes the oldest requests, up to ``max_batch_size`` texts (at least one
request, never split), sorts their texts by token count and cuts them into forward passes of
similar length so that padding stays small, then answers each request with its own rows in its own
order. A batch waits up to ``max_wait_ms`` after its oldest request for more, but only while more
requests are arriving (received by the server, not yet queued): a lone request never waits.

The thread belongs to no event loop; each caller's future is settled on the caller's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# One forward pass costs about this many padded tokens more than its rows x longest text: cutting a
# batch into passes of similar length pays when it saves more padding than that. Measured on MiniLM
# int8 (ONNX Runtime, 2 threads) with batches of 32 random tweets (12-73 tokens): CPU per tweet
# 7.4 ms in one pass padded to the longest, 5.7 ms one tweet per pass, 4.2-4.4 ms cut with an
# overhead of 16 to 64 tokens (all alike within noise).
GROUP_OVERHEAD_TOKENS = 32

Forward = Callable[[list[str]], np.ndarray]
Lengths = Callable[[list[str]], list[int]]
OnBatch = Callable[[int, int, float], None]  # (texts, forward passes, seconds)


class QueueFull(Exception):
    """The queue holds ``max_queue`` texts: answer 503 and ask to retry after ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class Closed(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass(eq=False)
class _Request:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    withdrawn: bool = False

    def settle(self, rows: np.ndarray | None = None, error: Exception | None = None) -> None:
        """Give the caller its rows (or the error) on the caller's event loop."""
        def apply() -> None:  # on the caller's loop, like withdrawals: no race with them
            if not self.withdrawn and not self.future.done():
                self.future.set_exception(error) if error else self.future.set_result(rows)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this answer
            self.loop.call_soon_threadsafe(apply)


class Arrival:
    """A request the server has received but not queued yet: a young batch may wait for it."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher, self.open = batcher, True

    def close(self) -> None:
        """The request was queued or refused (idempotent)."""
        with self._batcher._cond:
            self.close_locked()

    def close_locked(self) -> None:
        if self.open:
            self.open = False
            self._batcher._arriving -= 1
            self._batcher._cond.notify_all()


def length_groups(lengths: Sequence[int], max_size: int,
                  overhead: float = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` cut into passes of at most ``max_size`` rows, sorted by length, that
    minimise the sum over passes of ``overhead + rows * longest`` (exact, dynamic programming)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        for start in range(max(0, end - max_size), end):
            cost = best[start] + overhead + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


class Batcher:
    """A bounded request queue served by one thread that runs ``forward`` on coalesced batches."""

    def __init__(self, forward: Forward, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, lengths: Lengths | None = None,
                 on_batch: OnBatch | None = None) -> None:
        self.forward, self.lengths, self.on_batch = forward, lengths, on_batch
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued = self._arriving = 0
        self._closed = False
        self._rate = 0.0  # texts per second of the last batch (for Retry-After)
        self._thread = threading.Thread(target=self._loop, name="distilprune-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers (event loop side)
    @property
    def depth(self) -> int:
        """Texts waiting in the queue."""
        return self._queued

    @property
    def full(self) -> bool:
        """No room for even one more text (a request may be refused before it is read)."""
        return bool(self._queue) and self._queued >= self.max_queue

    def arrival(self) -> Arrival:
        """Note a request being received; close the returned token once it is queued or refused."""
        with self._cond:
            self._arriving += 1
        return Arrival(self)

    def submit(self, texts: Sequence[str], arrival: Arrival | None = None) -> _Request:
        """Queue ``texts`` (call on the caller's event loop); QueueFull / Closed when refused."""
        loop = asyncio.get_running_loop()
        request = _Request(list(texts), loop, loop.create_future())
        with self._cond:
            if arrival is not None:
                arrival.close_locked()
            if self._closed:
                raise Closed("server is shutting down")
            if self._queue and self._queued + len(request.texts) > self.max_queue:
                raise QueueFull(self.retry_after())
            self._queue.append(request)
            self._queued += len(request.texts)
            self._cond.notify_all()
        return request

    async def predict(self, texts: Sequence[str], timeout: float,
                      arrival: Arrival | None = None) -> np.ndarray:
        """Rows of ``forward`` for ``texts``; TimeoutError after ``timeout`` s (queue + inference)."""
        request = self.submit(texts, arrival)
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except BaseException:  # timed out or cancelled: free its place, drop its answer
            self._withdraw(request)
            raise

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer the queued ones, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _withdraw(self, request: _Request) -> None:
        with self._cond:
            request.withdrawn = True
            if request in self._queue:
                self._queue.remove(request)
                self._queued -= len(request.texts)

    def retry_after(self) -> int:
        """Seconds until the queue has drained at the last batch's pace (1 to 60)."""
        return min(60, max(1, math.ceil(self._queued / self._rate))) if self._rate else 1

    # ------------------------------------------------------------------ dispatcher thread
    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The oldest requests up to ``max_batch_size`` texts; None once closed and drained."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
                self._wait_for_more()
                if batch := self._pop():
                    return batch

    def _wait_for_more(self) -> None:
        deadline = self._queue[0].arrived + self.max_wait if self._queue else 0.0
        while self._arriving and self._queued < self.max_batch_size and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _pop(self) -> list[_Request]:
        batch: list[_Request] = []
        texts = 0
        while self._queue and (not batch or texts + len(self._queue[0].texts) <= self.max_batch_size):
            request = self._queue.popleft()
            self._queued -= len(request.texts)
            batch.append(request)
            texts += len(request.texts)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        texts = [t for request in batch for t in request.texts]
        start = time.perf_counter()
        try:
            rows, passes = self._forward(texts)
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for request in batch:
                request.settle(error=exc)
            return
        seconds = time.perf_counter() - start
        self._rate = len(texts) / max(seconds, 1e-6)
        if self.on_batch is not None:
            self.on_batch(len(texts), passes, seconds)
        offset = 0
        for request in batch:
            request.settle(rows[offset:offset + len(request.texts)])
            offset += len(request.texts)

    def _forward(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Rows for ``texts`` in their order, computed in passes of similar length."""
        if self.lengths is None or len(texts) == 1:  # nothing to group: skip the token count
            step = self.max_batch_size
            groups = [list(range(i, min(i + step, len(texts)))) for i in range(0, len(texts), step)]
        else:
            groups = length_groups(self.lengths(texts), self.max_batch_size)
        out: np.ndarray | None = None
        for group in groups:
            rows = np.asarray(self.forward([texts[i] for i in group]))
            if out is None:
                out = np.empty((len(texts), *rows.shape[1:]), dtype=rows.dtype)
            out[group] = rows
        assert out is not None
        return out, len(groups)

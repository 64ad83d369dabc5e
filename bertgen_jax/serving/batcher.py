"""Dynamic batching: requests that arrive within a short window, with the same options, go into one
generate call.

One worker coroutine takes the oldest waiting request and waits while requests with the same key keep
coming: the batch closes once none has arrived for `window_s`, once the oldest has waited `max_wait_s`,
or once `max_batch` rows are waiting. It then runs every waiting request with that key, oldest first,
up to `max_batch` rows, in a worker thread. While that call runs, new requests queue up, so the next
batch is fuller: throughput grows with concurrency. Waiting for the stream of arrivals to pause (not a
fixed window from the first arrival) matters when clients answered together come back together: the
answers of one batch go out over tens of milliseconds, and a fixed short window would cut them into a
full batch and a small one, and the small one costs nearly as much as a full one. The queue is bounded
in rows; a full queue refuses at once (the server answers 503) instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Optional, Sequence


WINDOW_SHARE_OF_CALL = 0.02


class QueueFull(Exception):
    """The queue holds `max_queue` rows already."""


@dataclasses.dataclass
class Job:
    key: Hashable  # requests with equal keys may share a generate call
    rows: list  # one entry per input text
    payload: Any  # what the run function needs besides the rows (the options)
    future: asyncio.Future
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


# run(key, payload, rows) -> one result per row; called in the worker thread.
RunFn = Callable[[Hashable, Any, list], Sequence[Any]]


class Batcher:
    def __init__(self, run: RunFn, *, max_batch: int, window_s: float, max_queue: int,
                 max_wait_s: Optional[float] = None, on_batch: Optional[Callable[[int, float], None]] = None):
        if max_batch < 1 or max_queue < 1 or window_s < 0 or (max_wait_s is not None and max_wait_s < 0):
            raise ValueError("max_batch and max_queue must be positive, window_s and max_wait_s non-negative")
        self.run = run
        self.max_batch = int(max_batch)
        self.window_s = float(window_s)
        # The oldest request waits at least one window, at most max_wait_s (default: the window: a fixed window).
        self.max_wait_s = max(self.window_s, float(window_s if max_wait_s is None else max_wait_s))
        self.max_queue = int(max_queue)
        self.on_batch = on_batch  # (rows, seconds) after each generate call
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_rows = 0
        self._arrived: Optional[asyncio.Event] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._worker: Optional[asyncio.Task] = None
        self._stopping = False
        self._last_done = 0.0  # monotonic time the last generate call returned
        self._last_call_s = 0.0  # how long it took

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, key: Hashable, payload: Any, rows: list) -> list:
        """The results for `rows` (one per row); QueueFull at once if the queue has no room."""
        if self._stopping:
            raise QueueFull("the server is shutting down")
        if self._queued_rows + len(rows) > self.max_queue and self._queued_rows > 0:
            raise QueueFull(f"the queue holds {self._queued_rows} of at most {self.max_queue} rows")
        job = Job(key, list(rows), payload, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_rows += len(job.rows)
        self._arrived.set()
        return await job.future

    async def drain_and_stop(self) -> None:
        """Refuse new requests, finish every queued one, then stop the worker."""
        self._stopping = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    def _waiting(self, key) -> tuple[int, float]:
        """Rows waiting with `key`, and when the latest of them arrived."""
        rows, latest = 0, 0.0
        for job in self._queue:
            if job.key == key:
                rows += len(job.rows)
                latest = max(latest, job.enqueued)
        return rows, latest

    async def _work(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._queue[0]
            # Wait while requests with its key keep arriving, unless its batch is already full. The clock
            # starts no earlier than the end of the last call: the requests it answered may come back, and
            # a request that waited through that call must not leave alone just before they do.
            opened = max(first.enqueued, self._last_done)
            # Arrivals spread more when calls are long (a loaded machine answers and hears back slower):
            # the pause that closes a batch grows with the last call, a small share of it.
            window = max(self.window_s, min(self._last_call_s * WINDOW_SHARE_OF_CALL, self.max_wait_s))
            while not self._stopping:
                rows, latest = self._waiting(first.key)
                if rows >= self.max_batch:
                    break
                remaining = min(max(latest, opened) + window, opened + self.max_wait_s) - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch, rows = [], 0
            for job in list(self._queue):
                if job.key == first.key and (not batch or rows + len(job.rows) <= self.max_batch):
                    batch.append(job)
                    rows += len(job.rows)
            for job in batch:
                self._queue.remove(job)
            self._queued_rows -= rows
            await self._run_batch(batch, rows)

    async def _run_batch(self, batch: list[Job], rows: int) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        outcomes = await loop.run_in_executor(self._executor, self._run_isolated, batch)
        if self.on_batch is not None:
            self.on_batch(rows, time.monotonic() - started)
        for job, outcome in zip(batch, outcomes):
            if job.future.done():  # the client went away
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        self._last_done = time.monotonic()
        self._last_call_s = self._last_done - started

    def _run_isolated(self, batch: list[Job]) -> list:
        """Results per job; if the shared call fails, each job runs alone, so one bad request fails alone."""
        all_rows = [row for job in batch for row in job.rows]
        try:
            results = list(self.run(batch[0].key, batch[0].payload, all_rows))
        except Exception as err:  # noqa: BLE001 - handed to the requests, never lost
            if len(batch) == 1:
                return [err]
            return [self._run_one(job) for job in batch]
        outcomes, start = [], 0
        for job in batch:
            outcomes.append(results[start:start + len(job.rows)])
            start += len(job.rows)
        return outcomes

    def _run_one(self, job: Job):
        try:
            return list(self.run(job.key, job.payload, job.rows))
        except Exception as err:  # noqa: BLE001
            return err

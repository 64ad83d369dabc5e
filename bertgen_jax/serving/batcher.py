"""Dynamic batching: requests that arrive within a short window, with the same options, go into one
generate call.

One worker coroutine takes the oldest waiting request, waits until its window has passed (or enough
rows with the same key are waiting to fill a batch), then runs every waiting request with that key,
oldest first, up to `max_batch` rows, in a worker thread. While that call runs, new requests queue up,
so the next batch is fuller: throughput grows with concurrency. The queue is bounded in rows; a full
queue refuses at once (the server answers 503) instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Optional, Sequence


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
                 on_batch: Optional[Callable[[int, float], None]] = None):
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be positive, window_s non-negative")
        self.run = run
        self.max_batch = int(max_batch)
        self.window_s = float(window_s)
        self.max_queue = int(max_queue)
        self.on_batch = on_batch  # (rows, seconds) after each generate call
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_rows = 0
        self._arrived: Optional[asyncio.Event] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._worker: Optional[asyncio.Task] = None
        self._stopping = False

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

    def _rows_waiting(self, key) -> int:
        return sum(len(job.rows) for job in self._queue if job.key == key)

    async def _work(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._queue[0]
            # Wait out the window of the oldest request, unless its batch is already full.
            while not self._stopping and self._rows_waiting(first.key) < self.max_batch:
                remaining = first.enqueued + self.window_s - time.monotonic()
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

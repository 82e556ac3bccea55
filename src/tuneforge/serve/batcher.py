"""Dynamic micro-batching: inputs of concurrent requests share one model call.

One forward pass over 32 short sentences costs a few times one over a single sentence, so a server
that runs requests one at a time wastes most of the model's throughput under load. Requests put
their inputs on a queue; one worker takes what is waiting (up to ``max_batch_size``), waits at most
``max_wait_s`` for more once it has something, and runs ``fn`` on the batch in the model's single
thread. While that runs, new inputs queue up for the next batch, so batches grow with the load and
an idle server answers a lone request after at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any


class MicroBatcher:
    def __init__(self, fn: Callable[[list], list], *, executor: Executor, max_batch_size: int, max_wait_s: float,
                 on_batch: Callable[[int], None] | None = None, on_queue: Callable[[int], None] | None = None):
        self.fn, self.executor = fn, executor
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.on_batch, self.on_queue = on_batch, on_queue
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, items: list) -> list:
        """Results for ``items``, in order, computed in whichever batches they land in."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        self._report_queue()
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for f in futures:  # timed out or disconnected: the worker skips what is still queued
                f.cancel()
            raise

    def _ensure_worker(self) -> None:
        # Started on first use in the running loop: the app may be served by uvicorn or driven by a
        # test client on a loop of its own, and a queue belongs to one loop.
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            self._report_queue()
            live = [(item, f) for item, f in batch if not f.done()]
            if live:
                await self._call(loop, live)

    async def _call(self, loop, live: list[tuple[Any, asyncio.Future]]) -> None:
        if self.on_batch:
            self.on_batch(len(live))
        try:
            results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in live])
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which answers for it
            for _, f in live:
                if not f.done():
                    f.set_exception(exc)
            return
        for (_, f), result in zip(live, results):
            if not f.done():
                f.set_result(result)

    def _report_queue(self) -> None:
        if self.on_queue and self._queue is not None:
            self.on_queue(self._queue.qsize())

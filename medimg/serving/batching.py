"""Dynamic batching: the images of requests that arrive together go through one model call.

Each request puts its images on a queue with a future for its answer. One collector task
takes the first waiting request, keeps collecting until it holds `max_batch` images or
`max_wait_s` has passed since it started the batch, runs the model on all of them in a
worker thread (the event loop keeps accepting requests meanwhile, and they queue up for
the next batch) and hands each request back its own slice of the answers. Up to `calls`
model calls run at once: while one runs, the next batch can go to the model as soon as it
is full instead of waiting for it (on a CPU, two calls on one thread each kept both cores
busy where one call on two threads left them idle a quarter of the time:
benchmarks/serve_benchmark.py). A failed model call fails only the requests of its batch.
`max_batch` 1 is one model call per image.

A batch waits only while more images are on their way: a request announces itself
(`arrival`) when it starts reading and decoding its files, so a lone request goes
straight to the model instead of waiting `max_wait_s` for company that is not coming.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Waiting:
    images: np.ndarray  # N x S x S x 3 uint8, N <= max_batch
    answer: asyncio.Future


@dataclass
class Arrival:
    """A request on its way to `predict`; `close` once it has queued its images or given
    up, so that no batch waits for it any longer."""
    batcher: "DynamicBatcher"
    open: bool = field(default=True)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.batcher._arriving -= 1
            self.batcher._changed.set()


class DynamicBatcher:
    """Groups concurrent `predict` calls into calls of `model` (uint8 N x S x S x 3 images
    to one answer per image) of at most `max_batch` images; `on_batch(size)` sees the size
    of every model call (for metrics); at most `calls` model calls run at once."""

    def __init__(self, model: Callable[[np.ndarray], list[Any]], max_batch: int,
                 max_wait_s: float, on_batch: Callable[[int], None] | None = None,
                 calls: int = 1) -> None:
        for name, value in (("max_batch", max_batch), ("calls", calls)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self.model, self.max_batch, self.max_wait_s = model, max_batch, max_wait_s
        self.on_batch = on_batch or (lambda size: None)
        self.calls = calls
        self._running: set[asyncio.Task] = set()  # model calls under way
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._carried: _Waiting | None = None  # did not fit in the last batch: opens the next
        self._worker: asyncio.Task | None = None
        self._arriving = 0  # announced requests that have not queued their images yet
        self._changed = asyncio.Event()  # something was queued or an arrival closed

    def arrival(self) -> Arrival:
        """Announce a request that will call `predict` (close it in a finally block)."""
        self._arriving += 1
        return Arrival(self)

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._serve(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop the worker and its model calls; requests still waiting fail instead of
        hanging."""
        tasks = [task for task in (self._worker, *self._running) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        waiting = [self._carried] if self._carried else []
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        _fail(waiting, RuntimeError("the server is shutting down"))

    async def predict(self, images: np.ndarray, arrival: Arrival | None = None) -> list[Any]:
        """One answer per image, in order, from however many model calls it takes."""
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() has not been called")
        loop = asyncio.get_running_loop()
        parts = [_Waiting(images[start:start + self.max_batch], loop.create_future())
                 for start in range(0, len(images), self.max_batch)]
        for part in parts:
            self._queue.put_nowait(part)
        self._changed.set()
        if arrival is not None:
            arrival.close()
        answers = await asyncio.gather(*(part.answer for part in parts))
        return [answer for part_answers in answers for answer in part_answers]

    async def _serve(self) -> None:
        free = asyncio.Semaphore(self.calls)
        while True:
            await free.acquire()  # collect the next batch only once a call can take it
            call = asyncio.create_task(self._run(await self._collect()))
            self._running.add(call)
            call.add_done_callback(lambda done: (self._running.discard(done), free.release()))

    async def _collect(self) -> list[_Waiting]:
        assert self._queue is not None
        first = self._carried or await self._queue.get()
        self._carried = None
        batch, size = [first], len(first.images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0 or self._arriving == 0:
                    break
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
                continue
            waiting = self._queue.get_nowait()
            if size + len(waiting.images) > self.max_batch:
                self._carried = waiting
                break
            batch.append(waiting)
            size += len(waiting.images)
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        # A caller that went away (timed out, disconnected) costs no model time.
        batch = [waiting for waiting in batch if not waiting.answer.done()]
        if not batch:
            return
        images = np.concatenate([waiting.images for waiting in batch])
        self.on_batch(len(images))
        try:
            answers = await asyncio.to_thread(self.model, images)
            if len(answers) != len(images):
                raise RuntimeError(f"the model gave {len(answers)} answers for {len(images)} "
                                   "images")
        except Exception as err:  # one bad batch must not stop the worker
            _fail(batch, err)
            return
        except asyncio.CancelledError:  # stop(): the thread finishes, but nobody waits
            _fail(batch, RuntimeError("the server is shutting down"))
            raise
        start = 0
        for waiting in batch:
            end = start + len(waiting.images)
            if not waiting.answer.done():  # the caller went away while the model ran
                waiting.answer.set_result(answers[start:end])
            start = end


def _fail(batch: list[_Waiting], error: BaseException) -> None:
    for waiting in batch:
        if not waiting.answer.done():
            waiting.answer.set_exception(error)

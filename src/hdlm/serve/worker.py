"""One model worker: a thread that runs the jobs of every request, one at a time, in order.

A model is one set of weights on one device, so requests take turns on it. The event loop never
runs a model: a request handler `submit`s a job and awaits its `concurrent.futures.Future`
(`asyncio.wrap_future`). The queue is bounded: when `max_waiting` jobs wait already, `submit`
raises `Busy` (the server answers 503 with a Retry-After estimate) instead of letting latency
grow without bound. A job whose client went away is skipped if it has not started (its future is
cancelled) and stops at its next sampler step if it has (`Cancelled`, raised by the live trace).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Busy(Exception):
    """The queue is full; `retry_after` is an estimate, in whole seconds, of when to retry."""

    def __init__(self, retry_after: int):
        super().__init__(f"the model is busy ({retry_after} s of queued work); retry later")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a running job whose client disconnected: frees the worker."""


class ModelWorker:
    """Runs submitted jobs on one thread (module docstring)."""

    def __init__(self, max_waiting: int = 16):
        self._jobs: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._seconds_per_job = 1.0  # running mean, for Retry-After
        self.completed = self.cancelled = 0
        self._thread = threading.Thread(target=self._serve, name="hdlm-model-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet started."""
        return self._jobs.qsize()

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue `job`; its future holds the result or the exception it raised."""
        future: Future = Future()
        try:
            self._jobs.put_nowait((job, future))
        except queue.Full:
            wait = self._seconds_per_job * (self._jobs.maxsize + 1)
            raise Busy(max(1, math.ceil(wait))) from None
        return future

    def close(self, timeout: float | None = None) -> None:
        """Finish the running job, cancel the waiting ones and stop the thread."""
        while True:
            try:
                _, future = self._jobs.get_nowait()
            except queue.Empty:
                break
            future.cancel()
        self._jobs.put((None, None))  # (blocks only while a racing submit fills the queue)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while True:
            job, future = self._jobs.get()
            if job is None:
                return
            if not future.set_running_or_notify_cancel():
                self.cancelled += 1
                continue
            start = time.perf_counter()
            try:
                future.set_result(job())
            except Cancelled as e:
                self.cancelled += 1
                future.set_exception(e)
            except BaseException as e:  # noqa: BLE001  (handed to the request that asked)
                future.set_exception(e)
            self.completed += 1
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (
                time.perf_counter() - start
            )

"""A job queue with one worker thread that runs compatible jobs together, as one batch.

The web server's event loop submits jobs and awaits their futures; the models run on the worker thread alone
(torch already spreads one batch over the cores, and one thread keeps the models' state single-threaded). The
worker takes the oldest job, waits up to ``max_wait_s`` for more jobs with the same key, up to ``max_batch``
units of work (images, questions), and runs them in one call. A batch that raises is run again job by job, so
a bad request fails alone; a job whose future was cancelled before its batch started (its client went away)
is dropped without running. Should the worker itself stop (a ``BaseException`` out of the runner), the queue
closes: the waiting jobs fail and new ones are refused, rather than waiting forever.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from arvision.errors import ArvisionError, InputError

Runner = Callable[[Hashable, list[Any]], list[Any]]
"""``runner(key, payloads) -> results``: one result per payload, in order; every payload shares ``key``."""


class QueueFull(ArvisionError):
    """The queue holds ``max_pending`` jobs already: the client should retry later."""


class QueueClosed(ArvisionError):
    """The queue was closed (the server is shutting down) before the job ran."""


@dataclass
class _Job:
    key: Hashable
    payload: Any
    size: int
    future: Future = field(default_factory=Future)


@dataclass
class QueueStats:
    """Counters since the queue started: ``jobs`` finished (``failed`` of them with an error), ``batches``
    runner calls that succeeded, ``largest_batch`` in units; ``pending`` jobs waiting; ``running``: whether the
    worker is taking jobs."""

    pending: int = 0
    jobs: int = 0
    failed: int = 0
    batches: int = 0
    largest_batch: int = 0
    running: bool = True


class BatchingQueue:
    """Runs ``runner`` on a worker thread over batches of jobs that share a key.

    ``submit(key, payload, size)`` returns a :class:`concurrent.futures.Future` of ``payload``'s result;
    ``size`` is the job's share of ``max_batch`` (e.g. its number of images). :meth:`close` stops the worker
    and fails the jobs still waiting with :class:`QueueClosed`.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.02,
        max_pending: int = 64,
        name: str = "arvision-batching",
    ):
        if max_batch < 1 or max_pending < 1 or max_wait_s < 0:
            raise InputError(
                f"max_batch and max_pending must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_pending}, "
                f"{max_wait_s}"
            )
        self.runner, self.max_batch, self.max_wait_s, self.max_pending = runner, max_batch, max_wait_s, max_pending
        self._jobs: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._stats = QueueStats()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, payload: Any, size: int = 1) -> Future:
        if not 1 <= size <= self.max_batch:
            raise InputError(f"a request may ask for 1 to {self.max_batch} items at a time, got {size}")
        job = _Job(key, payload, size)
        with self._changed:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            self._drop_cancelled()
            if len(self._jobs) >= self.max_pending:
                raise QueueFull(f"{len(self._jobs)} requests are waiting already; try again shortly")
            self._jobs.append(job)
            self._changed.notify_all()
        return job.future

    @property
    def closed(self) -> bool:
        return self._closed

    def _drop_cancelled(self) -> None:
        """Forget the waiting jobs whose clients went away (their futures cancelled): they would never run, but
        would hold ``max_pending`` places until the worker reached them. Call with the lock held."""
        live = [job for job in self._jobs if not job.future.cancelled()]
        if len(live) < len(self._jobs):
            self._jobs = deque(live)

    def stats(self) -> QueueStats:
        with self._changed:
            self._drop_cancelled()
            counts = (self._stats.jobs, self._stats.failed, self._stats.batches, self._stats.largest_batch)
            return QueueStats(len(self._jobs), *counts, running=not self._closed and self._thread.is_alive())

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Stop taking jobs, let the running batch finish, and fail the waiting jobs."""
        with self._changed:
            self._closed = True
            waiting = list(self._jobs)
            self._jobs.clear()
            self._changed.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueClosed("the server shut down before this request ran"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # ----- the worker -----

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            started = [job for job in batch if job.future.set_running_or_notify_cancel()]
            try:
                if started:
                    self._run(started)
            except BaseException as exc:  # the worker stops: nothing may be left waiting for it
                for job in started:
                    if not job.future.done():
                        job.future.set_exception(QueueClosed(f"the server's worker stopped: {exc!r}"))
                self.close()
                raise

    def _next_batch(self) -> list[_Job] | None:
        """The oldest job and, after up to ``max_wait_s`` more, the later ones of its key that fit beside it."""
        with self._changed:
            while not self._jobs and not self._closed:
                self._changed.wait()
            deadline = time.monotonic() + self.max_wait_s
            while True:
                if self._closed:  # close() has failed the waiting jobs
                    return None
                batch = self._fitting(self._jobs[0].key)
                left = deadline - time.monotonic()
                if sum(job.size for job in batch) >= self.max_batch or left <= 0:
                    break
                self._changed.wait(left)
            for job in batch:
                self._jobs.remove(job)
            return batch

    def _fitting(self, key: Hashable) -> list[_Job]:
        batch, units = [], 0
        for job in self._jobs:
            if job.key == key and units + job.size <= self.max_batch:
                batch.append(job)
                units += job.size
        return batch

    def _run(self, batch: list[_Job]) -> None:
        try:
            results = self.runner(batch[0].key, [job.payload for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the runner returned {len(results)} results for {len(batch)} jobs")
        except Exception as exc:
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
            else:
                with self._changed:
                    self._stats.jobs += 1
                    self._stats.failed += 1
                batch[0].future.set_exception(exc)
            return
        with self._changed:
            self._stats.jobs += len(batch)
            self._stats.batches += 1
            self._stats.largest_batch = max(self._stats.largest_batch, sum(job.size for job in batch))
        for job, result in zip(batch, results):
            job.future.set_result(result)

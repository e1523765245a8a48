"""Admission for coding work: a few requests code at once, a few wait, the rest are told to retry.

Coding is CPU-bound and runs in a worker thread, which cannot be interrupted. A request that runs past
its time gets its answer (504) but its thread keeps its slot until it really ends, so a stuck model
fills the slots and new requests get 503 instead of piling up threads behind it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool


class Busy(Exception):
    """No slot: the queue is full, or none came free within the time limit."""


class TimedOut(Exception):
    """Coding started but did not finish within the time limit."""


@dataclass
class _Job:
    started: bool = False


class CodingGate:
    """``concurrency`` jobs run at once, ``queue`` more wait; each request waits at most ``timeout_s`` in all."""

    def __init__(self, concurrency: int, queue: int, timeout_s: float) -> None:
        self.capacity = concurrency + queue
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()  # waiting, running, and abandoned-but-still-running jobs

    @property
    def in_use(self) -> int:
        return len(self._tasks)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if len(self._tasks) >= self.capacity:
            raise Busy(f"{self.capacity} requests are already coding or waiting")
        job = _Job()
        task = asyncio.ensure_future(self._work(job, fn, args))
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
        except TimeoutError:
            if not job.started:
                task.cancel()
                raise Busy(f"no coding slot came free within {self.timeout_s:g} s") from None
            raise TimedOut(f"coding took longer than {self.timeout_s:g} s") from None

    async def _work(self, job: _Job, fn: Callable[..., Any], args: tuple) -> Any:
        async with self._slots:
            job.started = True
            return await run_in_threadpool(fn, *args)

    def _forget(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # an abandoned job's error was answered already; mark it seen, never log it

"""One job at a time: a worker thread runs the served pipelines' calls in order from a bounded queue.

A job is a function of the Job (it reports progress through `job.callback`, which the pipelines call
after every step). The callback is also how a job is stopped: `interrupt` makes it answer STOP (the
steps so far are decoded, as A1111's interrupt), `cancel` (a client gone, the server shutting down)
makes it answer False (nothing is returned). Nothing here touches the disk.
"""

import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgesd.denoise import STOP


class QueueFull(Exception):
    """The queue holds as many jobs as it may; `retry_after` seconds is a fair guess of when it will not."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """The job was cancelled before it finished (its client left, or the server is stopping)."""


@dataclass(eq=False)  # a job is itself (its latents are arrays): compared by identity
class Job:
    work: Callable[["Job"], Any]
    parts: int = 1  # calls in the job (images of a batch): progress runs over all of them
    model: str = ""  # the served model it runs (previews are drawn by its family)
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    future: Future = field(default_factory=Future)
    created: float = field(default_factory=time.time)
    started: float | None = None
    part: int = 0  # the call running now
    step: int = 0
    steps: int = 0
    latents: np.ndarray | None = None  # the last step's, for previews
    interrupted: bool = False
    cancelled: bool = False

    @property
    def progress(self) -> float:
        done = self.part + (self.step / self.steps if self.steps else 0.0)
        return min(done / max(self.parts, 1), 1.0)

    def callback(self, step: int, steps: int, latents: np.ndarray):
        """The pipelines' per-step callback: record progress, answer a stop or a cancel."""
        self.step, self.steps, self.latents = step, steps, latents
        if self.cancelled:
            return False
        return STOP if self.interrupted else None

    def next_part(self) -> None:
        self.part, self.step, self.steps = self.part + 1, 0, 0


class Worker:
    def __init__(self, queue_size: int):
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.current: Job | None = None
        self._jobs: dict[str, Job] = {}  # waiting and running, by id: a client follows its own
        self._durations: list[float] = []  # of the last jobs, for Retry-After
        self._thread = threading.Thread(target=self._run, name="edgesd-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Job], Any], parts: int = 1, model: str = "", id: str | None = None) -> Job:
        """Queue a job; `id`, the client's name for it (else a random one), must not be a live job's."""
        job = Job(work, parts, model, **({} if id is None else {"id": id}))
        if job.id in self._jobs:
            raise ValueError(f"a job {job.id!r} is already waiting or running")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self._retry_after()) from None
        self._jobs[job.id] = job
        return job

    def ahead(self, job: Job) -> int:
        """How many jobs run before this waiting one (the running one included)."""
        waiting = list(self._queue.queue)
        return (waiting.index(job) if job in waiting else len(waiting)) + (self.current is not None)

    def find(self, id: str) -> Job | None:
        """The waiting or running job of this id (None: unknown, or finished)."""
        return self._jobs.get(id)

    def _retry_after(self) -> int:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 10.0
        return max(1, round(typical * (self._queue.qsize() + 1)))

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def interrupt(self) -> None:
        """Stop the running job at its next step; it returns what it has (the rest of its batch is skipped)."""
        if self.current is not None:
            self.current.interrupted = True

    def close(self) -> None:
        """Cancel the running job and every waiting one, and end the thread."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._jobs.pop(job.id, None)
                job.cancelled = True
                job.future.set_exception(Cancelled("the server is stopping"))
        if self.current is not None:
            self.current.cancelled = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled:  # its client left while it waited
                self._jobs.pop(job.id, None)
                job.future.set_exception(Cancelled("cancelled before it started"))
                continue
            self.current, job.started = job, time.time()
            result = error = None
            try:
                result = job.work(job)
                if job.cancelled:
                    raise Cancelled("cancelled")
            except BaseException as e:  # one job's failure is its own: the worker goes on
                error = e
            # forgotten before its answer goes out: a client holding the answer finds the job finished
            self._jobs.pop(job.id, None)
            self._durations = [*self._durations[-9:], time.time() - job.started]
            self.current = None
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

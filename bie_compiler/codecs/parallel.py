"""Per-layer work in parallel: one process per core, the same results as one layer after the other.

Encoding a layer (and measuring its precisions for a bits budget) is numpy work with no shared
state, so layers go to a pool of worker processes (``spawn``: a worker imports the codecs and
numpy only, never TVM), each worker's BLAS held to one thread so the workers do not fight over
the cores, or to the workers of a Ray cluster. The results come back in task order; a codec's
error is raised as the serial path would raise it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from ..errors import CodecError
from .base import Encoded
from .stored import loaded

# Below this many weights in all, starting the workers (about a second) costs more than it saves.
PARALLEL_MIN_WEIGHTS = 1 << 21


def default_jobs(total_weights: int) -> int:
    """The workers to use for ``total_weights`` weights when the user did not say: every core, if it pays."""
    return len(os.sched_getaffinity(0)) if total_weights >= PARALLEL_MIN_WEIGHTS else 1


def _one_thread() -> None:
    from threadpoolctl import threadpool_limits

    global _LIMITS  # kept for the worker's life
    _LIMITS = threadpool_limits(1)


@dataclass(frozen=True)
class Workers:
    """Where per-layer work runs: ``jobs`` processes on this machine (1: this process), or the Ray cluster at
    address ``ray`` (``jobs`` at once; None: one task per CPU of the cluster)."""

    jobs: int | None = 1
    ray: str | None = None

    def map(self, work: Callable, tasks: Mapping[str, tuple],
            started: Callable[[str], None] = lambda name: None) -> dict:
        """``work(*args)`` for each name -> args of ``tasks``, by name in task order; ``work`` is a module-level
        function (it is pickled to the workers). An argument that is a :class:`~.stored.StoredMatrix` is read
        by the process that runs the task. ``started(name)`` as each is handed out (serially) or collected (in
        parallel). A codec's error names the weight. Each task is read when its turn comes, and at most
        ``jobs`` are handed out and not finished: with a :class:`~.stored.LazyMapping`, the matrices in memory
        are bounded by that."""
        if self.ray is not None and tasks:
            from .ray_workers import RayWorkers

            with RayWorkers(self.ray) as workers:
                return _in_parallel(lambda *args: workers.submit(work, *args), tasks, self.jobs or workers.cpus,
                                    started)
        if self.jobs is None or self.jobs <= 1 or len(tasks) <= 1:
            return {name: _named(name, _call, (work, *tasks[name]), started) for name in tasks}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=context, initializer=_one_thread) as pool:
            return _in_parallel(lambda *args: pool.submit(_call, work, *args), tasks, self.jobs, started)


SERIAL = Workers()


def encode_many(tasks: Mapping[str, tuple], jobs: int | None = 1, started: Callable[[str], None] = lambda name: None,
                ray: str | None = None) -> dict[str, Encoded]:
    """``encode(*task)`` for each weight name -> (codec, matrix, config, calibration), run by
    ``Workers(jobs, ray)`` (:meth:`Workers.map`)."""
    from . import encode  # the codecs' table imports the codecs, whose budget plans import this module

    return Workers(jobs, ray).map(encode, tasks, started)


def _in_parallel(submit: Callable[..., Future], tasks: Mapping[str, tuple], jobs: int, started) -> dict[str, Encoded]:
    """The tasks submitted as workers free up (``jobs`` running at most: a worker done with a small layer takes
    the next while a large one still runs), the results collected in task order."""
    results, queued, running = {}, deque(), set()

    def collect() -> None:
        nonlocal running
        _, running = wait(running, return_when=FIRST_COMPLETED)
        while queued and queued[0][1].done():
            name, future = queued.popleft()
            results[name] = _named(name, future.result, (), started)

    for name in tasks:
        while len(running) >= jobs:
            collect()
        future = submit(*tasks[name])
        queued.append((name, future))
        running.add(future)
    while queued:
        collect()
    return results


def _call(work: Callable, *args):
    return work(*(loaded(a) for a in args))


def _named(name: str, work, args: tuple, started) -> Encoded:
    started(name)
    try:
        return work(*args)
    except CodecError as e:
        raise CodecError(f"weight {name!r}: {e}") from None

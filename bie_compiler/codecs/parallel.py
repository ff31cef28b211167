"""Per-layer work in parallel: one process per core, the same results as one layer after the other.

Encoding a layer (and measuring its precisions for a bits budget) is numpy work with no shared
state, so layers go to a pool of worker processes, each worker's BLAS held to one thread so the
workers do not fight over the cores, or to the workers of a Ray cluster. The largest layers are
handed out first (the last ones to finish are then small: the workers finish together). The
results come back in task order; a codec's error is raised as the serial path would raise it.

The workers are forked: they start in milliseconds with the codecs already imported,
where a spawned worker starts a new interpreter and imports numpy, the codecs and the caller's
main module (about half a second of CPU each, at every pool). Forking a process that has other
threads is safe when the child uses nothing those threads may hold locked, and a worker runs only
Python and numpy: CPython re-initialises its own locks in the child, glibc keeps malloc's arenas
consistent across fork, and OpenBLAS stops its threads before a fork (its pthread_atfork
handler). The other threads a compiling process has (onnxruntime's, TVM's thread pool once a
kernel has run, Ray's) are never called by a worker. (Linux only, as the rest of the compiler: on
macOS system frameworks are not fork-safe.)
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import CodecError
from .base import Encoded
from .stored import LazyMapping, StoredMatrix, loaded

# Below this many weights in all (a fraction of a second of encoding), forking workers and shipping tasks and results
# to and fro saves too little to be worth it.
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
        parallel). A codec's error names the weight. Each task is read when its turn comes (the largest first:
        :func:`largest_first`), and at most ``jobs`` are handed out and not finished, one more read ahead: with
        a :class:`~.stored.LazyMapping`, the matrices in memory are bounded by that."""
        if self.ray is not None and tasks:
            from .ray_workers import RayWorkers

            with RayWorkers(self.ray) as workers:
                return _in_parallel(lambda *args: workers.submit(work, *args), tasks, self.jobs or workers.cpus,
                                    started, workers.ship)
        if self.jobs is None or self.jobs <= 1 or len(tasks) <= 1:
            return {name: _named(name, _call, (work, *tasks[name]), started) for name in tasks}
        context = multiprocessing.get_context("fork")  # why it is safe: the module's docstring
        with ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=context, initializer=_one_thread) as pool:
            return _in_parallel(lambda *args: pool.submit(_call, work, *args), tasks, self.jobs, started)


SERIAL = Workers()


def encode_many(tasks: Mapping[str, tuple], jobs: int | None = 1, started: Callable[[str], None] = lambda name: None,
                ray: str | None = None) -> dict[str, Encoded]:
    """``encode(*task)`` for each weight name -> (codec, matrix, config, calibration), run by
    ``Workers(jobs, ray)`` (:meth:`Workers.map`)."""
    from . import encode  # the codecs' table imports the codecs, whose budget plans import this module

    return Workers(jobs, ray).map(encode, tasks, started)


def _in_parallel(submit: Callable[..., Future], tasks: Mapping[str, tuple], jobs: int, started,
                 ship: Callable[[tuple], tuple] = lambda args: args) -> dict[str, Encoded]:
    """The tasks submitted largest first as workers free up (``jobs`` running at most: a worker done with a
    layer takes the next while a large one still runs), the results collected in task order. The next task is
    read (and its arguments passed through ``ship``) while the workers run, so a worker that frees up gets it
    without waiting for this process."""
    futures, running, pending = {}, set(), deque(tasks)
    results = {}

    def collect() -> None:
        nonlocal running
        _, running = wait(running, return_when=FIRST_COMPLETED)
        while pending and pending[0] in futures and futures[pending[0]].done():
            name = pending.popleft()
            results[name] = _named(name, futures.pop(name).result, (), started)

    order = largest_first(tasks)
    staged = ship(tasks[order[0]])
    for i, name in enumerate(order):
        while len(running) >= jobs:
            collect()
        futures[name] = submit(*staged)
        running.add(futures[name])
        staged = ship(tasks[order[i + 1]]) if i + 1 < len(order) else None
    while pending:
        collect()
    return results


def largest_first(tasks: Mapping[str, tuple]) -> list[str]:
    """The task names by the weights their matrices hold, most first (ties in task order); a mapping that makes
    its tasks when read says their sizes (``sizes``), else it is taken in its order rather than read twice."""
    sizes = getattr(tasks, "sizes", None)
    if sizes is None:
        if isinstance(tasks, LazyMapping):
            return list(tasks)
        sizes = {name: sum(a.size for a in tasks[name] if isinstance(a, (np.ndarray, StoredMatrix))) for name in tasks}
    return sorted(tasks, key=lambda name: -sizes[name])


def _call(work: Callable, *args):
    return work(*(loaded(a) for a in args))


def _named(name: str, work, args: tuple, started) -> Encoded:
    started(name)
    try:
        return work(*args)
    except CodecError as e:
        raise CodecError(f"weight {name!r}: {e}") from None

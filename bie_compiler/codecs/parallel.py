"""Layers encoded in parallel: one process per core, the same bytes as one after the other.

Encoding is numpy work per layer with no shared state, so layers go to a pool of worker
processes (``spawn``: a worker imports the codecs and numpy only, never TVM), each worker's
BLAS held to one thread so the workers do not fight over the cores. The results come back
in task order; a codec's error is raised as the serial path would raise it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from ..errors import CodecError
from . import encode
from .base import Encoded

# Below this many weights in all, starting the workers (about a second) costs more than it saves.
PARALLEL_MIN_WEIGHTS = 1 << 21


def default_jobs(total_weights: int) -> int:
    """The workers to use for ``total_weights`` weights when the user did not say: every core, if it pays."""
    return len(os.sched_getaffinity(0)) if total_weights >= PARALLEL_MIN_WEIGHTS else 1


def _one_thread() -> None:
    from threadpoolctl import threadpool_limits

    global _LIMITS  # kept for the worker's life
    _LIMITS = threadpool_limits(1)


class LazyTasks(Mapping):
    """Tasks by name, each made (its matrix copied out) only when :func:`encode_many` reaches it."""

    def __init__(self, names: Iterable[str], make: Callable[[str], tuple]):
        self._names, self._make = list(names), make

    def __getitem__(self, name: str) -> tuple:
        if name not in self._names:
            raise KeyError(name)
        return self._make(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def encode_many(tasks: Mapping[str, tuple], jobs: int = 1, started: Callable[[str], None] = lambda name: None
                ) -> dict[str, Encoded]:
    """``encode(*task)`` for each weight name -> (codec, matrix, config, calibration), in ``jobs`` processes
    when more than one; ``started(name)`` as each is handed out (serially) or collected (in parallel). A
    codec's error names the weight. Each task is read when its turn comes, and at most ``jobs`` are handed
    out and not yet collected: with :class:`LazyTasks`, the matrices in memory are bounded by that."""
    if jobs <= 1 or len(tasks) <= 1:
        return {name: _named(name, encode, tasks[name], started) for name in tasks}
    context = multiprocessing.get_context("spawn")
    results, pending = {}, deque()
    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_one_thread) as pool:
        for name in tasks:
            pending.append((name, pool.submit(encode, *tasks[name])))
            while len(pending) >= jobs:  # one per worker: the oldest collected before the next is made
                done, future = pending.popleft()
                results[done] = _named(done, future.result, (), started)
        while pending:
            done, future = pending.popleft()
            results[done] = _named(done, future.result, (), started)
    return results


def _named(name: str, work, args: tuple, started) -> Encoded:
    started(name)
    try:
        return work(*args)
    except CodecError as e:
        raise CodecError(f"weight {name!r}: {e}") from None

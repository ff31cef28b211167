"""Per-layer tasks on a Ray cluster (the optional ``ray`` extra), as futures :meth:`.parallel.Workers.map` waits on.

A task runs its function (e.g. :func:`.encode`) in a Ray worker (one CPU, its BLAS on one thread), so the
results are the serial path's. A stored matrix is read here, by the compiling process, and shipped with its task: the
cluster's machines need not see the model's data files. The cluster is the one this process is already
connected to (a caller's ``ray.init``), else the one at the address (``ray.init(address=...)``: "auto",
"HOST:6379", "ray://HOST:10001", or "local" for a new one on this machine), disconnected when done.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Callable

import numpy as np

from ..errors import OptionError
from .stored import StoredMatrix, loaded


def _on_one_thread(work: Callable, *args):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return work(*args)


class RayWorkers:
    """A connection to a Ray cluster that runs per-layer tasks; ``cpus``: the cluster's CPUs."""

    def __init__(self, address: str):
        try:
            import ray
        except ImportError:
            raise OptionError("--ray needs Ray: pip install 'bie-compiler[ray]'") from None
        self._ray = ray
        self._connected_here = not ray.is_initialized()
        if self._connected_here:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="error")
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise OptionError(f"--ray {address}: cannot connect to a Ray cluster there ({e})") from None
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1)(_on_one_thread)

    def ship(self, args: tuple) -> tuple:
        """A task's arguments as :meth:`submit` takes them: each matrix (a stored one read here) put in the
        object store."""
        return tuple(self._ray.put(loaded(a)) if isinstance(a, (np.ndarray, StoredMatrix)) else a for a in args)

    def submit(self, work: Callable, *args) -> Future:
        """A future of ``work(*args)`` (``args`` from :meth:`ship`); a task's exception is raised as itself (Ray
        wraps it)."""
        out: Future = Future()

        def finish(ray_future: Future) -> None:
            try:
                out.set_result(ray_future.result())
            except Exception as e:  # RayTaskError holds the task's own exception as its cause
                out.set_exception(getattr(e, "cause", None) or e)

        self._remote.remote(work, *args).future().add_done_callback(finish)
        return out

    def __enter__(self) -> "RayWorkers":
        return self

    def __exit__(self, *exc) -> None:
        if self._connected_here:
            self._ray.shutdown()

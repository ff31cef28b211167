"""TVM's CPU thread pool, set up for machines shared with other processes.

TVM splits each parallel loop statically across its threads and the calling thread waits for every
worker. By default it pins worker i to core i and lets idle workers spin. When other processes
(another runtime's spinning threads included) hold that core, the pinned worker cannot move to a
free one and each parallel region waits for the scheduler: one call of a small model can take
100x its compute. Unpinned workers that sleep when idle avoid that; they cost a wake-up per
parallel region on an idle machine.
"""

from __future__ import annotations

import os

SETTINGS = {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "0"}


def configure_thread_pool() -> None:
    """Unpinned, non-spinning workers, unless the environment says otherwise.

    TVM reads these when its pool starts (the first parallel call in the process), so call this before that.
    """
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)

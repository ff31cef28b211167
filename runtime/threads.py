"""TVM's CPU thread pool, set up for machines shared with other processes.

TVM splits each parallel loop statically across its threads and the calling thread waits for every
worker. By default it pins worker i to core i and lets idle workers poll for 300000 yields (a
tenth of a second or more) before sleeping. When other processes (another runtime's spinning
threads included) hold that core, the pinned worker cannot move to a free one and each parallel
region waits for the scheduler: one call of a small model can take 100x its compute. So workers
are left unpinned. They poll briefly (``POLL_YIELDS``) before sleeping: the kernels of one call
follow each other within microseconds, and a worker that slept after each one would have to be
woken for the next, a wait the caller pays once per parallel region (60 of them in a
MobileNetV2-sized model); after a call's last kernel it sleeps within a fraction of a
millisecond. Its polls are ``sched_yield`` calls, which give the core to any other runnable thread.
"""

from __future__ import annotations

import os

POLL_YIELDS = 400  # sched_yield calls an idle worker makes before it sleeps (about 0.5 us each on an idle core)
SETTINGS = {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": str(POLL_YIELDS)}


def configure_thread_pool() -> None:
    """Unpinned workers that poll briefly when idle, unless the environment says otherwise.

    TVM reads these when its pool starts (the first parallel call in the process), so call this before that.
    """
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)

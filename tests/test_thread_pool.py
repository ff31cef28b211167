"""The runtime's thread-pool settings: workers left unpinned and asleep soon after a call, the user's environment
kept."""

import os
import subprocess
import sys

import pytest

from bie_compiler.runtime.threads import SETTINGS, configure_thread_pool

# A parallel loop run in a fresh process (the pool starts there), then each thread's allowed CPUs.
PROBE = """
import glob, os, sys
import numpy as np, tvm
from tvm.script import tirx as T
if sys.argv[1] == "configure":
    from bie_compiler.runtime.threads import configure_thread_pool
    configure_thread_pool()

@T.prim_func
def double(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
    for i in T.parallel(64):
        b[i] = a[i] * T.float32(2)

f = tvm.compile(tvm.IRModule({"main": double.with_attr("global_symbol", "main")}), "llvm")["main"]
a, b = tvm.runtime.tensor(np.ones(64, "float32")), tvm.runtime.tensor(np.zeros(64, "float32"))
f(a, b)
assert (b.numpy() == 2).all()
if sys.argv[2] == "cpus":
    for status in glob.glob("/proc/self/task/*/status"):
        print([line.split(":", 1)[1].strip() for line in open(status) if line.startswith("Cpus_allowed_list")][0])
else:  # every thread's time on a CPU (ns) 20 ms after the call and 200 ms later
    import time
    run_ns = lambda: sum(int(open(f).read().split()[0]) for f in glob.glob("/proc/self/task/*/schedstat"))
    time.sleep(0.02)
    before = run_ns()
    time.sleep(0.2)
    print(run_ns() - before)
"""


def _probe(tmp_path, mode: str, report: str) -> str:
    probe = tmp_path / "probe.py"  # a file: TVMScript reads the function's source
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS} | {"TVM_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(probe), mode, report], env=env, capture_output=True, text=True,
                          check=True).stdout


def _thread_cpus(tmp_path, mode: str) -> set[str]:
    return set(_probe(tmp_path, mode, "cpus").split())


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for TVM to pin a worker")
def test_workers_are_not_pinned(tmp_path):
    assert len(_thread_cpus(tmp_path, "default")) > 1  # TVM's default pins its worker to one core: the probe sees it
    assert len(_thread_cpus(tmp_path, "configure")) == 1  # every thread may run on every core of the process


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for TVM to start a worker")
def test_idle_workers_sleep_soon_after_a_call(tmp_path):
    # TVM's default worker polls for 300000 yields after its task, a tenth of a second or more on a CPU; the
    # runtime's brief poll ends within a millisecond, so the process uses (almost) no CPU 20 ms after its call
    assert int(_probe(tmp_path, "default", "idle")) > 20e6
    assert int(_probe(tmp_path, "configure", "idle")) < 5e6


def test_user_settings_are_kept(monkeypatch):
    monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", "1000")
    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    configure_thread_pool()
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "1000"
    assert os.environ["TVM_BIND_THREADS"] == SETTINGS["TVM_BIND_THREADS"]

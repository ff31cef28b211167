"""One side of ``bie-compiler bench`` in its own process: an artefact or an onnxruntime session.

Run as a script (``runpy.run_path``), not imported, so the onnxruntime side never
loads TVM or bie_compiler and its peak memory is its own. Protocol: one JSON command
per line on stdin, one JSON reply per line on the original stdout (fd 1 then points
at stderr, so nothing a library prints can corrupt a reply). Threads come from the
environment the parent sets (``TVM_NUM_THREADS`` is read when TVM loads), and the
onnxruntime session is given the same count.

With a cache flush (``op: "flush_buffer"``), every timed call is preceded, outside
its timing, by one Python thread per core this process may use, each rewriting its
share of a buffer larger than the last-level cache: the weights come from memory,
and no core keeps them in its own L2 either (the L3 here is not inclusive).
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PROTOCOL = None  # the replies' stream: the original stdout


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def peak_rss_bytes() -> int:
    """VmHWM, the peak RSS of this process image (getrusage's ru_maxrss would include the parent's before exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def artefact_side():
    """Imports bie_compiler (and TVM); returns the loader of an artefact: path -> (run, runner)."""
    import bie_compiler

    def load(path: str, threads: int, spin: bool):  # TVM took threads and spinning from the environment
        runner = bie_compiler.load(path)
        return runner, runner

    return load


def onnxruntime_side():
    """Imports onnxruntime; returns the loader of a session: path -> (run, None)."""
    import onnxruntime as ort

    def load(path: str, threads: int, spin: bool):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda feeds: dict(zip(names, session.run(None, feeds))), None

    return load


class CacheFlush:
    """Rewrites ``size`` bytes from ``threads`` threads (numpy releases the GIL in its loops), so the caches lose
    whatever the last call read. Read-modify-write, not a fill: large fills may use non-temporal stores, which
    bypass the caches."""

    def __init__(self, size: int, threads: int):
        self.shares = np.array_split(np.ones(size // 4, np.float32), threads)
        self.pool = ThreadPoolExecutor(threads)

    def __call__(self) -> None:
        for done in [self.pool.submit(np.add, share, 1.0, out=share) for share in self.shares]:
            done.result()


def per_kernel(runner, feeds: dict, runs: int) -> dict:
    """Exclusive time per VM call target (a nested call's time is taken out of its caller's), summed over ``runs``."""
    totals, calls, stack = {}, {}, []

    def instrument(func, symbol, before, ret, *args):
        now = time.perf_counter()
        if before:
            stack.append([symbol, now, 0.0])
        else:
            symbol, start, inner = stack.pop()
            elapsed = now - start
            totals[symbol] = totals.get(symbol, 0.0) + elapsed - inner
            calls[symbol] = calls.get(symbol, 0) + 1
            if stack:
                stack[-1][2] += elapsed
        return 0  # tvm.relax.VMInstrumentReturnKind.NO_OP

    runner.vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            runner(feeds)
    finally:
        runner.vm.set_instrument(None)
    return {symbol: {"seconds": totals[symbol] / runs, "calls": calls[symbol] // runs} for symbol in totals}


def main() -> None:
    global PROTOCOL
    PROTOCOL = os.fdopen(os.dup(1), "w")  # replies go here; whatever a library prints goes to stderr
    os.dup2(2, 1)
    side, path, inputs, threads, spin = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    load = artefact_side() if side == "artefact" else onnxruntime_side()
    rss_after_imports = rss_bytes()  # the library loaded, not yet the model
    started = time.perf_counter()
    run, runner = load(path, threads, spin)
    with np.load(inputs) as data:
        feeds = {name: data[name] for name in data.files}
    reply({"load_seconds": time.perf_counter() - started, "rss_after_imports": rss_after_imports})
    flush, peak_before_flush = None, None
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "warmup":
            until = time.perf_counter() + command["seconds"]
            for _ in range(command["calls"]):
                run(feeds)
            while time.perf_counter() < until:
                run(feeds)
            reply({})
        elif command["op"] == "flush_buffer":  # after the warm-up: the peak memory is the model's, without the buffer
            peak_before_flush = peak_rss_bytes()
            flush = CacheFlush(command["bytes"], len(os.sched_getaffinity(0)))
            flush()  # the pages touched once before any timing
            reply({})
        elif command["op"] == "time":
            if flush is not None:
                flush()
            start = time.perf_counter()
            run(feeds)
            reply({"seconds": time.perf_counter() - start})
        elif command["op"] == "outputs":
            np.savez(command["path"], **run(feeds))
            reply({})
        elif command["op"] == "per_kernel":
            reply({"kernels": per_kernel(runner, feeds, command["runs"])})
        elif command["op"] == "exit":
            reply({"peak_rss": peak_before_flush or peak_rss_bytes()})
            return


def reply(message: dict) -> None:
    PROTOCOL.write(json.dumps(message) + "\n")
    PROTOCOL.flush()


if __name__ == "__main__":
    main()

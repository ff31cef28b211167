"""Per-call overhead: ``bie_compiler.load(out)(inputs)`` against onnxruntime's ``session.run`` on one small MatMul.

The model is ``y = x @ W`` with x [1, K] and W [K, K] (K = 64 by default), so
the arithmetic is negligible and both timings are dominated by what happens
around it: input checks, conversions, the call, outputs back to numpy. The
artefact keeps W dense (``--skip '*'``). Three calls are timed, interleaved:
the runner, ``session.run``, and the bare Relax VM call on prepared tensors
(what the runner adds is runner - bare VM). Each is a loop of ``--calls``
calls, the median over ``--repeats`` loops. Threads as in ``common.main`` (the runtime's
brief poll, onnxruntime not spinning), or with ``--spin`` both libraries' own defaults: idle workers
spin (TVM's for 300000 yields), so a parallel kernel does not wait for its threads to wake.

    python benchmarks/call_overhead.py [--size 64] [--calls 2000] [--repeats 15] [--threads 2] [--spin] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="K: x [1, K] @ W [K, K] (default %(default)s)")
    p.add_argument("--calls", type=int, default=2000, help="calls per timed loop (default %(default)s)")
    p.add_argument("--repeats", type=int, default=15, help="timed loops per method; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--spin", action="store_true", help="let idle worker threads spin (both libraries' default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def one_matmul(size: int):
    weight = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "one_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])], [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(args) -> dict:
    if args.spin:
        # TVM's own long spin, not the runtime's brief poll (common.main set it; TVM is not loaded yet)
        os.environ.pop("TVM_THREAD_POOL_SPIN_COUNT")
    import onnxruntime as ort
    import tvm

    import bie_compiler

    model = one_matmul(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        out = bie_compiler.compile_model(model, Path(tmp) / "art", skip=("*",), progress=None)
        runner = bie_compiler.load(out)
    if args.spin:  # onnxruntime's default session options spin
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    else:
        session = common.ort_session(model.SerializeToString(), args.threads)
    x = np.random.default_rng(1).standard_normal((1, args.size)).astype(np.float32)
    feeds = {"x": x}
    main, prepared = runner.vm["main"], tvm.runtime.tensor(x)
    expected = session.run(None, feeds)[0]
    error = float(np.abs(runner(feeds)["y"] - expected).max() / np.abs(expected).max())
    assert error < 1e-5, f"artefact and onnxruntime disagree: max rel err {error:.2e}"
    methods = {"bie runner": lambda: runner(feeds), "onnxruntime session.run": lambda: session.run(None, feeds),
               "bare VM call": lambda: main(prepared, *runner.weights)}
    samples = {name: [] for name in methods}
    for fn in methods.values():  # warm-up: thread pools started, lazy allocations done
        common.median_seconds(fn, args.calls, 1)
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            samples[name].append((time.perf_counter() - start) / args.calls)
    per_call = {name: statistics.median(times) * 1e6 for name, times in samples.items()}
    return {"size": args.size, "threads": args.threads, "spin": args.spin, "calls": args.calls, "repeats": args.repeats,
            "per_call_us": per_call,
            "runner_over_ort": per_call["bie runner"] / per_call["onnxruntime session.run"],
            "runner_overhead_us": per_call["bie runner"] - per_call["bare VM call"]}


def report(res: dict) -> None:
    idle = "both libraries spinning when idle" if res["spin"] else "onnxruntime not spinning, TVM polling briefly"
    print(f"x [1, {res['size']}] @ W [{res['size']}, {res['size']}], {res['threads']} threads ({idle}), "
          f"median of {res['repeats']} loops of {res['calls']} calls")
    for name, us in res["per_call_us"].items():
        print(f"  {name:26s} {us:8.2f} us")
    print(f"runner / session.run: {res['runner_over_ort']:.2f}; runner overhead over the bare VM call: "
          f"{res['runner_overhead_us']:.2f} us")


if __name__ == "__main__":
    common.main(parse_args, run, report)

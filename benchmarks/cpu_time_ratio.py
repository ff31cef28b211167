"""An artefact against onnxruntime fp32 on one thread each, in CPU time: a ratio that holds on a busy machine.

On a machine shared with other jobs, wall times move with the load and a parallel region waits for a
worker that the scheduler set aside, so ``bench``'s two-thread ratios drift with the load (see README).
Here both libraries run on the calling thread only (``TVM_NUM_THREADS=1``, onnxruntime
``intra_op_num_threads=1``) and each call is timed in the CPU time of that thread
(``time.thread_time``), which the scheduler's preemptions do not count. Calls alternate artefact /
onnxruntime after a warm-up; the ratio is of the medians (> 1: the artefact is slower). It measures the
work of the kernels, not their parallel scaling: compare two builds with it, and read ``bench`` on a
quiet machine for the targets.

    python benchmarks/cpu_time_ratio.py ART [--model M.onnx] [--input NAME:1x3x224x224 ...] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM loads

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import bie_compiler  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artefact")
    p.add_argument("--model", help="the ONNX model (default: the source the manifest recorded)")
    p.add_argument("--input", action="append", default=[], metavar="NAME:SHAPE",
                   help="an input's shape, e.g. image:1x3x224x224 (default: the artefact's, symbolic dims 1)")
    p.add_argument("--repeat", type=int, default=20, help="timed calls of each side (default %(default)s)")
    return p.parse_args()


def input_shapes(runner, given: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {spec["name"]: tuple(d if isinstance(d, int) else 1 for d in spec["shape"])
              for spec in runner.manifest["inputs"]}
    for text in given:
        name, _, shape = text.partition(":")
        if name not in shapes:
            raise SystemExit(f"--input {text}: the artefact has no input {name!r} (it has {', '.join(shapes)})")
        shapes[name] = tuple(int(d) for d in shape.split("x"))
    return shapes


def cpu_time(call) -> float:
    start = time.thread_time()
    call()
    return time.thread_time() - start


def main() -> None:
    args = parse_args()
    runner = bie_compiler.load(args.artefact)
    model = args.model or runner.manifest["source_model"]["path"]
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype("float32")
             for name, shape in input_shapes(runner, args.input).items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        runner(feeds), session.run(None, feeds)
    ours, theirs = [], []
    for _ in range(args.repeat):
        ours.append(cpu_time(lambda: runner(feeds)))
        theirs.append(cpu_time(lambda: session.run(None, feeds)))
    a, b = np.median(ours), np.median(theirs)
    print(f"{args.artefact}: artefact {a * 1e3:.2f} ms, onnxruntime {b * 1e3:.2f} ms CPU time per call "
          f"(one thread, median of {args.repeat}); ratio {a / b:.3f}")


if __name__ == "__main__":
    main()

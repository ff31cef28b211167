"""GEMV benchmark: the bie-bitplane 4-bit TVM kernel against onnxruntime's fp32 MatMul.

At batch 1, ``y = x @ W`` with ``W`` [K, N] does two flops per weight and reads
each weight once, so it is memory-bound: its time is about the bytes of ``W``
divided by the memory bandwidth. A 4-bit encoding reads ~8x fewer bytes than
fp32, and that is the speedup it can hope for, if its kernel decodes fast
enough to keep up with memory. This script measures, in one run and on the
same weights (heavy-tailed, Student-t with 5 degrees of freedom, fixed seed):

* ``cached``: one layer called again and again, its weight possibly in cache.
* ``streamed``: a chain of L distinct layers (x -> W1 -> W2 -> ...), timed as a
  whole and reported per layer (total / L). onnxruntime runs one model holding
  the L MatMuls; TVM runs one compiled kernel over the L encodings.

Each time is the median over ``--repeats`` of a timed loop. The "fraction of
the bandwidth limit" is the weight bytes one layer reads, divided by its time,
divided by a bandwidth measured here: numpy's single-threaded ``sum`` over a
512 MiB float32 array. It is a reference, not a ceiling: a layer whose weights
sit in cache, or that reads with several threads, can exceed 1.

Both libraries get the same thread count (``--threads``, default: the CPUs
this process may use), and neither may spin while idle: with as many threads
as cores, one library's spinning pool steals cores from the other's (measured:
TVM's time doubled next to a spinning onnxruntime session). TVM reads its
settings from the environment once, when it loads, so tvm and bie_compiler are
imported inside the functions that need them, after ``main`` has set them.

    python benchmarks/bitplane_gemv.py [--size 4096] [--layers 8] [--repeats 7] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import (  # noqa: E402  (shared with the other GEMV benchmarks; re-exported for them)
    BANDWIDTH_ARRAY_BYTES, l3_cache_bytes, matmul_chain, median_seconds, numpy_read_bandwidth, ort_session,
)

BITS = 4
SEED = 0
CACHED_CALLS = 20  # calls per timed loop in the cached regime
STREAMED_PASSES = 2  # passes over the L layers per timed loop in the streamed regime
MAX_REL_ERROR = 1e-4


@dataclass
class Row:
    regime: str
    ort_ms: float  # per layer
    tvm_ms: float  # per layer
    speedup: float  # ort / tvm
    encoded_bytes: int  # per layer, Encoded.nbytes
    bits_per_weight: float
    ort_bw_fraction: float
    tvm_bw_fraction: float


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="K = N of each square layer")
    p.add_argument("--layers", type=int, default=8, help="distinct layers in the streamed regime")
    p.add_argument("--repeats", type=int, default=7, help="timed loops; the median is reported")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for both libraries")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def make_layers(size: int, layers: int) -> tuple[bytes, bytes, list]:
    """L distinct weights: serialized onnx models of the first layer alone and of the chain, and their encodings.

    One dense weight exists as a numpy array at a time, and the models are
    returned serialized so that the proto's copy of the weights is gone before
    onnxruntime makes its own. Weights are [K, N] for ``x @ W``; codecs take
    [N, K], hence the transpose.
    """
    from bie_compiler.codecs import bie_bitplane

    rng = np.random.default_rng(SEED)
    chain, single = matmul_chain(size, layers), matmul_chain(size, 1)
    encodings = []
    for i in range(layers):
        w = (rng.standard_t(5, (size, size)) / np.sqrt(size)).astype(np.float32)
        chain.graph.initializer.append(numpy_helper.from_array(w, f"w{i}"))
        encodings.append(bie_bitplane.encode(w.T, bie_bitplane.Config(bits=BITS)))
    single.graph.initializer.append(chain.graph.initializer[0])
    return single.SerializeToString(), chain.SerializeToString(), encodings


def tvm_chain(encodings, x: np.ndarray):
    """One compiled kernel (every layer has the same shapes) and, per layer, its arguments.

    Layer i reads activation i and writes activation i + 1, as in the onnx
    chain. Returns the kernel, the argument lists, the weight bytes one layer
    reads, and the target.
    """
    import tvm

    from bie_compiler.codegen import kernel_for
    from bie_compiler.codegen.target import make_target

    target = make_target()
    calls = [kernel_for(enc, target) for enc in encodings]
    func = calls[0].func.with_attr("global_symbol", "main")
    kernel = tvm.compile(tvm.IRModule({"main": func}), target).mod["main"]
    n = encodings[0].shape[0]
    acts = [tvm.runtime.tensor(x)] + [tvm.runtime.empty((1, n), "float32") for _ in calls]
    args = [[acts[i], *(tvm.runtime.tensor(c) for c in call.constants), acts[i + 1]] for i, call in enumerate(calls)]
    weight_bytes = sum(c.nbytes for c in calls[0].constants)
    return kernel, args, weight_bytes, target


def tvm_rel_error(kernel, args, enc) -> float:
    """max |kernel(x) - x @ decode(enc).T| / max |x @ decode(enc).T| for one layer."""
    from bie_compiler.codecs import bie_bitplane

    kernel(*args)
    x, y = args[0].numpy(), args[-1].numpy()
    ref = x @ bie_bitplane.decode(enc).T
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def run(args: argparse.Namespace) -> dict:
    bandwidth = numpy_read_bandwidth(args.repeats)
    single, chain, encodings = make_layers(args.size, args.layers)
    ort_single, ort_chain = ort_session(single, args.threads), ort_session(chain, args.threads)
    del single, chain  # the sessions hold their own copies

    x = np.random.default_rng(SEED + 1).standard_normal((1, args.size)).astype(np.float32)
    kernel, tvm_args, tvm_bytes, target = tvm_chain(encodings, x)
    rel_error = tvm_rel_error(kernel, tvm_args[0], encodings[0])
    if rel_error > MAX_REL_ERROR:
        raise SystemExit(f"TVM kernel disagrees with the reference decoder: relative error {rel_error:.2e}")

    feed = {"x": x}
    layers = len(tvm_args)

    def tvm_pass():
        for layer_args in tvm_args:
            kernel(*layer_args)

    times = {
        "cached": (
            median_seconds(lambda: ort_single.run(None, feed), CACHED_CALLS, args.repeats),
            median_seconds(lambda: kernel(*tvm_args[0]), CACHED_CALLS, args.repeats),
        ),
        "streamed": (
            median_seconds(lambda: ort_chain.run(None, feed), STREAMED_PASSES, args.repeats) / layers,
            median_seconds(tvm_pass, STREAMED_PASSES, args.repeats) / layers,
        ),
    }
    enc = encodings[0]
    ort_bytes = 4 * args.size * args.size
    rows = [
        Row(regime, 1e3 * t_ort, 1e3 * t_tvm, t_ort / t_tvm, enc.nbytes, enc.bits_per_weight,
            ort_bytes / t_ort / bandwidth, tvm_bytes / t_tvm / bandwidth)
        for regime, (t_ort, t_tvm) in times.items()
    ]
    return {
        "size": args.size, "layers": layers, "threads": args.threads, "repeats": args.repeats,
        "target": str(target.attrs["mcpu"]), "numpy_single_thread_read_bandwidth_Bps": bandwidth,
        "l3_cache_bytes": l3_cache_bytes(), "ort_weight_bytes_per_layer": ort_bytes,
        "tvm_weight_bytes_per_layer": tvm_bytes, "tvm_rel_error": rel_error,
        "rows": [asdict(r) for r in rows],
    }


def report(res: dict) -> None:
    mb = 1e-6
    l3 = res["l3_cache_bytes"]
    print(f"{res['size']}x{res['size']} MatMul, batch 1, {res['threads']} threads, llvm -mcpu={res['target']}, "
          f"median of {res['repeats']}")
    print(f"numpy single-thread read bandwidth: {res['numpy_single_thread_read_bandwidth_Bps'] * 1e-9:.1f} GB/s "
          f"(float32 sum over {BANDWIDTH_ARRAY_BYTES >> 20} MiB)")
    print(f"streamed working sets ({res['layers']} layers): onnxruntime "
          f"{res['layers'] * res['ort_weight_bytes_per_layer'] * mb:.0f} MB, bie-bitplane-{BITS} "
          f"{res['layers'] * res['tvm_weight_bytes_per_layer'] * mb:.0f} MB"
          + (f"; L3 cache {l3 * mb:.0f} MB" if l3 else ""))
    print(f"correctness: max|tvm - x @ decode(enc).T| / max|ref| = {res['tvm_rel_error']:.1e} (<= {MAX_REL_ERROR:g})")
    print()
    header = ["regime", "ort fp32 ms", f"bitplane-{BITS} ms", "speedup", "enc bytes/layer", "bits/w",
              "ort BW frac", "tvm BW frac"]
    table = [header] + [
        [r["regime"], f"{r['ort_ms']:.3f}", f"{r['tvm_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['encoded_bytes']:,}",
         f"{r['bits_per_weight']:.3f}", f"{r['ort_bw_fraction']:.2f}", f"{r['tvm_bw_fraction']:.2f}"]
        for r in res["rows"]
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]))
    print()
    print("times are per layer; BW frac = weight bytes per layer / time / numpy single-thread read bandwidth")


if __name__ == "__main__":
    common.main(parse_args, run, report)

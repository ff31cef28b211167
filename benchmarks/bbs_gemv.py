"""GEMV benchmark: the ``bbs`` moderate LUT bit-serial kernel against onnxruntime fp32 MatMul and 4-bit MatMulNBits.

For each shape ``K x N`` (``y = x @ W``, x [1, K], W [K, N]; default 4096x4096,
4096x11008 and 11008x4096), on the same heavy-tailed weights (Student-t, 5
degrees of freedom, fixed seed), in one run:

* onnxruntime fp32 ``MatMul``;
* onnxruntime ``MatMulNBits`` 4-bit, block 32, symmetric, accuracy_level 4
  (``MatMulNBitsQuantizer``; needs ``onnx-ir``: ``pip install -e .[bench]``; the
  table says so when it is missing);
* the ``bbs`` moderate kernel (zero-point shifting, N = 4, the preset's 20 %
  sensitive channels at INT8; ``--sensitive-fraction`` to change it), from
  ``kernel_for`` on the host target: the LUT bit-serial GEMV, with each of
  ``--tables`` (``lut_tables``: exact fp32 tables, ``bbs``, checked against the
  reference decoder to 1e-4 of the largest output; int8 tables, ``bbs_int8``,
  checked within their stated bound, ``bbs_lut.int8_error_bound``).

Weights are streamed from memory: each method runs L distinct copies of the
layer (each its own buffers) one after the other, L chosen so that the copies
together are at least ``--cache-factor`` times the L3 cache; the time per layer
is a pass over the L layers divided by L. The methods' passes are interleaved
(one pass of each per round, ``--repeats`` rounds, the median per method).
"BW frac" is a method's read rate (the bytes one layer reads, for bbs every
stored array, / time) over a ceiling measured in the same rounds: the fastest
read rate in the round of two TVM kernels that only stream memory
(``common.streaming_sums``) and of onnxruntime's fp32 GEMV, the median over
rounds (``common.bandwidth_fractions``, as in ``bitplane_gemv.py``); "full":
the same over the rounds where ``common.compute_probe`` had the cores' full
compute (as in ``bitplane_gemv.py``).
Threads: ``--threads`` (default 2) for both libraries.

    python benchmarks/bbs_gemv.py [--shapes 4096x4096,4096x11008,11008x4096] [--tables fp32,int8] [--repeats 7]
        [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import (  # noqa: E402
    bandwidth_fractions, compute_probe, compute_summary, copies_for, interleaved_passes, last_level_cache_bytes,
    matmul_fanout, nbits_fanout, ort_session, streaming_sums,
)

SEED = 0
MAX_REL_ERROR = 1e-4
DEFAULT_SHAPES = "4096x4096,4096x11008,11008x4096"
TABLE_METHODS = {"fp32": "bbs", "int8": "bbs_int8"}  # the method's name for each of --tables


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated KxN (default %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--cache-factor", type=float, default=2.0, help="streamed copies total at least this many L3s")
    p.add_argument("--sensitive-fraction", type=float, default=None, help="bbs beta (default: the moderate preset's)")
    p.add_argument("--tables", default="fp32,int8", help="comma-separated bbs look-up tables (default %(default)s)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def bbs_layers(enc, tables: str, factor: float, target):
    """The compiled bbs kernel with ``tables``, L argument lists over distinct copies of its constants, bytes per
    layer, its largest error relative to the largest output."""
    import tvm

    from bie_compiler.codecs import bbs
    from bie_compiler.codegen import kernel_for
    from bie_compiler.codegen.kernels import bbs_lut, lut

    call = kernel_for(enc, target, lut_tables=tables)
    if not call.kind.startswith(bbs_lut.KIND) or (tables == "int8" and not lut.int8_supported(target)):
        raise SystemExit(f"expected the LUT kernel with {tables} tables on {target}, got {call.kind}")
    kernel = tvm.compile(tvm.IRModule({"main": call.func.with_attr("global_symbol", "main")}), target).mod["main"]
    layer_bytes = sum(c.nbytes for c in call.constants)
    n, k = enc.shape
    x = tvm.runtime.tensor(np.random.default_rng(SEED + 1).standard_normal((1, k)).astype(np.float32))
    args = [[x, *(tvm.runtime.tensor(c) for c in call.constants), tvm.runtime.empty((1, n), "float32")]
            for _ in range(copies_for(layer_bytes, factor))]
    kernel(*args[0])
    ref = x.numpy() @ bbs.decode(enc).T.astype(np.float64)
    error = np.abs(args[0][-1].numpy() - ref)
    bound = bbs_lut.int8_error_bound(x.numpy(), enc) if tables == "int8" else 0
    if (error > bound + MAX_REL_ERROR * np.abs(ref).max()).any():
        raise SystemExit(f"bbs kernel ({tables} tables) disagrees with the reference decoder beyond its bound: "
                         f"relative error {error.max() / np.abs(ref).max():.2e}")
    return kernel, args, layer_bytes, float(error.max() / np.abs(ref).max())


def measure_shape(k: int, n: int, args: argparse.Namespace, gauges: list[dict], target) -> dict:
    weight = (np.random.default_rng(SEED).standard_t(5, (k, n)) / np.sqrt(k)).astype(np.float32)
    feed = {"x": np.random.default_rng(SEED + 1).standard_normal((1, k)).astype(np.float32)}
    fp32_layers = copies_for(weight.nbytes, args.cache_factor)
    fp32 = ort_session(matmul_fanout(weight, fp32_layers).SerializeToString(), args.threads)
    methods = [{"name": "fp32", "pass": lambda: fp32.run(None, feed), "layers": fp32_layers, "bytes": weight.nbytes,
                "reference": True}]
    model, nbits_bytes, missing = nbits_fanout(weight, copies_for(k * n // 2, args.cache_factor))
    if model is not None:
        nbits = ort_session(model.SerializeToString(), args.threads)
        methods.append({"name": "nbits", "pass": lambda: nbits.run(None, feed), "layers": len(model.graph.node),
                        "bytes": nbits_bytes})
        del model
    from bie_compiler.codecs import bbs

    enc = bbs.encode(weight.T, bbs.Config("moderate", sensitive_fraction=args.sensitive_fraction))
    del weight
    errors = {}
    for tables in args.tables.split(","):
        kernel, tvm_args, layer_bytes, errors[tables] = bbs_layers(enc, tables, args.cache_factor, target)
        methods.append({"name": TABLE_METHODS[tables], "pass": lambda kernel=kernel, tvm_args=tvm_args: [
            kernel(*layer_args) for layer_args in tvm_args], "layers": len(tvm_args), "bytes": layer_bytes})
    interleaved_passes(gauges + methods, args.repeats)
    row = {"shape": f"{k}x{n}", "nbits_missing": missing, **bandwidth_fractions(gauges + methods),
           "bbs_bits_per_weight": enc.bits_per_weight, "bbs_rel_errors": errors,
           "bbs_sensitive": int(enc.header["sensitive"]),
           "copies": {m["name"]: m["layers"] for m in methods}}
    for m in methods:
        row.update({f"{m['name']}_ms": m["ms"], f"{m['name']}_bytes": m["bytes"],
                    f"{m['name']}_bw_fraction": m["bw_fraction"],
                    f"{m['name']}_bw_fraction_full": m["bw_fraction_full"]})
    return row


def report(res: dict) -> None:
    print(f"batch-1 GEMV, weights streamed (copies >= {res['cache_factor']:g} x L3 = {res['l3_bytes'] / 2**20:.0f} MiB), "
          f"{res['threads']} threads, llvm -mcpu={res['target']}, interleaved, median of {res['repeats']}")
    for r in res["rows"]:
        print(f"{r['shape']}: read bandwidth ceiling {r['bandwidth'] * 1e-9:.1f} GB/s (median over rounds of the fastest "
              "of: " + ", ".join(f"{name} {rate * 1e-9:.1f}" for name, rate in r["references"].items())
              + f"); {compute_summary(r['compute'])}")
    ours = [TABLE_METHODS[t] for t in res["tables"]]
    header = ["K x N", "fp32 ms", "NBits-4 ms", *(f"{m} ms" for m in ours), *(f"{m} vs NBits" for m in ours),
              "bbs MB", "bbs bits/w", "NBits MB", *(f"{m} BW frac (full)" for m in ours), "NBits BW frac",
              "fp32 BW frac"]
    table = [header]
    for r in res["rows"]:
        nbits = "nbits_ms" in r
        table.append([
            r["shape"], f"{r['fp32_ms']:.3f}", f"{r['nbits_ms']:.3f}" if nbits else "n/a",
            *(f"{r[m + '_ms']:.3f}" for m in ours),
            *(f"{r['nbits_ms'] / r[m + '_ms']:.2f}x" if nbits else "n/a" for m in ours),
            f"{r[ours[0] + '_bytes'] / 1e6:.2f}", f"{r['bbs_bits_per_weight']:.3f}",
            f"{r['nbits_bytes'] / 1e6:.2f}" if nbits else "n/a",
            *(f"{r[m + '_bw_fraction']:.2f} ({r[m + '_bw_fraction_full']:.2f})" for m in ours),
            f"{r['nbits_bw_fraction']:.2f}" if nbits else "n/a", f"{r['fp32_bw_fraction']:.2f}",
        ])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]))
    for r in res["rows"]:
        if r["nbits_missing"]:
            print(f"MatMulNBits missing for {r['shape']}: {r['nbits_missing']}")
        print(f"{r['shape']}: largest error / largest output: " + ", ".join(
            f"{t} tables {e:.1e}" for t, e in r["bbs_rel_errors"].items()))
    print("times per layer; bbs bytes = every stored array (sensitive INT8 rows, columns, metadata, scales, "
          "positions; the same for both tables); BW frac = median over rounds of bytes / time / that round's ceiling "
          "(full: over the rounds with the full compute)")


def run(args: argparse.Namespace) -> dict:
    from bie_compiler.codegen.target import make_target

    target = make_target()
    gauges = [*streaming_sums(), compute_probe()]  # run every round beside the methods: the ceiling, the compute
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    rows = [measure_shape(k, n, args, gauges, target) for k, n in shapes]
    return {"threads": args.threads, "repeats": args.repeats, "target": str(target.attrs["mcpu"]),
            "tables": args.tables.split(","),
            "cache_factor": args.cache_factor, "l3_bytes": last_level_cache_bytes() or 0, "rows": rows}


if __name__ == "__main__":
    common.main(parse_args, run, report)

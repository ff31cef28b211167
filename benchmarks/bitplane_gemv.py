"""GEMV benchmark: the ``bie-bitplane`` batch-1 kernels against onnxruntime fp32 MatMul and 4-bit MatMulNBits.

For each shape ``K x N`` (``y = x @ W``, x [1, K], W [K, N]; default 4096x4096,
4096x11008 and 11008x4096), on the same heavy-tailed weights (Student-t, 5
degrees of freedom, fixed seed), in one run:

* onnxruntime fp32 ``MatMul`` and ``MatMulNBits`` 4-bit (block 32, symmetric,
  accuracy_level 4; needs ``onnx-ir``: ``pip install -e .[bench]``);
* ``bie-bitplane`` at each of ``--bits`` (sign included, one scale per channel):
  the look-up-table GEMV (:mod:`bie_compiler.codegen.kernels.bitplane_lut`)
  with each of ``--tables`` (exact fp32 tables; int8 tables, up to 4 planes),
  and, where ``kernel_for`` picks another kernel for one row (the integer GEMV
  at 4 and 8 bits), that one too.

Weights are streamed from memory: each method runs L distinct copies of the
layer one after the other, L chosen so that the copies together are at least
``--cache-factor`` times the L3; the time per layer is a pass over the L layers
divided by L. The methods' passes are interleaved (one pass of each per round,
``--repeats`` rounds, the median per method), so they share the machine's
state, which matters on a shared machine (its memory bandwidth is shared with
other tenants of the host and drifts within minutes). "BW frac" is measured
against a ceiling taken in the same rounds: each round also runs a pass of two
TVM kernels that only stream memory (``common.streaming_sums``: float32 sums
over 512 MiB, same threads), and the round's ceiling is the fastest read rate
of those two and of onnxruntime's fp32 GEMV in that round; a method's BW frac
is the median over rounds of its read rate (bytes a layer reads / time) over
the round's ceiling (``common.bandwidth_fractions``), so at most about 1.
Each round also runs ``common.compute_probe`` (integer dot products in
registers on every thread): "full" is the BW frac over the rounds where it ran
at 0.75 of its best rate or more, and the report says how many rounds those
were (this machine's host at times takes about a core's compute for seconds,
and a kernel near its compute limit then reads less of the bandwidth).
Every TVM kernel is checked against the reference decoder first (the int8-table GEMV: within its
stated bound, ``bitplane_lut.int8_error_bound``; its relative error is printed).

    python benchmarks/bitplane_gemv.py [--shapes 4096x4096,...] [--bits 2,3,4] [--tables fp32,int8] [--repeats 7]
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated KxN (default %(default)s)")
    p.add_argument("--bits", default="2,3,4", help="comma-separated bie-bitplane bits, 2..8 (default %(default)s)")
    p.add_argument("--tables", default="fp32,int8", help="LUT GEMV tables: fp32 and/or int8 (default %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--cache-factor", type=float, default=2.0, help="streamed copies total at least this many L3s")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def lut_calls(enc, tables: list[str], target) -> list:
    """The LUT GEMV's calls for ``enc`` with each of ``tables`` that applies (int8: up to 4 planes), and its error
    bound (None: exact)."""
    from bie_compiler.codegen.kernels import bitplane, bitplane_lut

    layout, _, planes = bitplane.lut_parts(enc)
    calls = []
    with target:
        for tables_of in tables:
            if tables_of == "int8" and layout.magnitude_planes + 1 > bitplane_lut.QUAD:
                continue
            bound = (lambda x: bitplane_lut.int8_error_bound(x, layout, planes.scales)) if tables_of == "int8" else None
            calls.append((f"{tables_of} tables", bitplane.lut_call(enc, tables_of), bound))
    return calls


def bitplane_layers(weight: np.ndarray, bits: int, tables: list[str], factor: float, target) -> list[dict]:
    """Per kernel (the LUT GEMV with each of ``tables``, and kernel_for's choice where it differs): name, a pass over
    its copies, bytes per layer, relative error against the reference decoder."""
    import tvm

    from bie_compiler.codecs import bie_bitplane
    from bie_compiler.codegen import kernel_for
    from bie_compiler.codegen.kernels import bitplane

    enc = bie_bitplane.encode(weight.T, bie_bitplane.Config(bits=bits))
    chosen = kernel_for(enc, target)
    other = not chosen.kind.startswith(bitplane.LUT_KIND)  # not the LUT GEMV (with either tables)
    calls = lut_calls(enc, tables, target) + ([("", chosen, None)] if other else [])
    k, n = weight.shape
    x = tvm.runtime.tensor(np.random.default_rng(SEED + 1).standard_normal((1, k)).astype(np.float32))
    ref = x.numpy() @ bie_bitplane.decode(enc).T.astype(np.float64)
    kernels = []
    for label, call, bound in calls:
        kernel = tvm.compile(tvm.IRModule({"main": call.func.with_attr("global_symbol", "main")}), target).mod["main"]
        layer_bytes = sum(c.nbytes for c in call.constants)
        args = [[x, *(tvm.runtime.tensor(c) for c in call.constants), tvm.runtime.empty((1, n), "float32")]
                for _ in range(copies_for(layer_bytes, factor))]
        kernel(*args[0])
        deviation = np.abs(args[0][-1].numpy() - ref)
        error = float(deviation.max() / np.abs(ref).max())
        if error > MAX_REL_ERROR if bound is None else (deviation > bound(x.numpy())).any():
            raise SystemExit(f"{call.kind} {label} disagrees with the reference decoder: relative error {error:.2e}")

        def one_pass(kernel=kernel, args=args):
            for layer_args in args:
                kernel(*layer_args)

        kernels.append({"name": f"bitplane-{bits} {call.kind} {label}".strip(), "pass": one_pass, "layers": len(args),
                        "bytes": layer_bytes, "bits_per_weight": enc.bits_per_weight, "rel_error": error})
    return kernels


def measure_shape(k: int, n: int, args: argparse.Namespace, gauges: list[dict], target) -> dict:
    weight = (np.random.default_rng(SEED).standard_t(5, (k, n)) / np.sqrt(k)).astype(np.float32)
    feed = {"x": np.random.default_rng(SEED + 1).standard_normal((1, k)).astype(np.float32)}
    methods, missing = [], None
    fp32_layers = copies_for(weight.nbytes, args.cache_factor)
    fp32 = ort_session(matmul_fanout(weight, fp32_layers).SerializeToString(), args.threads)
    methods.append({"name": "ort fp32", "pass": lambda: fp32.run(None, feed), "layers": fp32_layers,
                    "bytes": weight.nbytes, "reference": True})
    model, nbits_bytes, missing = nbits_fanout(weight, copies_for(k * n // 2, args.cache_factor))
    if model is not None:
        layers = len(model.graph.node)
        nbits = ort_session(model.SerializeToString(), args.threads)
        del model
        methods.append({"name": "ort NBits-4", "pass": lambda: nbits.run(None, feed), "layers": layers,
                        "bytes": nbits_bytes})
    for bits in (int(b) for b in args.bits.split(",")):
        methods += bitplane_layers(weight, bits, args.tables.split(","), args.cache_factor, target)
    del weight
    interleaved_passes(gauges + methods, args.repeats)
    ceiling = bandwidth_fractions(gauges + methods)
    rows = [{key: m[key] for key in m if key not in ("pass", "seconds", "reference")} for m in methods]
    return {"shape": f"{k}x{n}", "nbits_missing": missing, "methods": rows, **ceiling}


def report(res: dict) -> None:
    print(f"batch-1 GEMV, weights streamed (copies >= {res['cache_factor']:g} x L3 = {res['l3_bytes'] / 2**20:.0f} MiB), "
          f"{res['threads']} threads, llvm -mcpu={res['target']}, interleaved, median of {res['repeats']}")
    for shape in res["rows"]:
        print(f"{shape['shape']}: read bandwidth ceiling {shape['bandwidth'] * 1e-9:.1f} GB/s (median over rounds of the "
              "fastest of: " + ", ".join(f"{name} {rate * 1e-9:.1f}" for name, rate in shape["references"].items())
              + f"); {compute_summary(shape['compute'])}")
    header = ["K x N", "method", "ms/layer", "vs fp32", "vs NBits-4", "MB/layer", "bits/w", "BW frac", "full",
              "rel err"]
    table = [header]
    for shape in res["rows"]:
        by_name = {m["name"]: m for m in shape["methods"]}
        nbits = by_name.get("ort NBits-4")
        for m in shape["methods"]:
            table.append([shape["shape"], m["name"], f"{m['ms']:.3f}", f"{by_name['ort fp32']['ms'] / m['ms']:.2f}x",
                          f"{nbits['ms'] / m['ms']:.2f}x" if nbits else "n/a", f"{m['bytes'] / 1e6:.2f}",
                          f"{m['bits_per_weight']:.3f}" if "bits_per_weight" in m else "", f"{m['bw_fraction']:.2f}",
                          f"{m['bw_fraction_full']:.2f}",
                          f"{m['rel_error']:.1e}" if "rel_error" in m else ""])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join([line[0].ljust(widths[0]), line[1].ljust(widths[1]),
                         *(c.rjust(w) for c, w in zip(line[2:], widths[2:]))]))
    for shape in res["rows"]:
        if shape["nbits_missing"]:
            print(f"MatMulNBits missing for {shape['shape']}: {shape['nbits_missing']}")
    print("times per layer; vs = that method's time / this one's (above 1: faster); "
          "BW frac = median over rounds of bytes / time / that round's ceiling (full: over the rounds with the full "
          "compute); rel err = max |y - exact| / max |exact| against the reference decoder")


def run(args: argparse.Namespace) -> dict:
    from bie_compiler.codegen.target import make_target

    target = make_target()
    gauges = [*streaming_sums(), compute_probe()]  # run every round beside the methods: the ceiling, the compute
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    rows = [measure_shape(k, n, args, gauges, target) for k, n in shapes]
    return {"threads": args.threads, "repeats": args.repeats, "target": str(target.attrs["mcpu"]),
            "cache_factor": args.cache_factor, "l3_bytes": last_level_cache_bytes() or 0, "rows": rows}


if __name__ == "__main__":
    common.main(parse_args, run, report)

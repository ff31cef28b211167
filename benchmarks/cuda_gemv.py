"""GPU GEMV benchmark: each codec's CUDA kernel against a dense fp16 GEMV built with TVM, at batch 1.

``y = x @ W.T`` with ``W`` [N, K] (4096x4096 by default) reads every weight
once for two flops: memory-bound, so the figure of merit is the weight bytes
read per second. For each codec the script encodes the same heavy-tailed
weights (Student-t, 5 degrees of freedom, half of them pruned to zero, fixed
seed), builds the kernel the compiler uses for ``--target cuda`` (``kernel_for``),
checks it once against ``x @ decode(enc).T``, and times it with TVM's
``time_evaluator`` (CUDA events) in two regimes:

* ``warm``: the same call repeated; the weights may stay in L2 (an H100 has
  50 MB of L2: the 32 MiB of fp16 weights fit, and so do all the encodings).
* ``cold``: one call per measurement with ``cache_flush_bytes`` of L2 flushed first.

The baseline is a dense fp16 GEMV (fp16 weights and activations, fp32
accumulation), scheduled by dlight's ``gpu.GEMV`` rule. "BW frac" is the bytes a
call reads (weights, activations, output) divided by its time and by the
device's copy bandwidth measured in the same run (a 1 GiB device-to-device copy
kernel, read plus write bytes).

This needs a CUDA GPU; without one it exits with a message saying so.

    python benchmarks/cuda_gemv.py [--size 4096] [--arch sm_90] [--repeats 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np

SEED = 0
COPY_BYTES = 2**30
FLUSH_BYTES = 256 * 2**20  # more than the L2 of any current GPU
CODECS = [  # (label, codec, options)
    ("bie-bitplane 4-bit", "bie-bitplane", {"bits": 4}),
    ("bie-bitplane 2-bit", "bie-bitplane", {"bits": 2}),
    ("bie-binary bitmap", "bie-binary", {"layout": "bitmap"}),
    ("bie-binary index 10%", "bie-binary", {"layout": "index", "density": 0.1}),
    ("bie-blocked 20%", "bie-blocked", {"density": 0.2}),
    ("bbs moderate", "bbs", {"preset": "moderate"}),
    ("bbs conservative", "bbs", {"preset": "conservative"}),
    ("tans 15 levels", "tans", {"levels": 15}),
]
MAX_REL_ERROR = 1e-4


@dataclass
class Row:
    kernel: str
    bytes_read: int
    warm_us: float
    cold_us: float
    warm_bw_frac: float
    cold_bw_frac: float


def timings(fn_module, name, dev, args, repeats: int) -> tuple[float, float]:
    """(warm, cold) median seconds of one call."""
    warm = fn_module.time_evaluator(name, dev, number=100, repeat=repeats)(*args).median
    cold = fn_module.time_evaluator(name, dev, number=1, repeat=repeats, cache_flush_bytes=FLUSH_BYTES)(*args).median
    return warm, cold


def copy_module(target, nbytes: int = COPY_BYTES):
    """A dlight-scheduled float32 copy ``copy(a, b)`` of ``nbytes``, compiled for ``target``."""
    import tvm
    from tvm import te
    from tvm.s_tir import dlight as dl

    n = nbytes // 4
    a = te.placeholder((n,), "float32", "a")
    b = te.compute((n,), lambda i: a[i], name="b")
    mod = tvm.IRModule({"copy": te.create_prim_func([a, b]).with_attr("global_symbol", "copy")})
    with target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)
    return tvm.compile(mod, target).mod


def copy_bandwidth(target, dev, repeats: int) -> float:
    """Bytes per second (read + write) of a device-to-device float32 copy of COPY_BYTES, dlight-scheduled."""
    import tvm

    lib = copy_module(target)
    n = COPY_BYTES // 4
    src, dst = tvm.runtime.empty((n,), "float32", dev), tvm.runtime.empty((n,), "float32", dev)
    seconds = lib.time_evaluator("copy", dev, number=10, repeat=repeats)(src, dst).median
    return 2 * COPY_BYTES / seconds


def dense_fp16_module(target, n: int, k: int):
    """``gemv(x [1, K] fp16, w [N, K] fp16, y [1, N] fp32)``, scheduled by dlight's gpu.GEMV rule and compiled."""
    import tvm
    from tvm import te
    from tvm.s_tir import dlight as dl

    xa = te.placeholder((1, k), "float16", "x")
    wa = te.placeholder((n, k), "float16", "w")
    r = te.reduce_axis((0, k), "r")
    y = te.compute((1, n), lambda i, j: te.sum(xa[i, r].astype("float32") * wa[j, r].astype("float32"), axis=r), name="y")
    mod = tvm.IRModule({"gemv": te.create_prim_func([xa, wa, y]).with_attr("global_symbol", "gemv")})
    with target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.GEMV())(mod)
    if not mod["gemv"].attrs or not mod["gemv"].attrs.get("tirx.is_scheduled", False):
        raise RuntimeError("dlight's gpu.GEMV rule did not schedule the fp16 GEMV")
    return tvm.compile(mod, target).mod


def dense_fp16(target, dev, w: np.ndarray, x: np.ndarray):
    """A dlight-scheduled fp16 GEMV over ``w`` [N, K]: (module, args, bytes read)."""
    import tvm

    n, k = w.shape
    lib = dense_fp16_module(target, n, k)
    args = [tvm.runtime.tensor(x.astype(np.float16), dev), tvm.runtime.tensor(w.astype(np.float16), dev),
            tvm.runtime.empty((1, n), "float32", dev)]
    lib["gemv"](*args)
    ref = x.astype(np.float16).astype(np.float64) @ w.astype(np.float16).astype(np.float64).T
    check("dense fp16", args[-1].numpy(), ref)
    return lib, args, w.size * 2 + k * 2 + n * 4


def check(label: str, got: np.ndarray, ref: np.ndarray) -> None:
    error = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
    if error > MAX_REL_ERROR:
        raise RuntimeError(f"{label}: relative error {error:.2e} against the reference (limit {MAX_REL_ERROR:.0e})")


def codec_kernel(target, dev, codec: str, options: dict, w: np.ndarray, x: np.ndarray):
    """The compiler's CUDA kernel for ``codec``: (module, args, bytes read)."""
    import tvm

    from bie_compiler.codecs import CODECS, make_config
    from bie_compiler.codegen import kernel_for

    module = CODECS[codec]
    enc = module.encode(w, make_config(codec, options))
    call = kernel_for(enc, target)
    lib = tvm.compile(tvm.IRModule({"kernel": call.func.with_attr("global_symbol", "kernel")}), target).mod
    n, k = w.shape
    args = [tvm.runtime.tensor(x, dev), *(tvm.runtime.tensor(c, dev) for c in call.constants),
            tvm.runtime.empty((1, n), "float32", dev)]
    lib["kernel"](*args)
    check(codec, args[-1].numpy(), x.astype(np.float64) @ module.decode(enc).astype(np.float64).T)
    return lib, args, sum(int(c.nbytes) for c in call.constants) + x.nbytes + n * 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="N = K (default 4096)")
    parser.add_argument("--arch", default=None, help="CUDA architecture (default: sm_90)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()

    import tvm

    from bie_compiler.codegen.target import make_target

    dev = tvm.cuda(0)
    if not dev.exist:
        sys.exit("cuda_gemv.py needs a CUDA GPU: tvm.cuda(0) does not exist on this machine (nothing was measured)")
    from bie_compiler.runtime.cuda_device import cuda_device

    target = make_target("cuda", arch=args.arch)
    cuda_device(str(target.attrs["arch"]))  # the GPU is recent enough, and a CUDA compiler is set up
    rng = np.random.default_rng(SEED)
    w = (rng.standard_t(5, (args.size, args.size)) * (rng.random((args.size, args.size)) > 0.5)).astype(np.float32)
    x = rng.standard_normal((1, args.size)).astype(np.float32)

    bandwidth = copy_bandwidth(target, dev, args.repeats)
    rows = []
    for label, build, name in [("dense fp16 (TVM dlight GEMV)", lambda: dense_fp16(target, dev, w, x), "gemv")] + [
        (label, (lambda c=codec, o=options: codec_kernel(target, dev, c, o, w, x)), "kernel") for label, codec, options in CODECS
    ]:
        lib, call_args, nbytes = build()
        warm, cold = timings(lib, name, dev, call_args, args.repeats)
        rows.append(Row(label, nbytes, warm * 1e6, cold * 1e6, nbytes / warm / bandwidth, nbytes / cold / bandwidth))

    print(f"{dev.device_name} (compute {dev.compute_version}), {args.size}x{args.size}, batch 1; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(f"{'kernel':30s} {'bytes read':>12s} {'warm us':>9s} {'cold us':>9s} {'warm BW frac':>13s} {'cold BW frac':>13s}")
    for r in rows:
        print(f"{r.kernel:30s} {r.bytes_read:12d} {r.warm_us:9.1f} {r.cold_us:9.1f} {r.warm_bw_frac:13.2f} {r.cold_bw_frac:13.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.device_name, "copy_bandwidth": bandwidth, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

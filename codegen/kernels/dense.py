"""The matmul of a weight left dense (a fallback layer), scheduled as the decode-once kernels are.

TVM's generic CPU rewrite of a legalized ``x @ W`` walks W [K, N] down its
columns (measured at 4096x4096: 65 ms at batch 1, where onnxruntime takes ~2 ms;
149 ms at 8 rows, 4.8 s at 256), so a dense layer gets this kernel instead: the
weight stored [N, K], each channel's row read once straight into 16-lane FMA
accumulators for every row of activations (the padding to whole vectors is a
bounds test), channels in parallel: the :mod:`.decode_once` schedule with its
row buffer inlined (a copy into it cost 4.3 ms against 2.6 ms streamed).
Measured with it: 2.6 ms at batch 1, 6.3 ms at 8 rows, 155 ms at 256.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from bie_compiler.codecs.base import PACK_LANES

from . import decode_once

BLOCK = "dense"


def gemv(n: int, k: int) -> tirx.PrimFunc:
    """``f(x [m, K], weight [N, K], out [m, N])``, ``out = x @ weight.T``, any m."""
    kp = -(-k // PACK_LANES) * PACK_LANES
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    weight = te.placeholder((n, k), "float32", "weight")
    zero = tirx.const(0, "float32")
    xpad = te.compute((x.shape[0], kp), lambda m, kk: te.if_then_else(kk < k, x[m, kk], zero), name="xpad")
    row = te.compute((n, kp), lambda c, kk: te.if_then_else(kk < k, weight[c, kk], zero), name="decoded")
    rk = te.reduce_axis((0, kp), "rk")
    out = te.compute((x.shape[0], n), lambda m, c: te.sum(xpad[m, rk] * row[c, rk], axis=rk), name=BLOCK)
    sch = s_tir.Schedule(te.create_prim_func([x, weight, out]))
    sch.work_on("main")
    decode_once.schedule_llvm(sch, BLOCK)
    sch.compute_inline(sch.get_sblock("decoded"))
    return sch.mod["main"]


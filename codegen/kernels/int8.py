"""INT8 weights times a per-channel scale (codecs ``int8`` and ``bitwave``), with fp32 activations.

Both codecs store integers per weight and one scale per output channel;
``int8`` as the codes themselves, ``bitwave`` as ``bbs``-style bit columns
(``8 - N`` kept column bits, a per-group count ``z`` of zero columns) whose
value is ``kept << (N - z)``. :class:`Int8Weights` is that integer as a TE
function of ``(n, kk)`` plus the constants it reads; the kernels are shared:

* one row: channels in parallel, each channel's weights converted and scaled
  inside its 16-lane FMA loop (the :mod:`.decode_once` schedule with the row
  buffer inlined), so a channel streams its bytes once; activations stay fp32
  (parity with the decoded-weights model);
* convs and several rows: the decode kernel (:mod:`.decode`) writing
  ``float(q) * scale``, the reference decoders' value, for the dense op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm import s_tir, te, tirx

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import PACK_LANES, Encoded

from . import bbs_decoded, decode, decode_once

BLOCK = "int8_gemv"


@dataclass
class Int8Weights:
    """``value(holders)(n, kk)``: the int32 weight before its channel's scale (the last constant, float32 [N])."""

    constants: list[np.ndarray]
    names: tuple[str, ...]
    value: Callable

    @staticmethod
    def of(enc: Encoded) -> "Int8Weights":
        if enc.codec == "int8":
            return Int8Weights([enc.arrays["codes"], enc.arrays["scales"]], ("codes", "scales"),
                               lambda h: lambda n, kk: h[0][n, kk].astype("int32"))
        pruned = int(enc.header["pruned_columns"])

        def bitwave_value(h):
            columns, meta = h[0], h[1]

            def value(n, kk):
                g = kk // bbs.GROUP
                kept = bbs_decoded.kept_value(columns, 8 - pruned, n, g, (kk % bbs.GROUP).astype("uint32"))
                return kept << (pruned - meta[n // bbs.LANES, g, n % bbs.LANES].astype("int32"))

            return value

        return Int8Weights([enc.arrays["columns"], enc.arrays["meta"], enc.arrays["scales"]],
                           ("columns", "meta", "scales"), bitwave_value)

    def holders(self) -> list[te.Tensor]:
        return [te.placeholder(c.shape, c.dtype.name, name) for name, c in zip(self.names, self.constants)]

    def weight(self, holders: list[te.Tensor]):
        """``f(n, kk)``: the decoded float32 weight."""
        value = self.value(holders)
        return lambda n, kk: value(n, kk).astype("float32") * holders[-1][n]


def gemv(weights: Int8Weights, n: int, k: int) -> tirx.PrimFunc:
    """``f(x [m, K], *constants, out [m, N])``, ``out = x @ W.T``, for one row (any m is exact)."""
    holders = weights.holders()
    weight = weights.weight(holders)
    kp = -(-k // PACK_LANES) * PACK_LANES
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    zero = tirx.const(0, "float32")
    xpad = te.compute((x.shape[0], kp), lambda m, kk: te.if_then_else(kk < k, x[m, kk], zero), name="xpad")
    row = te.compute((n, kp), lambda c, kk: te.if_then_else(kk < k, weight(c, kk), zero), name="decoded")
    rk = te.reduce_axis((0, kp), "rk")
    out = te.compute((x.shape[0], n), lambda m, c: te.sum(xpad[m, rk] * row[c, rk], axis=rk), name=BLOCK)
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    decode_once.schedule_llvm(sch, BLOCK)
    sch.compute_inline(sch.get_sblock("decoded"))
    return sch.mod["main"]


def decoder(weights: Int8Weights, into: decode.Layout, x_ndim: int) -> tirx.PrimFunc:
    """``f(x, *constants, W)``: the decode kernel."""
    holders = weights.holders()
    return decode.elementwise(weights.weight(holders), holders, into, x_ndim)

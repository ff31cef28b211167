"""INT8 weights times a per-channel scale (codecs ``int8`` and ``bitwave``), with fp32 activations.

Both codecs store integers per weight and one scale per output channel;
``int8`` as the codes themselves, ``bitwave`` as ``bbs``-style bit columns
(``8 - N`` kept column bits, a per-group count ``z`` of zero columns) whose
value is ``kept << (N - z)``. :class:`Int8Weights` is that integer as a TE
function of ``(n, kk)`` plus the constants it reads; the kernels are shared:

* one row: the dense GEMV schedule (:func:`.dense.gemv_of`), each weight
  converted and scaled in the 16-lane FMA loop, so a channel streams its bytes
  once (activations stay fp32: parity with the decoded-weights model);
* convs and several rows: the decode kernel (:mod:`.decode`) writing
  ``float(q) * scale``, the reference decoders' value, for the dense op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm import te, tirx

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

from . import bbs_decoded, decode, dense


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
    """``f(x [m, K], *constants, out [m, N])``, for one row (any m is exact)."""
    holders = weights.holders()
    return dense.gemv_of(weights.weight(holders), holders, n, k)


def decoder(weights: Int8Weights, into: decode.Layout, x_ndim: int) -> tirx.PrimFunc:
    """``f(x, *constants, W)``: the decode kernel."""
    holders = weights.holders()
    return decode.elementwise(weights.weight(holders), holders, into, x_ndim)

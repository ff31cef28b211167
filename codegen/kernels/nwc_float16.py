"""The float16 layers of ``nwc`` (``nwc.float16_weight``: the weight [N, K] stored as float16).

At load the weight is widened into float32 once, straight into the layout the dense kernels read (a matmul's
packed panels, :func:`.dense.pack`; a conv's OIHW weight for the plain conv), as the network's layers are decoded.
On every call (``--nwc-decode per-call``): a matmul of one row multiplies the float16 weight as it reads it
(:func:`gemv`: ``CHANNELS`` dot products along K a task, the weight's rows contiguous); more rows, and a conv,
widen it into the plain op's weight (a decode kernel, :func:`.decode.elementwise`).
"""

from __future__ import annotations

import functools
from typing import TypeVar

from tvm import te, tirx
from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, nwc

from ..kernel_registry import ConvSpec, KernelCall
from . import dense
from .decode import Layout, destination, elementwise, in_parallel_vectors, with_decoder

LANES = 16  # float32 lanes of the one-row kernel's dot products (one AVX-512 vector)
CHANNELS = 8  # output channels of a task of the one-row kernel, sharing each vector of x (benchmarks/README.md)


def widened(n: int, k: int, conv_shape: tuple[int, int, int, int] | None) -> tirx.PrimFunc:
    """``f(weight [n, k] float16, out)``, run at load: ``out`` the float32 weight as the dense kernels read it,
    a matmul's packed panels (zero past ``n``) or a conv's OIHW ``conv_shape``; in parallel vectors."""
    held = te.placeholder((n, k), "float16", "weight")
    if conv_shape is None:
        cols = dense.matmul.COLS
        shape = (-(-n // cols), k, cols)

        def value(panel, column, lane):
            row = panel * cols + lane
            return tirx.if_then_else(row < n, held[tirx.min(row, n - 1), column].astype("float32"), tirx.const(0.0))
    else:
        shape, layout = tuple(conv_shape), Layout.conv2d(conv_shape)

        def value(*index):
            return held[layout.source(*index)].astype("float32")
    return in_parallel_vectors([held], te.compute(shape, value, name="widened"))


@functools.cache
def gemv(n: int, k: int) -> tirx.PrimFunc:
    """``f(x [m, k], weight [n, k] float16, out [m, n])``, ``out = x @ weight.T``: one task per ``CHANNELS``
    output channels (the last task's past ``n`` repeat the last channel, not stored), their dot products along K
    in ``LANES`` float32 lanes each, sharing each vector of ``x`` (the float16 weights widened as they are
    loaded), the remainder of K after them."""
    full = k // LANES * LANES
    tasks = -(-n // CHANNELS)

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(x: T.Buffer((m, k), "float32"), weight: T.Buffer((n, k), "float16"), out: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        for task in T.parallel(tasks):
            for b in range(m):
                acc = T.decl_buffer((CHANNELS * LANES,), "float32", scope="local")
                for c in T.unroll(CHANNELS):
                    for lane in T.vectorized(LANES):
                        acc[c * LANES + lane] = T.float32(0)
                for block in range(k // LANES):
                    for c in T.unroll(CHANNELS):
                        for lane in T.vectorized(LANES):
                            acc[c * LANES + lane] = acc[c * LANES + lane] + x[b, block * LANES + lane] * T.Cast(
                                "float32", weight[T.min(task * CHANNELS + c, n - 1), block * LANES + lane])
                for c in range(CHANNELS):
                    channel: T.let = T.min(task * CHANNELS + c, n - 1)
                    total = T.decl_buffer((1,), "float32", scope="local")
                    total[0] = T.float32(0)
                    for lane in range(LANES):
                        total[0] = total[0] + acc[c * LANES + lane]
                    for rest in range(k - full):
                        total[0] = total[0] + x[b, full + rest] * T.Cast("float32", weight[channel, full + rest])
                    if task * CHANNELS + c < n:
                        out[b, channel] = total[0]

    return kernel


def per_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """``--nwc-decode per-call``: :func:`gemv` for one row, a decode kernel above one row and for a conv."""
    weight = nwc.float16_weight(enc)
    n, k = enc.shape
    layout, x_ndim = destination(enc, conv)
    holder = te.placeholder((n, k), "float16", "weight")
    decoder = elementwise(lambda row, column: holder[row, column].astype("float32"), [holder], layout, x_ndim)
    small = None if conv is not None else KernelCall("nwc_float16_gemv", gemv(n, k), [weight])
    return with_decoder(small, decoder, "nwc_float16", [weight], conv)

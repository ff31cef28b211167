"""INT8 weights times a per-channel scale (codecs ``int8`` and ``bitwave``), with fp32 activations.

Both codecs store integers per weight and one scale per output channel;
``int8`` as the codes themselves, ``bitwave`` as ``bbs``-style bit columns
(``8 - N`` kept column bits, a per-group count ``z`` of zero columns) whose
value is ``kept << (N - z)``. :class:`Int8Weights` is that integer as a TE
function of ``(n, kk)`` plus the constants it reads, in a layout where
``lanes`` consecutive channels of one ``kk`` are contiguous (``int8``: the codes
packed into panels of ``matmul.COLS`` channels, K-major, like the dense
kernel's weight; ``bitwave``: its stored columns interleave 16 channels). The
kernels are shared:

* one row: 8-bit codes :func:`streamed_gemv`, the others the register-tiled matmul micro-kernel of
  :mod:`..schedules.matmul` with one-row tiles, ``lanes`` channels per tile: per
  ``kk``, one broadcast activation times the tile's integers converted to float,
  fp32 accumulators (parity with the decoded-weights model), the channel scales
  applied once to the tile's sums;
* several rows: the panel GEMM (:mod:`.panel_gemm`), each panel of channels decoded once per call to
  ``float(q)`` for the dense GEMM's micro-kernel (``bitwave``'s columns a run of 16 channels at a time where the CPU
  has the bit transposes, :mod:`.column_runs`), the scales applied to the tile's sums;
* convs: the decode kernel (:mod:`.decode`) writing the same values for the dense conv; ``int8`` codes (and
  ``bie-bitplane``'s integers) by output channel for it (:meth:`Int8Weights.by_channel`);
* a Gather table (an embedding, its rows the channels): the rows asked for, decoded as they are read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from bie_compiler.codecs import bbs, bitwave
from bie_compiler.codecs import int8 as int8_codec
from bie_compiler.codecs.base import Encoded

from ..kernel_registry import ConvSpec, KernelCall, register
from ..layout_memo import KEPT
from ..schedules import matmul
from ..stack_buffers import TVM_STACK_BYTES
from . import bbs_decoded, channel_nibbles, column_runs, decode, lut, panel_gemm

BLOCK = "int8_gemv"
SCALED = "int8_scaled"
GATHERED = "int8_gathered"
# How Int8Weights lays out its integers: which kernels can read them
BYTE_PANELS = "byte panels"  # :func:`pack`: a byte per weight, panels of matmul.COLS channels, K-major
NIBBLE_PANELS = "nibble panels"  # :func:`pack_nibbles`: two weights (consecutive kk) per byte, panels as above
BYTE_ROWS = "byte rows"  # a byte per weight, each channel's K contiguous (:meth:`Int8Weights.by_channel`)
NIBBLE_ROWS = "nibble rows"  # channels 2c and 2c + 1 in the low and high nibbles of one row of K bytes
COLUMNS = "bit columns"  # ``bitwave``'s stored bit columns of 16 channels and their zero-column counts


def pack(codes: np.ndarray, cols: int = matmul.COLS) -> np.ndarray:
    """``codes`` [N, K] as [ceil(N / cols), K, cols]: each panel of ``cols`` channels K-major, zero-padded."""
    n, k = codes.shape
    padded = np.zeros((-(-n // cols) * cols, k), codes.dtype)
    padded[:n] = codes
    return np.ascontiguousarray(padded.reshape(-1, cols, k).transpose(0, 2, 1))


def pack_nibbles(codes: np.ndarray, cols: int = matmul.COLS) -> np.ndarray:
    """4-bit two's complement ``codes`` [N, K] (in -8..7) as int8 [ceil(N / cols), ceil(K / 2), cols]: the panels of
    :func:`pack`, weights 2i and 2i + 1 of a channel in the low and high nibble of byte i."""
    n, k = codes.shape
    even = np.zeros((n, k + k % 2), np.int8)
    even[:, :k] = codes
    panels = pack(even, cols).view(np.uint8) & np.uint8(15)
    return np.ascontiguousarray(panels[:, 0::2] | (panels[:, 1::2] << np.uint8(4))).view(np.int8)


@dataclass
class Int8Weights:
    """``value(holders)(n, kk)``: the int32 weight before its channel's scale (the last constant, float32 [N]);
    ``lanes`` consecutive channels (from a multiple of ``lanes``) of one ``kk`` are contiguous in the constants;
    ``k_step`` consecutive ``kk`` share their bytes (the one-row kernel decodes them in one loop iteration);
    ``layout``: one of BYTE_PANELS, NIBBLE_PANELS, BYTE_ROWS, NIBBLE_ROWS, COLUMNS (the kernels dispatch on it: the
    constants' names do not tell byte panels from byte rows); ``runs``: the panel GEMM's decode a run of 16 channels
    and a group at a time, where the layout has one (bit columns: :func:`bit_column_runs`)."""

    constants: list[np.ndarray]
    names: tuple[str, ...]
    value: Callable
    lanes: int
    layout: str
    k_step: int = 1
    runs: panel_gemm.RunWeights | None = None

    @staticmethod
    def packed(codes: np.ndarray, scales: np.ndarray, bits: int) -> "Int8Weights":
        """Integer ``codes`` [N, K] of ``bits`` bits (two's complement) with per-channel ``scales`` [N]: a byte per
        weight, or two per byte up to 4 bits."""
        cols = matmul.COLS
        if bits <= 4:
            return Int8Weights([pack_nibbles(codes, cols), scales], ("nibbles", "scales"),
                               lambda h: lambda n, kk: channel_nibbles.nibble(h[0][n // cols, kk // 2, n % cols],
                                                                              kk % 2), cols,
                               NIBBLE_PANELS, 2 if codes.shape[1] % 2 == 0 else 1)
        return Int8Weights([pack(codes.astype(np.int8), cols), scales], ("codes", "scales"),
                           lambda h: lambda n, kk: h[0][n // cols, kk, n % cols].astype("int32"), cols, BYTE_PANELS)

    @staticmethod
    def by_channel(codes: np.ndarray, scales: np.ndarray, bits: int) -> "Int8Weights":
        """A conv's integer ``codes`` [N, K] by output channel, each channel's K contiguous, for its decode kernel:
        one vector of weights is one contiguous load of bytes widened (the panels of :meth:`packed` hold a channel's
        weights 32 bytes apart, and their decode kernel copied the weights out to OIHW one at a time). Up to 4 bits,
        channels 2c and 2c + 1 share the bytes of one row [ceil(N / 2), K], in the low and high nibble: a channel
        reads one nibble of every byte, no K padding. 3-D ([rows, 1, K]) as progressive precision expects."""
        if bits <= 4:
            return Int8Weights([channel_nibbles.pack(codes)[:, None, :], scales], ("nibbles", "scales"),
                               lambda h: lambda n, kk: channel_nibbles.nibble(h[0][n // 2, 0, kk], n % 2), 1,
                               NIBBLE_ROWS)
        return Int8Weights([codes.astype(np.int8)[:, None, :], scales], ("codes", "scales"),
                           lambda h: lambda n, kk: h[0][n, 0, kk].astype("int32"), 1, BYTE_ROWS)

    @staticmethod
    def of(enc: Encoded, conv: ConvSpec | None = None) -> "Int8Weights":
        if enc.codec == "int8":
            make = Int8Weights.packed if conv is None else Int8Weights.by_channel
            return make(enc.arrays["codes"], enc.arrays["scales"], 8)
        pruned = int(enc.header["pruned_columns"])

        def bitwave_value(h):
            columns, meta = h[0], h[1]

            def value(n, kk):
                g = kk // bbs.GROUP
                kept = bbs_decoded.kept_value(columns, 8 - pruned, n, g, (kk % bbs.GROUP).astype("uint32"))
                return kept << (pruned - meta[n // bbs.LANES, g, n % bbs.LANES].astype("int32"))

            return value

        return Int8Weights([enc.arrays["columns"], enc.arrays["meta"], enc.arrays["scales"]],
                           ("columns", "meta", "scales"), bitwave_value, bbs.LANES, COLUMNS,
                           runs=bit_column_runs(pruned))

    def holders(self) -> list[te.Tensor]:
        return [te.placeholder(c.shape, c.dtype.name, name) for name, c in zip(self.names, self.constants)]

    def weight(self, holders: list[te.Tensor]):
        """``f(n, kk)``: the decoded float32 weight."""
        value = self.value(holders)
        return lambda n, kk: value(n, kk).astype("float32") * holders[-1][n]


def bit_column_runs(pruned: int) -> panel_gemm.RunWeights:
    """``bitwave``'s run decode (:func:`.column_runs.decoded`): a run's kept integers times ``2^(pruned - z)``, ``z``
    its channels' zero columns in the group (the metadata bytes)."""

    def runs(holders, first, g):
        columns, meta, _ = holders
        pb = first // bbs.LANES
        zeros = tirx.Cast("int32x16", meta[pb, g, tirx.Ramp(0, 1, bbs.LANES)])
        step = tirx.Broadcast(tirx.const(1, "int32"), bbs.LANES) << (
            tirx.Broadcast(tirx.const(pruned, "int32"), bbs.LANES) - zeros)
        return column_runs.decoded(lambda b: columns[pb, g, b, tirx.Ramp(0, 1, bbs.LANES)], 8 - pruned,
                                   tirx.Cast("float32x16", step))

    return runs


CHAINS = 4  # k rows per step of the one-row kernel: independent accumulators (one would wait on the FMA latency)


@functools.lru_cache(maxsize=KEPT)  # one build per layout (layout_memo)
def streamed_gemv(n: int, k: int) -> tirx.PrimFunc:
    """``f(x [m, K], codes, scales, out [m, N])`` over :func:`pack`'s 8-bit panels, for one row (any m is exact).

    One parallel loop over the panels of COLS channels: each thread reads one contiguous range of the codes,
    prefetching ``lut.AHEAD_BYTES`` ahead of its reads into L2 (the hardware prefetchers stop at every 4 KiB page,
    and alone keep too few lines in flight to stream weights from memory). Per step of CHAINS k rows, the panel's
    CHAINS x COLS codes are converted to float and multiplied-added into CHAINS accumulators of COLS channels,
    summed and scaled at the end. The accumulators are a buffer of the panel's, a stack allocation that LLVM keeps in
    registers (one buffer of every panel's, declared for the call, was stored to after every update)."""
    cols, chains = matmul.COLS, CHAINS
    assert chains * cols * 4 < TVM_STACK_BYTES
    panels = -(-n // cols)
    total = panels * k * cols
    steps = k // chains
    vector = f"float32x{cols}"

    @T.prim_func(private=True)
    def main(var_x: T.handle, codes: T.Buffer((panels, k, cols), "int8"), scales: T.Buffer((n,), "float32"),
             var_out: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        stream = T.decl_buffer((total,), "int8", data=codes.data)  # the codes as the byte stream a thread reads
        for row in range(m):
            for p in T.parallel(panels):
                acc = T.decl_buffer((chains, cols), "float32")
                for c in T.unroll(chains):
                    acc[c, T.Ramp(0, 1, cols)] = T.Broadcast(T.float32(0), cols)
                for step in range(steps):
                    for line in T.unroll(chains * cols // lut.LINE_BYTES):
                        lut.prefetch(stream[T.min((p * k + step * chains) * cols + lut.AHEAD_BYTES
                                                  + line * lut.LINE_BYTES, total - 1)])
                    for c in T.unroll(chains):
                        acc[c, T.Ramp(0, 1, cols)] = acc[c, T.Ramp(0, 1, cols)] + T.Cast(
                            vector, codes[p, step * chains + c, T.Ramp(0, 1, cols)]) * T.Broadcast(
                            x[row, step * chains + c], cols)
                for kk in range(steps * chains, k):
                    acc[0, T.Ramp(0, 1, cols)] = acc[0, T.Ramp(0, 1, cols)] + T.Cast(
                        vector, codes[p, kk, T.Ramp(0, 1, cols)]) * T.Broadcast(x[row, kk], cols)
                for j in range(cols):
                    if p * cols + j < n:
                        out[row, p * cols + j] = lut.tree([acc[c, j] for c in range(chains)]) * scales[p * cols + j]

    return main


def gemv(weights: Int8Weights, n: int, k: int) -> tirx.PrimFunc:
    """``f(x [m, K], *constants, out [m, N])``, ``out = x @ W.T``, for one row (any m is exact)."""
    if weights.layout == BYTE_PANELS:
        return streamed_gemv(n, k)
    holders = weights.holders()
    value = weights.value(holders)
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    rk = te.reduce_axis((0, k), "rk")
    dot = te.compute((x.shape[0], n), lambda m, c: te.sum(x[m, rk] * value(c, rk).astype("float32"), axis=rk),
                     name=BLOCK)
    out = te.compute(dot.shape, lambda m, c: dot[m, c] * holders[-1][c], name=SCALED)
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    matmul.schedule_matmul(sch, sch.get_sblock(BLOCK), rows=1, cols=weights.lanes,
                           panels=matmul.gemv_panels(n, weights.lanes), k_step=weights.k_step)
    return sch.mod["main"]


def decoder(weights: Int8Weights, into: decode.Layout, x_ndim: int) -> tirx.PrimFunc:
    """``f(x, *constants, W)``: the decode kernel."""
    holders = weights.holders()
    return decode.elementwise(weights.weight(holders), holders, into, x_ndim, channel_panel=weights.lanes)


def gemm(weights: Int8Weights, n: int, k: int) -> tirx.PrimFunc:
    """``f(x [m, K], *constants, out [m, N])`` for several rows: the panel GEMM, decoding a run of channels at a time
    where the layout has such a decode (``runs``) and the CPU the bit transposes it takes
    (:func:`.lut.bit_transpose_supported`), else weight by weight."""
    holders = weights.holders()
    if weights.runs is not None and lut.bit_transpose_supported(tvm.target.Target.current()):
        decode = panel_gemm.ByRuns(weights.runs, bbs.GROUP)
    else:
        decode = panel_gemm.ByWeight(panel_gemm.by_channel(weights.value(holders), n, weights.lanes))
    return panel_gemm.gemm(decode, holders, n, k, scale=lambda c: holders[-1][c])


def kernel_call(weights: Int8Weights, enc: Encoded, conv: ConvSpec | None, kind: str,
                mark: Callable[[tirx.PrimFunc], tirx.PrimFunc] = lambda func: func) -> KernelCall:
    """The kernels of ``enc``'s layer over ``weights``: a matmul's GEMV for one row and panel GEMM above, a conv's
    decode kernel. ``mark``: applied to every kernel (attributes)."""
    if conv is not None:
        return decode.with_decoder(None, mark(decoder(weights, *decode.destination(enc, conv))), kind,
                                   weights.constants, conv)
    small = KernelCall(f"{kind}_gemv", mark(gemv(weights, *enc.shape)), weights.constants)
    return panel_gemm.with_gemm(small, mark(gemm(weights, *enc.shape)), kind)


@register(int8_codec.NAME, ops=("matmul", "conv2d"), target="llvm")
@register(bitwave.NAME, ops=("matmul", "conv2d"), target="llvm")
def llvm_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """The INT8 GEMV for one row, the panel GEMM above, the decode kernel for convs."""
    return kernel_call(Int8Weights.of(enc, conv), enc, conv, "int8")


def gather(weights: Int8Weights, n: int, k: int) -> tirx.PrimFunc:
    """``f(ids [m], *constants, out [m, K])``: rows ``ids`` of the table [N, K], decoded from their codes.

    Negative ids count from the end (ONNX Gather); ids outside the table are clamped to it, so a bad id reads a
    wrong row, never memory past the codes (the runner refuses out-of-range index inputs before this runs)."""
    holders = weights.holders()
    weight = weights.weight(holders)
    ids = te.placeholder((te.var("m", "int64"),), "int64", "ids")

    def row(i):
        wrapped = tirx.Select(ids[i] < 0, ids[i] + n, ids[i])
        return tirx.max(tirx.min(wrapped, tirx.const(n - 1, "int64")), tirx.const(0, "int64"))

    out = te.compute((ids.shape[0], k), lambda i, kk: weight(row(i), kk), name=GATHERED)
    sch = s_tir.Schedule(te.create_prim_func([ids, *holders, out]))
    sch.work_on("main")
    i, _ = sch.get_loops(sch.get_sblock(GATHERED))
    sch.parallel(i)
    return sch.mod["main"]


@register(int8_codec.NAME, ops=("gather",), target="llvm")
@register(bitwave.NAME, ops=("gather",), target="llvm")
def llvm_gather(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """The rows of an encoded table, decoded as they are read."""
    weights = Int8Weights.of(enc)
    return KernelCall("int8_gather", gather(weights, *enc.shape), weights.constants)

"""Decode kernels: the dense float32 weight of a matmul or conv computed from its encoding, once per call.

Above one row of activations an encoded matmul is compute-bound, and a conv
always is: there the pass decodes the weight into the layout of the plain op
(``matmul(x, W)`` with ``W`` [K, N]; ``conv2d(x, W)`` with ``W`` OIHW, any
groups) and leaves the multiplication to the dense schedules. (The matmuls of
``int8``, ``bitwave``, ``bbs`` and ``bie-bitplane``'s integer and look-up-table
forms run the panel GEMM instead, :mod:`.panel_gemm`: no dense weight.) A decode kernel
is ``f(x, *constants, W)``: it takes the op's activation ``x`` without reading
it, so that constant folding, which pre-computes any ``call_tir`` of constants
only, cannot store the dense weight in the artefact again.

Codecs whose weights decode element by element give a TE function
``weight(n, kk)`` over their ``[N, K]`` matrix (:func:`elementwise`); the
others (index lists, tANS streams) write TIR that stores weight ``(n, kk)`` at
``layout.flat(n, kk)`` of the output (:class:`Layout`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, te, tirx

from bie_compiler.codecs.base import PACK_LANES, Encoded

from ..kernel_registry import ConvSpec, KernelCall


@dataclass(frozen=True)
class Layout:
    """Where weight ``(n, kk)`` of the codec's matrix [N, K] goes in the dense op's weight.

    Matmul: ``[K, N]``. Conv: OIHW ``[O, I / groups, kh, kw]``, whose codec
    matrix runs K over (kh, kw, in-channel), in-channel fastest.
    """

    shape: tuple[int, ...]
    conv: bool

    @staticmethod
    def matmul(n: int, k: int) -> "Layout":
        return Layout((k, n), conv=False)

    @staticmethod
    def conv2d(kernel_shape: tuple[int, int, int, int]) -> "Layout":
        return Layout(tuple(kernel_shape), conv=True)

    def source(self, *index):
        """(n, kk) of the codec matrix that output element ``index`` holds."""
        if not self.conv:
            kk, n = index
            return n, kk
        _, i, _, kw = self.shape
        o, c, r, s = index
        return o, (r * kw + s) * i + c

    def flat(self, n, kk):
        """The row-major offset in the output of codec weight ``(n, kk)``."""
        if not self.conv:
            return kk * self.shape[1] + n
        _, i, kh, kw = self.shape
        c, rs = kk % i, kk // i
        return ((n * i + c) * kh + rs // kw) * kw + rs % kw

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def destination(enc: Encoded, conv: ConvSpec | None) -> tuple[Layout, int]:
    """The layout a decode kernel of ``enc`` writes and the rank of the activation it takes."""
    if conv is None:
        return Layout.matmul(*enc.shape), 2
    return Layout.conv2d(conv.kernel_shape), 4


def with_decoder(small: KernelCall | None, decoder: tirx.PrimFunc, kind: str, constants, conv) -> KernelCall:
    """A conv: the decode kernel alone. A matmul: ``small`` for one row, the decode kernel above."""
    decoding = KernelCall(f"{kind}_decode", decoder, constants, decodes=True)
    if conv is not None:
        return decoding
    small.large_batch = decoding
    return small


TILE_K = 64  # weights per channel in a tile of a 1x1 conv decoded across channels (measured best of 16, 32, 64)


def activation(ndim: int) -> te.Tensor:
    """The op's activation as a decode kernel takes it (unread): any shape of its rank."""
    return te.placeholder(tuple(te.var(f"d{i}", "int64") for i in range(ndim)), "float32", "x")


def vector_lanes(extent: int) -> int:
    """The widest vector (up to 16 lanes) that divides ``extent``: vectorized loops with a tail would scalarize."""
    return next(v for v in (PACK_LANES, 8, 4, 2, 1) if extent % v == 0)


def in_parallel_vectors(tensors: list[te.Tensor], out: te.Tensor) -> tirx.PrimFunc:
    """``f(*tensors, out)`` with ``out``'s one block over every element in a flat loop: parallel outer, vectorized in
    the widest vector that divides the element count (a copy or a widening, read and written in the same order)."""
    sch = s_tir.Schedule(te.create_prim_func([*tensors, out]))
    loop = sch.fuse(*sch.get_loops(sch.get_sblock(out.op.name)))
    outer, inner = sch.split(loop, [None, vector_lanes(math.prod(int(d) for d in out.shape))])
    sch.parallel(outer)
    sch.vectorize(inner)
    return sch.mod["main"]


def elementwise(weight, holders: list[te.Tensor], layout: Layout, x_ndim: int,
                channel_panel: int | None = None) -> tirx.PrimFunc:
    """Scheduled ``f(x, *holders, W)`` with ``W[index] = weight(*layout.source(index))``.

    Most codecs' arrays run along K within a channel, so vectors must run along K
    to read them contiguously; where the output runs otherwise (a matmul's
    [K, N], a conv's in-channels outside its kh x kw) a tile is decoded along K
    into a buffer laid out along K (contiguous vector stores; a scatter across it
    was slower), then written out along the output's rows, gathering from it. Where both agree (1x1 and
    depthwise convs) by output channel, K in vectors where it fills them.

    ``channel_panel``: the codec's arrays run along output channels instead, in panels of this many channels
    (``bitwave``'s columns of 16 channels): a 1x1 conv's vectors run along channels (:func:`_across_channels`).
    """
    x = activation(x_ndim)
    out = te.compute(layout.shape, lambda *index: weight(*layout.source(*index)), name="decoded")
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    block = sch.get_sblock("decoded")
    if channel_panel is not None and _across_channels(sch, block, layout, channel_panel):
        return sch.mod["main"]
    if not layout.conv:
        _transposed(sch, block)
    elif layout.shape[1] > 1 and layout.shape[2] * layout.shape[3] > 1:
        _per_channel(sch, block)
    else:  # 1x1 or depthwise: a channel's weights run along K in both
        _along_rows(sch, block)
    return sch.mod["main"]


def _transposed(sch: s_tir.Schedule, block) -> None:
    """[K, N] in tiles of (up to) 16 x 16: decoded along K into a tile buffer, written out along N; tiles in parallel."""
    kk, n = sch.get_loops(block)
    extents = [int(sch.get(loop).extent) for loop in (kk, n)]
    k_outer, k_inner = sch.split(kk, [None, vector_lanes(extents[0])])
    n_outer, n_inner = sch.split(n, [None, vector_lanes(extents[1])])
    sch.reorder(n_outer, k_outer, n_inner, k_inner)
    write = sch.cache_write(block, 0, "global")
    sch.transform_layout(block, ("write", 0), lambda k, n: (n, k))  # the tile stored along K: contiguous vectors
    sch.reverse_compute_at(write, k_outer)
    if extents[0] % PACK_LANES == 0:
        sch.vectorize(k_inner)
    if extents[1] % PACK_LANES == 0:
        sch.vectorize(sch.get_loops(write)[-1])  # the tile's columns
    sch.parallel(sch.fuse(n_outer, k_outer))


def _across_channels(sch: s_tir.Schedule, block, layout: Layout, panel: int) -> bool:
    """Vectors along output channels, where the codec's panels hold them contiguously; False (nothing done) for a
    layout other than a 1x1 conv's, or channels too few for 8-lane vectors (a matmul of such a codec runs the panel
    GEMM, :mod:`.panel_gemm`).

    A 1x1 conv's [O, I] runs along K: a tile of 16 channels x up to TILE_K weights is decoded along channels into a
    buffer laid out so, then copied out along K (scalar: vector gathers from the tile were slower); tiles in parallel.
    """
    lanes = vector_lanes(math.gcd(layout.shape[0], panel)) if layout.conv else 1
    if lanes < 8 or layout.shape[2] * layout.shape[3] != 1:
        return False
    o, c, r, s = sch.get_loops(block)
    o_outer, o_lane = sch.split(o, [None, lanes])
    c_outer, c_inner = sch.split(c, [None, max(d for d in range(1, TILE_K + 1) if layout.shape[1] % d == 0)])
    sch.reorder(o_outer, c_outer, r, s, c_inner, o_lane)
    write = sch.cache_write(block, 0, "global")
    sch.transform_layout(block, ("write", 0), lambda o, c, r, s: (c, r, s, o))  # the tile stored along channels
    sch.reverse_compute_at(write, c_outer)
    sch.vectorize(o_lane)
    sch.parallel(sch.fuse(o_outer, c_outer))
    return True


def _along_rows(sch: s_tir.Schedule, block) -> None:
    """OIHW of a 1x1 or depthwise conv: per output channel (what a codec's row-level data, a scale or a
    sensitive-row flag, is read once for), its K weights in the widest vectors that divide K; a row shorter than a
    vector that 8 lanes do not divide (a depthwise conv's 9) as one vector (decoded one weight at a time, LLVM
    vectorized the channel loop around them, with scatters); channels in parallel. A flat loop over every weight would recompute the
    channel from the flat index per lane and gather its row-level data (depthwise decodes measured 5-10x slower)."""
    o, *k = sch.get_loops(block)
    row = sch.fuse(*k)
    extent = int(sch.get(row).extent)
    lanes = vector_lanes(extent)
    if lanes < 8 and extent <= PACK_LANES:
        lanes = extent  # a short row whole
    outer, inner = sch.split(row, [None, lanes])
    sch.vectorize(inner)
    sch.parallel(o)


def _per_channel(sch: s_tir.Schedule, block) -> None:
    """OIHW with I > 1 and kh x kw > 1: per output channel, decoded along K = (kh, kw, in) into a buffer, then
    written out in (in, kh, kw) order; channels in parallel."""
    o, c, r, s = sch.get_loops(block)
    sch.reorder(o, r, s, c)
    write = sch.cache_write(block, 0, "global")
    sch.transform_layout(block, ("write", 0), lambda o, c, r, s: (o, r, s, c))  # the buffer along K
    sch.reverse_compute_at(write, o)
    in_channels = int(sch.get(c).extent)
    lanes = vector_lanes(in_channels)
    if lanes > 1:
        sch.vectorize(sch.split(c, [None, lanes])[1])
    sch.parallel(o)

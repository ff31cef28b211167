"""Index-loop matmuls on the GPU (``bie-binary`` index layout, ``bie-blocked``): one warp per output channel.

The lanes of a channel's warp (see ``warp_layout``) stride over its non-zeros,
each adding or subtracting the activations its entries select, for a tile of
rows at once when m > 1 (each entry read and decoded once per tile); the 32 partial
sums meet in shared memory and lane 0 adds them and applies the scale. The
entries read by a warp's 32 lanes are consecutive, so the index stream is read
coalesced. ``bie-blocked`` walks the blocks of K in order, all lanes together
(they all read the block's count), and spreads each block's entries over the lanes.

``gpu=False`` builds the same loop nest with the thread loops serial and the
shared/local buffers global: it runs on the CPU, so tests can check the GPU
kernels' indexing and reduction against the reference decoders on a machine
without a GPU. (Serially, all lanes finish their partial sums before lane 0
reads them, which is what the barrier guarantees on the GPU.)
"""

from __future__ import annotations

from typing import TypeVar

from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, bie_binary, bie_blocked

from ..kernel_registry import ConvSpec, KernelCall, register
from . import bitplane, sparse_index
from .warp_layout import ROWS_PER_TILE, WARP_SIZE, channel_warps, scopes


def tile_sum(entry_dtype: str, sign_bit: int):
    """``acc[r] += (-1)^sign(e) * x[i0 + r, base + offset(e)]`` for a tile of ``rows`` rows from ``i0`` over a lane's
    share of the entries ``first + lane + 32 * step`` below ``first + count``: each entry read and decoded once, its
    activation added or subtracted for every row (rows past m read row m - 1, unwritten)."""
    offset_mask = (1 << sign_bit) - 1

    @T.macro
    def accumulate(acc, x, m, i0, rows, entries, base, first, count, lane):
        for step in range((count + (WARP_SIZE - 1) - lane) // WARP_SIZE):
            entry: T.let = entries[first + lane + WARP_SIZE * step]
            column: T.let = base + T.Cast("int64", entry & T.Cast(entry_dtype, offset_mask))
            negative: T.let = (entry >> T.Cast(entry_dtype, sign_bit)) != T.Cast(entry_dtype, 0)
            for r in T.unroll(rows):
                xv: T.let = x[T.min(i0 + r, m - 1), column]
                acc[r] = acc[r] + T.if_then_else(negative, -xv, xv)

    return accumulate


def global_index(*, n: int, k: int, nnz: int, entry_dtype: str, sign_bit: int, gpu: bool = True):
    """out[m, n] = scale[n] * sum over entries e of channel n of (-1)^sign(e) * x[m, k(e)]; lanes over entries."""
    one, tile = channel_warps(gpu, n), channel_warps(gpu, n, ROWS_PER_TILE)
    accumulate = tile_sum(entry_dtype, sign_bit)

    @T.macro
    def lane_sum(acc, x, m, i0, rows, indptr, entries, channel, lane):
        start: T.let = T.Cast("int64", indptr[channel])
        accumulate(acc, x, m, i0, rows, entries, T.int64(0), start, T.Cast("int64", indptr[channel + 1]) - start, lane)

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), "float32"),
        indptr: T.Buffer((n + 1,), "uint32"),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        if m == T.int64(1):
            one(m, out, scales, lambda acc, i0, channel, lane: lane_sum(acc, x, m, i0, 1, indptr, entries, channel,
                                                                        lane))
        else:
            tile(m, out, scales, lambda acc, i0, channel, lane: lane_sum(acc, x, m, i0, ROWS_PER_TILE, indptr, entries,
                                                                         channel, lane))

    return kernel


def blocked_index(*, n: int, k: int, nnz: int, block_size: int, entry_dtype: str, count_dtype: str, gpu: bool = True):
    """As :func:`global_index`, with positions ``block * block_size + offset(e)``; lanes over each block's entries."""
    sign_bit = block_size.bit_length() - 1
    blocks = -(-k // block_size)
    one, tile = channel_warps(gpu, n), channel_warps(gpu, n, ROWS_PER_TILE)
    accumulate = tile_sum(entry_dtype, sign_bit)
    _, local = scopes(gpu)

    @T.macro
    def lane_sum(acc, x, m, i0, rows, indptr, counts, entries, channel, lane):
        start = T.decl_buffer((1,), "int64", scope=local)
        start[0] = T.Cast("int64", indptr[channel])
        for blk in range(blocks):
            count: T.let = T.Cast("int64", counts[channel, blk])
            first: T.let = start[0]
            accumulate(acc, x, m, i0, rows, entries, blk * block_size, first, count, lane)
            start[0] = first + count

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), "float32"),
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        if m == T.int64(1):
            one(m, out, scales, lambda acc, i0, channel, lane: lane_sum(acc, x, m, i0, 1, indptr, counts, entries,
                                                                        channel, lane))
        else:
            tile(m, out, scales, lambda acc, i0, channel, lane: lane_sum(acc, x, m, i0, ROWS_PER_TILE, indptr, counts,
                                                                         entries, channel, lane))

    return kernel


@register(bie_binary.NAME, ops=("matmul",), target="cuda")
def global_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """The bitmap layout: the bit-plane kernel; the index layout: a warp per channel, every batch."""
    if enc.header["layout"] == "bitmap":
        return bitplane.cuda_call(enc, conv)
    layout, constants = sparse_index.global_layout(enc)
    return KernelCall("global_index", global_index(**layout), constants)


@register(bie_blocked.NAME, ops=("matmul",), target="cuda")
def blocked_call(enc: Encoded, conv: ConvSpec | None, blocked_execution: str = "stream") -> KernelCall:
    """A warp per channel, every batch (``blocked_execution`` is the CPU's choice: the GPU reads the blocked
    encoding)."""
    layout, constants = sparse_index.blocked_layout(enc)
    return KernelCall("blocked_index", blocked_index(**layout), constants)

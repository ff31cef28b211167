"""The ``bie-bitplane`` (and ``bie-binary`` bitmap) matmul on the GPU: shared-memory tables of activation subset sums.

Each weight's integer (sign and magnitude planes, :func:`.bitplane.integer_codes`) is rewritten at compile time in
two's complement over the planes kept, as for the CPU's look-up-table kernel (:mod:`.bitplane_lut`): with ``P``
magnitude planes kept, the lowest of significance ``2^shift``, plane 0 (the sign) weighs ``-2^(P + shift)`` and
plane ``b`` ``2^(P - b + shift)``. The planes are laid out uint32 [P + 1, N, ceil(K / 32)]: bit ``j`` of word ``c``
of a channel's row is weight ``32 c + j``, so nibble ``t`` of the word holds weights ``32 c + 4 t .. + 3``, and the
sum of ``x`` over those of the four whose bit is set is entry ``nibble`` of the 16 subset sums of
``x[32 c + 4 t : + 4]``: one shared-memory load per plane and four weights instead of decoding each weight.

Grid: ``blockIdx.x`` tiles of rows of activations (one row when m is 1, ROWS_PER_TILE otherwise), ``blockIdx.y``
blocks of WARPS x ``channels_per_warp`` channels, ``blockIdx.z`` slices of K (:meth:`Geometry.of`). A thread block first
writes the subset sums of its slice for its rows to shared memory, then each warp takes ``channels_per_warp`` channels:
lane ``l`` reads words ``l, l + 32, ..`` of the slice in every plane (a warp reads 128 contiguous bytes per plane),
and per plane and nibble a shift and a mask give the entry's address, whose load serves every row of the tile (the
weights are decoded once per tile). Per word the planes' sums are combined by their significance (times the word's
scale when scales are grouped); the lanes' sums meet in shared memory, each slice's go to a workspace
[slices, m, N], and a second kernel adds the slices (times the per-channel scale).

A row's tables are ``subset_sums[t, e, p]`` for nibble ``t``, entry ``e`` and word ``p`` of the slice, each nibble's
16 x ``words`` entries padded by TABLE_PAD: the 32 lanes of a warp look up 32 consecutive words of one nibble, so
their loads fall into 32 banks whatever the entries; the threads filling them take eight nibbles of four
consecutive words (coalesced loads of x), whose stores the padding spreads over the 32 banks too.

``gpu=False`` builds the same loop nest with the thread loops serial and the shared/local buffers global, for tests
on the CPU (serially, every thread's writes precede the reads that the barriers order on the GPU).
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from ..kernel_registry import KernelCall
from ..weights import PRECISION_ATTR
from . import bitplane_lut
from .warp_layout import WARP_SIZE, bound_to, scopes

WARPS = 4  # per thread block
ROWS_PER_TILE = 4  # rows of activations per thread block when m > 1
NIBBLES = 8  # per 32-bit word
ENTRIES = 16  # subset sums of four activations
TABLE_PAD = 4  # floats after each nibble's entries (bank spreading of the tables' stores)
REDUCE_THREADS = 256  # the slices' sum


class Tuning(NamedTuple):
    """The work of a thread block and of a lane (``benchmarks/gpu`` times others)."""

    channels_per_warp: int = 8  # a warp's channels, one after the other: the tables' cost spread over more weights
    words_per_lane: int = 2  # of each plane, one row (a tile: one): the slice of K is 32 x this many words
    words_at_once: int = 16  # plane words a lane loads before using them (loads in flight, bounded registers)


class Layout(NamedTuple):
    n: int
    k: int
    magnitude_planes: int  # P; the planes stored are P + 1
    shift: int  # the lowest kept plane's significance, log2
    group: int  # weights per scale along K, a multiple of 32; 0: one scale per channel
    scale_groups: int


def applies(group: int, per_channel: bool) -> bool:
    """Whether the scales fit the kernel: per channel, or per a multiple of a word's 32 weights."""
    return per_channel or group % 32 == 0


def planes_of(codes: np.ndarray, magnitude_planes: int) -> np.ndarray:
    """``codes`` [N, K] (``|q| < 2^magnitude_planes <= 2^7``) as two's complement planes,
    uint32 [P + 1, N, ceil(K / 32)], sign first; bit ``j`` of word ``c`` is weight ``32 c + j``, padding weights zero."""
    n, k = codes.shape
    bits = magnitude_planes + 1
    unsigned = codes.astype(np.int8).view(np.uint8) & np.uint8((1 << bits) - 1)  # two's complement's low bits
    planes = np.zeros((bits, n, 4 * -(-k // 32)), np.uint8)
    for b in range(bits):
        packed = np.packbits((unsigned >> np.uint8(bits - 1 - b)) & np.uint8(1), axis=-1, bitorder="little")
        planes[b, :, :packed.shape[1]] = packed
    return np.ascontiguousarray(planes.view("<u4"))


class Geometry(NamedTuple):
    """A thread block's share for a tile of ``rows`` rows: ``words`` of K (of ``slices``), its tables' sizes."""

    rows: int
    channels_per_warp: int
    channels_per_block: int
    words: int
    slices: int
    per_lane: int  # words of each plane a lane reads
    at_once: int  # channels whose words a lane loads before using them
    groups: int  # of four activations: tables filled
    nibble_floats: int  # a nibble's entries, padded
    row_floats: int
    sums_stride: int  # a lane's sums (for each channel and row) and one float of padding: no bank conflicts

    @staticmethod
    def of(rows: int, kw: int, num_planes: int, tuning: Tuning) -> "Geometry":
        """``tuning.words_per_lane`` words of K per lane for one row, one for a tile (the tables take 512 bytes
        per word and row); fewer for a short K."""
        cpw = tuning.channels_per_warp
        words = min((tuning.words_per_lane if rows == 1 else 1) * WARP_SIZE, -(-kw // WARP_SIZE) * WARP_SIZE)
        per_lane = words // WARP_SIZE
        at_once = max(1, min(cpw, tuning.words_at_once // (num_planes * per_lane)))
        nibble_floats = ENTRIES * words + TABLE_PAD
        return Geometry(rows, cpw, WARPS * cpw, words, -(-kw // words), per_lane, at_once, rows * words * NIBBLES,
                        nibble_floats, NIBBLES * nibble_floats, cpw * rows + 1)


def matmul(lay: Layout, gpu: bool = True, tuning: Tuning = Tuning()) -> tirx.PrimFunc:
    """``f(x [m, K], planes uint32 [P + 1, N, KW], scales [N, G], out [m, N])``, for the GPU (or serial)."""
    n, k = lay.n, lay.k
    kw = -(-k // 32)
    num_planes = lay.magnitude_planes + 1
    per_channel = lay.group == 0
    threads = WARPS * WARP_SIZE
    aligned = k % 4 == 0  # a group of four activations is whole or past K, and rows of x start 16-byte aligned
    shared, local = scopes(gpu)
    table_scope = "shared.dyn" if gpu else "global"  # 32 or 64 KiB: above the static 48 KiB for a tile
    bound = bound_to(gpu)
    tiles_of, blocks_of, slices_of = bound("blockIdx.x"), bound("blockIdx.y"), bound("blockIdx.z")
    warps_of, lanes_of = bound("threadIdx.y"), bound("threadIdx.x")
    top_exponent = 127 + lay.magnitude_planes + lay.shift  # of the sign plane's power of two, biased

    def significance(b):
        """Plane ``b``'s weight, ``-2^(P + shift)`` for the sign and ``2^(P - b + shift)`` below it, built from its
        exponent bits (integer arithmetic, folded where the planes are unrolled)."""
        exponent = T.Cast("uint32", top_exponent - b) << T.uint32(23)
        return T.reinterpret("float32", T.if_then_else(b == 0, exponent | T.uint32(0x80000000), exponent))

    def word_scale(scales, channel, c):
        if per_channel:  # applied to the slices' sum
            return T.float32(1)
        return scales[T.min(channel, n - 1), T.min(32 * c // lay.group, lay.scale_groups - 1)]

    @T.macro
    def fill_tables(subset_sums, x, m, row0, geo, first_word, w, lane):
        """The 16 subset sums of every four activations of the slice, for each row of the tile (zero past K, m)."""
        for step in range((geo.groups + threads - 1) // threads):
            g: T.let = step * threads + w * WARP_SIZE + lane
            if g < geo.groups:
                t: T.let = g % NIBBLES
                p: T.let = g // NIBBLES % geo.words
                r: T.let = g // (NIBBLES * geo.words)
                row: T.let = row0 + r
                start: T.let = 32 * (first_word + p) + 4 * t
                xs = T.decl_buffer((4,), "float32", scope=local)
                if aligned:
                    if row < m and start < k:
                        for i in T.vectorized(4):
                            xs[i] = x[row, start + i]
                    else:
                        for i in T.vectorized(4):
                            xs[i] = T.float32(0)
                else:
                    for i in T.unroll(4):
                        xs[i] = T.if_then_else(tirx.all(row < m, start + i < k),
                                               x[T.min(row, m - 1), T.min(start + i, k - 1)], T.float32(0))
                low = T.decl_buffer((4,), "float32", scope=local)  # subsets of the first two, of the last two
                high = T.decl_buffer((4,), "float32", scope=local)
                low[0] = T.float32(0)
                low[1] = xs[0]
                low[2] = xs[1]
                low[3] = xs[0] + xs[1]
                high[0] = T.float32(0)
                high[1] = xs[2]
                high[2] = xs[3]
                high[3] = xs[2] + xs[3]
                base: T.let = r * geo.row_floats + t * geo.nibble_floats + p
                for e in T.unroll(ENTRIES):
                    subset_sums[base + e * geo.words] = low[e % 4] + high[e // 4]

    @T.macro
    def channel_sums(sums, subset_sums, planes, scales, blk, first_word, geo, w, lane):
        """Each of the warp's channels: this lane's sum over its words for every row, into ``sums``."""
        word = T.decl_buffer((geo.at_once * geo.per_lane * num_planes,), "uint32", scope=local)
        acc = T.decl_buffer((geo.rows,), "float32", scope=local)
        part = T.decl_buffer((geo.rows,), "float32", scope=local)
        for chunk in range((geo.channels_per_warp + geo.at_once - 1) // geo.at_once):
            for cc in T.unroll(geo.at_once):
                channel: T.let = blk * geo.channels_per_block + w * geo.channels_per_warp + chunk * geo.at_once + cc
                for h in T.unroll(geo.per_lane):
                    c: T.let = first_word + h * WARP_SIZE + lane
                    for b in T.unroll(num_planes):
                        word[(cc * geo.per_lane + h) * num_planes + b] = T.if_then_else(
                            tirx.all(channel < n, c < kw), planes[b, T.min(channel, n - 1), T.min(c, kw - 1)],
                            T.uint32(0))
            for cc in T.unroll(geo.at_once):
                channel: T.let = blk * geo.channels_per_block + w * geo.channels_per_warp + chunk * geo.at_once + cc
                for r in T.unroll(geo.rows):
                    acc[r] = T.float32(0)
                for h in T.unroll(geo.per_lane):
                    scale: T.let = word_scale(scales, channel, first_word + h * WARP_SIZE + lane)
                    for b in T.unroll(num_planes):
                        for r in T.unroll(geo.rows):
                            part[r] = T.float32(0)
                        for t in T.unroll(NIBBLES):
                            entry: T.let = T.Cast("int32", (word[(cc * geo.per_lane + h) * num_planes + b]
                                                           >> T.uint32(4 * t)) & T.uint32(ENTRIES - 1))
                            for r in T.unroll(geo.rows):
                                part[r] = part[r] + subset_sums[r * geo.row_floats + t * geo.nibble_floats
                                                          + entry * geo.words + h * WARP_SIZE + lane]
                        for r in T.unroll(geo.rows):
                            acc[r] = acc[r] + part[r] * (significance(b) * scale)
                if chunk * geo.at_once + cc < geo.channels_per_warp:
                    for r in T.unroll(geo.rows):
                        at: T.let = (w * WARP_SIZE + lane) * geo.sums_stride + (chunk * geo.at_once + cc) * geo.rows
                        sums[at + r] = acc[r]

    @T.macro
    def tile_grid(m, x, planes, scales, partial, geo):
        for tile in tiles_of((m + (geo.rows - 1)) // geo.rows):
            for blk in blocks_of((n + geo.channels_per_block - 1) // geo.channels_per_block):
                for sl in slices_of(geo.slices):
                    subset_sums = T.decl_buffer((geo.rows * geo.row_floats,), "float32", scope=table_scope)
                    sums = T.decl_buffer((WARPS * WARP_SIZE * geo.sums_stride,), "float32", scope=shared)
                    for w in warps_of(WARPS):
                        for lane in lanes_of(WARP_SIZE):
                            fill_tables(subset_sums, x, m, tile * geo.rows, geo, sl * geo.words, w, lane)
                    if gpu:
                        T.tvm_storage_sync("shared")
                    for w in warps_of(WARPS):
                        for lane in lanes_of(WARP_SIZE):
                            channel_sums(sums, subset_sums, planes, scales, blk, sl * geo.words, geo, w, lane)
                    if gpu:
                        T.tvm_storage_sync("shared")
                    for w in warps_of(WARPS):
                        for lane in lanes_of(WARP_SIZE):
                            for step in range((geo.sums_stride + WARP_SIZE - 2) // WARP_SIZE):
                                j: T.let = step * WARP_SIZE + lane  # one (channel, row) of the warp's per lane
                                channel: T.let = (blk * geo.channels_per_block + w * geo.channels_per_warp
                                                  + j // geo.rows)
                                row: T.let = tile * geo.rows + j % geo.rows
                                if j < geo.sums_stride - 1 and channel < n and row < m:
                                    total = T.decl_buffer((1,), "float32", scope=local)
                                    total[0] = T.float32(0)
                                    for other in range(WARP_SIZE):
                                        total[0] = total[0] + sums[(w * WARP_SIZE + other) * geo.sums_stride + j]
                                    partial[sl, row, channel] = total[0]

    @T.macro
    def add_slices(m, partial, scales, out, geo):
        for blk in tiles_of((m * n + (REDUCE_THREADS - 1)) // REDUCE_THREADS):
            for t in lanes_of(REDUCE_THREADS):
                if blk * REDUCE_THREADS + t < m * n:
                    at: T.let = blk * REDUCE_THREADS + t
                    total = T.decl_buffer((1,), "float32", scope=local)
                    total[0] = T.float32(0)
                    for s in range(geo.slices):
                        total[0] = total[0] + partial[s, at // n, at % n]
                    if per_channel:
                        out[at // n, at % n] = total[0] * scales[at % n, 0]
                    else:
                        out[at // n, at % n] = total[0]

    one, tile = Geometry.of(1, kw, num_planes, tuning), Geometry.of(ROWS_PER_TILE, kw, num_planes, tuning)

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), "float32"),
        planes: T.Buffer((num_planes, n, kw), "uint32"),
        scales: T.Buffer((n, lay.scale_groups), "float32"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        partial = T.decl_buffer((max(one.slices, tile.slices), m, n), "float32")
        if m == T.int64(1):
            tile_grid(m, x, planes, scales, partial, one)
            add_slices(m, partial, scales, out, one)
        else:
            tile_grid(m, x, planes, scales, partial, tile)
            add_slices(m, partial, scales, out, tile)

    return kernel


WIDE_WARPS = Tuning(channels_per_warp=16)
WIDE_WARPS_MIN_PLANES = 4  # measured on an H200 (benchmarks/README.md): faster with 4 planes, slower with 2 at one row
WIDE_WARPS_MIN_BLOCKS = 1024  # thread blocks at one row with WIDE_WARPS: several waves, not a partial one


def tuning_for(lay: Layout) -> Tuning:
    """16 channels a warp (the tables' fill spread over twice the weights) for 4 planes or more on a grid that stays
    several waves deep; else the default."""
    kw = -(-lay.k // 32)
    blocks = -(-lay.n // (WARPS * WIDE_WARPS.channels_per_warp)) * Geometry.of(1, kw, 1, WIDE_WARPS).slices
    wide = lay.magnitude_planes + 1 >= WIDE_WARPS_MIN_PLANES and blocks >= WIDE_WARPS_MIN_BLOCKS
    return WIDE_WARPS if wide else Tuning()


def kernel_call(codes: np.ndarray, magnitude_planes: int, shift: int, group: int, scales: np.ndarray,
                progressive: bool) -> KernelCall:
    """The kernel over ``codes`` (its planes from :func:`planes_of`) and ``scales`` [N, G] (``group`` 0: per
    channel); ``progressive``: the planes may be cut at load (:data:`bitplane_lut.FORM`)."""
    n, k = codes.shape
    lay = Layout(n, k, magnitude_planes, shift, group, scales.shape[1])
    func = matmul(lay, tuning=tuning_for(lay))
    if progressive:
        func = func.with_attr(PRECISION_ATTR, {"form": bitplane_lut.FORM, "magnitude_bits": magnitude_planes})
    return KernelCall("bitplane", func, [planes_of(codes, magnitude_planes), scales])

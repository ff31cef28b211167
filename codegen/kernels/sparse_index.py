"""Index-loop matmuls over ternary weights (``bie-binary`` index layout, ``bie-blocked``).

Each output channel walks its own list of non-zero positions and adds the activations at each, negated where
the weight is: work is proportional to the non-zeros (:func:`index_loop`, one row and, where the weights are sparse
(:func:`sparse_rows`), above: a vector of up to 16 rows an entry). The loop bounds come from the data, so these
are written as TIR loop nests with the CPU schedule built in.

Buffers are "global" and loop invariants ``T.let`` bindings: in TVM 0.27 a "local" buffer or a reassigned
variable becomes a workspace allocation in the loop on CPU (measured 2-4x slower at 4096x4096).

:func:`decode` writes the weights themselves into a dense op's layout (see
:mod:`.decode`): tile by tile, zeros, then each channel's entries as +-scale, panels of channels in parallel
(convs; ``bie-binary``'s index layout above one row where K is over 2 ** 15). Denser matmuls above one row run
the panel GEMM (:func:`blocked_panel`, :func:`global_panel`): a panel of W as +-1 and zeros, decoded into the GEMM's
panel buffer (never W), 128 rows at a time through bit masks of the rows (:func:`_mask_macros`). ``bie-blocked``
matmuls with ``--blocked-execution load`` (auto's choice where the bitmap is no larger) run none of these: the
bitmap written at load and ``bie-binary``'s bitmap kernels (:mod:`.blocked_bitmap`).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from tvm import te, tirx
from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, bie_binary, bie_blocked

from ..kernel_registry import AtLoad, ConvSpec, KernelCall, register
from ..schedules import matmul
from ..tir_nodes import substituted
from . import bitplane, blocked_bitmap, panel_gemm
from .decode import Layout, destination, vector_lanes, with_decoder


def entry_fields(entry, entry_dtype: str, sign_bit: int) -> tuple:
    """An entry's offset (in its block, or in K) and whether its weight is negative: the sign is the bit above the
    offset."""
    return (entry & tirx.const((1 << sign_bit) - 1, entry_dtype),
            tirx.NE(entry >> tirx.const(sign_bit, entry_dtype), tirx.const(0, entry_dtype)))


def block_count(block_size: int, indptr, counts, j, blk):
    """Channel ``j``'s entries in block ``blk``: its ``counts`` (``block_size`` 0, the global layout: one block, all
    of the channel's entries, from ``indptr``)."""
    if block_size:
        return T.Cast("int64", counts[j, blk])
    return T.Cast("int64", indptr[j + 1]) - T.Cast("int64", indptr[j])


WIDE, NARROW = 16, 8  # rows of x a vector of xt holds: a zmm of fp32, a ymm where the batch has 2 to 8 rows
CHAINS = 4  # sums of a tile, an entry each in turn
CHANNELS = 16  # channels of out a vector stores
# Groups of channels at one tile (up to 8 rows, or 16), each walked over a copy of xt that its own task transposes:
# with one copy, written by the calling thread and read whole by every task, SerialWhenSmall priced the hand-off above
# the channels' work and ran them on one thread. Two: a task for each of two threads; each further copy costs a thread
# with more than one group another transpose (the second copy: 0-8 us at 8-16 rows of K = 384 on one thread).
COPIES = 2
# Above one row, where a tile's xt is over WHOLE_XT bytes, K is walked in chunks of CHUNK_K positions (16 KB of xt
# at 8 rows, 32 KB at 16): each chunk transposed, then every channel (of the group, or of the tile) adds its entries
# of the chunk, so that the rows they read stay in L1, not L2 (4096 x 4096 at 8 rows and 0.52 non-zeros a weight, one
# thread: 6.6 -> 3.9 ms; benchmarks/README.md, "Stop 27: ktile"). K = 384 (24 KB at 8 rows, 48 KB at 16) is walked
# whole: chunks of 256 cost it 7-13 % at 16-64 rows. 16 rows at 4096 x 4096 took 0.79 of main's time in chunks of
# 256, 0.84-0.86 in chunks of 512, 0.85-0.97 in chunks of 16 KB of xt at both widths (128 positions at 16 rows)
WHOLE_XT = 64 * 1024
CHUNK_K = 256
# Each channel's entries of a chunk follow its last chunk's, thousands of streams the hardware does not follow: the
# entries of the channel PREFETCH on are prefetched (without, chunks were 1.4-2x slower than walking K whole)
PREFETCH = 4
COUNT_SPAN = 128  # K positions a count of bie-binary's global indices covers (written at load: a byte each)


def chunk_blocks(xt_bytes: int, span: int, blocks: int) -> int:
    """The blocks of K (``span`` positions each) a chunk of the index loop covers above one row: all ``blocks`` where
    a tile's ``xt`` (``xt_bytes``) is at most WHOLE_XT, else CHUNK_K positions' worth (at least one)."""
    if xt_bytes <= WHOLE_XT:
        return blocks
    return max(1, min(blocks, CHUNK_K // span))


def counted_chunks(k: int) -> bool:
    """Whether the index loop over global indices into K walks K in chunks above one row (at 16 rows a tile: its
    ``xt`` is the wider), reading each channel's entries per ``COUNT_SPAN`` positions (:func:`global_counts`)."""
    blocks = -(-k // COUNT_SPAN)
    return chunk_blocks(2 * k * WIDE * 4, COUNT_SPAN, blocks) < blocks


def index_loop(*, n: int, k: int, nnz: int, entry_dtype: str, sign_bit: int, block_size: int = 0,
               count_dtype: str = "uint8", batched: bool = True):
    """out[m, n] = scale[n] * sum over entries e of channel n of (-1)^sign(e) * x[m, k(e)], ``k(e)`` the entry's
    offset in K (``block_size`` 0: global indices, one block over all of K) or in its block of per-block ``counts``.

    x is copied into ``xt`` [tiles of ``width`` rows, rows of x and of -x (a block's span of each, block by block;
    global indices: alternating), ``width``] (rows past ``m`` zero); then each entry of a channel adds ``xt``'s row
    at the entry read as a number (plus the block's start; global indices: rotated left by one) to one of a tile's
    ``CHAINS`` sums: a load and an add an entry (where the panel GEMM's decode writes all of [K, 32] for each panel
    of channels, zeros included), a run's last ``count % CHAINS`` entries against zero without a branch. ``width``
    is 1 for one row, 8 for up to 8 (half the vector and of ``xt`` unused at 16), else 16; without ``batched`` (a
    kernel the pass calls for one row) 1 for every ``m``, one body to compile instead of three. Each tile's scaled
    sums go to a buffer [tiles, N, ``width``] (one row: ``out`` itself), written into ``out`` a vector of
    ``CHANNELS`` a row. Above one row no thread reads what another wrote: with one tile, ``COPIES`` groups of
    channels run in parallel, each transposing the tile into its own copy of ``xt`` and writing its channels of
    ``out``; with more tiles, tiles run in parallel, each transposing its own rows and walking every channel. (One row
    runs its channels in parallel over the ``xt`` the calling thread wrote: 2 K words.) Above one row, where a tile's
    ``xt`` is over ``WHOLE_XT`` bytes, K is walked in chunks (:func:`chunk_blocks`): a chunk's rows of ``xt``
    transposed, then each channel's entries of the chunk added (its cursor carried to the next chunk, its sums added
    into the buffer and scaled after the last); global indices then read ``counts`` [N, K / ``COUNT_SPAN``] too, each
    channel's entries in each span (:func:`global_counts`, at load). The sums and cursors are rows of one buffer a
    call, a row a channel, a group or a tile, no cache line shared by two threads: declared in the channel loop, they
    became a workspace allocation per channel.
    """
    span = block_size or k  # the K positions of a block
    counted = block_size or COUNT_SPAN  # the K positions of a count (global indices: only where K is walked in chunks)
    blocks = -(-k // counted)  # counts a channel
    rows = -(-k // span) * 2 * span  # of xt: two a position of K (x, -x), the last block's padded
    vectors = -(-n // CHANNELS)  # of out's channels, CHANNELS each
    line = 64 // np.dtype(entry_dtype).itemsize  # entries a cache line
    per_copy = -(-vectors // COPIES)  # of them a group (one tile) walks

    def per_chunk(width):
        # counts a chunk of K covers: all of K for one row, or where xt fits WHOLE_XT
        return blocks if width == 1 else chunk_blocks(rows * width * 4, counted, blocks)

    def chunks(width):
        return -(-blocks // per_chunk(width))

    def prefetched_lines(width):
        # a channel's entries of a chunk at the layer's mean density, and the line they may straddle
        return -(-per_chunk(width) * counted * nnz // (n * k * line)) + 1

    # Where an entry's row starts in xt (each copy's [rows, width] flattened). bie-blocked's sign bit is the one
    # above a block's offsets: xt holds a block's rows of x, then of -x, and the row is the entry plus the block's
    # start. bie-binary's global indices have the sign in the entry's top bit, far above K: xt's rows alternate x and
    # -x, the row is the entry rotated left by one (offset * 2 + sign) and its start the entry rotated by one more
    # bit per doubling of width, where the elements fit the entry's bits (one rotate an entry: the offset's mask and
    # the sign's select of K took 9 instructions an entry, the blocked form 3; 384 x 1536 at 8 rows, one thread
    # 0.18 ms against the blocked form's 0.10, now 0.12).
    alternate = (1 << sign_bit) != span
    bits = 8 * np.dtype(entry_dtype).itemsize
    if alternate and sign_bit != bits - 1:
        raise ValueError(f"index_loop: sign bit {sign_bit} is neither above a block's {span} offsets nor "
                         f"{entry_dtype}'s top bit")

    def rotated(entry, by):
        return T.Cast("int64", (entry << tirx.const(by, entry_dtype)) | (entry >> tirx.const(bits - by, entry_dtype)))

    def element_of(entry, blk, width):
        if not alternate:
            return (blk * 2 * span + T.Cast("int64", entry)) * width
        if rows * width <= 1 << bits:
            return rotated(entry, width.bit_length())  # (width a power of two: 1 + its log2)
        return rotated(entry, 1) * width

    def signed_rows(r):
        # xt's rows of x[:, r] and of -x[:, r]
        if alternate:
            return 2 * r, 2 * r + 1
        return r + r // span * span, r + r // span * span + span

    def chunk_count(indptr, counts, j, c, width):
        # channel j's entries in chunk c of global indices
        if chunks(width) == 1:
            return T.Cast("int64", indptr[j + 1]) - T.Cast("int64", indptr[j])
        per = per_chunk(width)
        return sum(T.if_then_else(c * per + b < blocks, T.Cast("int64", counts[j, T.min(c * per + b, blocks - 1)]),
                                  T.int64(0)) if blocks % per else T.Cast("int64", counts[j, c * per + b])
                   for b in range(per))

    def chained(sums, at, width, l):
        return sums[at, l] + sums[at, width + l] + (sums[at, 2 * width + l] + sums[at, 3 * width + l])

    @T.macro
    def transpose_tile(x, xt, m, width, t, copy, r0, r1):
        # tile t's rows of x, positions r0 to r1 of K, into xt[copy]
        for r in range(r0, r1):
            for l in range(width):
                v: T.let = T.if_then_else(t * width + l < m, x[T.min(t * width + l, m - 1), r], T.float32(0))
                xt[copy, signed_rows(r)[0] * width + l] = v
                xt[copy, signed_rows(r)[1] * width + l] = -v

    @T.macro
    def transpose_chunk(x, xt, m, width, t, copy, c):
        transpose_tile(x, xt, m, width, t, copy, c * per_chunk(width) * counted,
                       T.min((c + 1) * per_chunk(width) * counted, k))

    @T.macro
    def add_entries(sums, xt, entries, j, copy, blk, first, count, width):
        # (the entry inline: a T.let in the unrolled loop is bound once a copy, which TVM rejects; a name assigned
        # in the loop became a workspace allocation per channel)
        for e in range(count // CHAINS):
            for c in T.unroll(CHAINS):
                for l in T.vectorized(width):
                    sums[j, c * width + l] = sums[j, c * width + l] + xt[
                        copy, element_of(entries[first + CHAINS * e + c], blk, width) + l]
        # the last count % CHAINS entries: each of CHAINS - 1 a vector select against zero (its index clamped into
        # the entries), where a loop of up to CHAINS - 1 mispredicted its exit a block
        for c in T.unroll(CHAINS - 1):
            for l in T.vectorized(width):
                sums[j, c * width + l] = sums[j, c * width + l] + T.if_then_else(
                    T.Cast("int64", c) < count % CHAINS,
                    xt[copy, element_of(entries[T.min(first + count // CHAINS * CHAINS + c, nnz - 1)], blk, width) + l],
                    T.float32(0))

    @T.macro
    def store_vector(res, out, m, width, t, jb):
        # channels jb * CHANNELS on of tile t's rows, CHANNELS of a row a vector: each channel's sums stored into out,
        # its rows 4 N bytes apart, went to two of L1's sets at N = 1536
        for l in range(T.min(width, m - t * width)):
            for c in T.vectorized(CHANNELS):
                if jb * CHANNELS + c < n:
                    out[t * width + l, jb * CHANNELS + c] = res[t, T.min(jb * CHANNELS + c, n - 1), l]

    @T.macro
    def untranspose(res, out, m, width):
        for q in T.parallel((m + (width - 1)) // width * vectors):
            store_vector(res, out, m, width, q // vectors, q % vectors)

    @T.macro
    def channel(sums, at, start, cursor, xt, copy, indptr, counts, entries, scales, res, j, t, c, width):
        # channel j's entries of chunk c over tile t (in xt[copy]) into res[t, j], summed in row ``at`` of ``sums``,
        # its next entry in start[cursor] between chunks
        for l in T.vectorized(CHAINS * width):
            sums[at, l] = T.float32(0)
        if chunks(width) == 1:
            start[cursor] = T.Cast("int64", indptr[j])
        else:
            start[cursor] = T.Select(c == 0, T.Cast("int64", indptr[j]), start[cursor])
            ahead: T.let = T.min(j + PREFETCH, n - 1)
            later: T.let = T.Select(c == 0, T.Cast("int64", indptr[ahead]), start[cursor + (ahead - j)])
            for q in T.unroll(prefetched_lines(width)):
                T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(entries[T.min(
                    later + q * line, nnz - 1)]), T.int32(0), T.int32(3), T.int32(1)))
        if block_size > 0:
            for b in range(per_chunk(width)):
                if blocks % per_chunk(width) == 0 or c * per_chunk(width) + b < blocks:
                    count: T.let = T.Cast("int64", counts[j, T.min(c * per_chunk(width) + b, blocks - 1)])
                    first: T.let = start[cursor]
                    add_entries(sums, xt, entries, at, copy, c * per_chunk(width) + b, first, count, width)
                    start[cursor] = first + count
        else:
            count: T.let = chunk_count(indptr, counts, j, c, width)
            first: T.let = start[cursor]
            add_entries(sums, xt, entries, at, copy, 0, first, count, width)
            start[cursor] = first + count
        if chunks(width) == 1:
            for l in T.vectorized(width):
                res[t, j, l] = chained(sums, at, width, l) * scales[j]
        else:
            for l in T.vectorized(width):
                res[t, j, l] = T.Select(c == chunks(width) - 1, scales[j], T.float32(1)) * (
                    chained(sums, at, width, l) + T.Select(c == 0, T.float32(0), res[t, j, l]))

    @T.macro
    def by_channels(x, indptr, counts, entries, scales, m, xt, sums, start, res):
        # a row a tile (width 1): every row transposed by the calling thread, then each row's channels in parallel
        for t in range(m):
            transpose_tile(x, xt, m, 1, t, t, 0, k)
        for t in range(m):
            for j in T.parallel(n):
                channel(sums, j, start, j, xt, t, indptr, counts, entries, scales, res, j, t, T.int64(0), 1)

    @T.macro
    def by_groups(x, indptr, counts, entries, scales, out, m, width, xt, sums, start, res):
        # one tile; g int64: an int32 one in xt's index made it int32 arithmetic, 8 rows 0.058 -> 0.076 ms (one thread)
        for g in T.parallel(T.int64(COPIES)):
            for c in range(chunks(width)):
                transpose_chunk(x, xt, m, width, T.int64(0), g, c)
                for jb in range(g * per_copy, T.min((g + 1) * per_copy, vectors)):
                    for i in range(T.min(CHANNELS, n - jb * CHANNELS)):
                        channel(sums, g * 2 if chunks(width) > 1 else jb * CHANNELS + i, start, jb * CHANNELS + i, xt,
                                g, indptr, counts, entries, scales, res, jb * CHANNELS + i, T.int64(0), c, width)
            for jb in range(g * per_copy, T.min((g + 1) * per_copy, vectors)):
                store_vector(res, out, m, width, T.int64(0), jb)

    @T.macro
    def by_tiles(x, indptr, counts, entries, scales, out, m, width, xt, sums, start, res):
        for t in T.parallel((m + (width - 1)) // width):
            for c in range(chunks(width)):
                transpose_chunk(x, xt, m, width, t, t, c)
                for j in range(n):
                    channel(sums, t * 2, start, t * n + j if chunks(width) > 1 else t * 8, xt, t, indptr, counts,
                            entries, scales, res, j, t, c, width)
        untranspose(res, out, m, width)

    @T.macro
    def body(x, indptr, counts, entries, scales, out, m, width):
        tiles: T.let = (m + (width - 1)) // width
        xt = T.decl_buffer((T.max(tiles, COPIES) if width > 1 else tiles, rows * width), "float32", scope="global")
        # sums: a row a channel (one tile walked whole, one row), else every second row a group or tile; start, each
        # channel's next entry: a slot a channel (one tile), or every eighth a tile, or, where K is walked in chunks,
        # a slot a channel of a tile. No cache line holds two threads' rows or slots: the two groups' sums in adjacent
        # rows cost two threads 8 rows of K = 4096 1.9 -> 2.4-4.1 ms where a line straddled them.
        sums = T.decl_buffer((T.max(2 * T.max(tiles, COPIES), n), CHAINS * width), "float32", scope="global")
        res = T.decl_buffer((tiles, n, width), "float32", scope="global") if width > 1 else \
            T.decl_buffer((m, n, 1), "float32", data=out.data)  # a row a tile: out itself
        start = T.decl_buffer((tiles * n if width > 1 and chunks(width) > 1 else T.max(8 * tiles, n),), "int64",
                              scope="global")
        if width > 1:
            if tiles > 1:
                by_tiles(x, indptr, counts, entries, scales, out, m, width, xt, sums, start, res)
            else:
                by_groups(x, indptr, counts, entries, scales, out, m, width, xt, sums, start, res)
        else:
            by_channels(x, indptr, counts, entries, scales, m, xt, sums, start, res)

    @T.macro
    def by_rows(x, indptr, counts, entries, scales, out, m):
        if not batched:  # (a Python bool: one body)
            body(x, indptr, counts, entries, scales, out, m, 1)
        elif m == 1:  # (the one-row loop: its sums scalars, ``xt`` x and -x)
            body(x, indptr, counts, entries, scales, out, m, 1)
        elif m <= NARROW:
            body(x, indptr, counts, entries, scales, out, m, NARROW)
        else:
            body(x, indptr, counts, entries, scales, out, m, WIDE)

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    if not block_size and not (batched and counted_chunks(k)):
        @T.prim_func(private=True)
        def global_kernel(
            x: T.Buffer((m, k), "float32"),
            indptr: T.Buffer((n + 1,), "uint32"),
            entries: T.Buffer((nnz,), entry_dtype),
            scales: T.Buffer((n,), "float32"),
            out: T.Buffer((m, n), "float32"),
        ):
            T.func_attr({"tirx.noalias": True})
            by_rows(x, indptr, None, entries, scales, out, m)

        return global_kernel

    @T.prim_func(private=True)
    def counted_kernel(
        x: T.Buffer((m, k), "float32"),
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        by_rows(x, indptr, counts, entries, scales, out, m)

    return counted_kernel


def global_counts(*, n: int, k: int, nnz: int, entry_dtype: str, sign_bit: int):
    """``f(indptr, entries, scales, indptr, counts, entries, scales)``: the index loop's constants where it walks K in
    chunks over global indices (:func:`counted_chunks`), written at load from the stored ones: those, and each
    channel's entries in each ``COUNT_SPAN`` positions of K (counts [N, K / ``COUNT_SPAN``], a byte each; entries
    past K are not counted)."""
    blocks = -(-k // COUNT_SPAN)
    offset = (1 << sign_bit) - 1

    @T.prim_func(private=True)
    def writer(
        stored_indptr: T.Buffer((n + 1,), "uint32"),
        stored_entries: T.Buffer((nnz,), entry_dtype),
        stored_scales: T.Buffer((n,), "float32"),
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), "uint8"),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for j in T.parallel(n):
            for b in range(blocks):
                counts[j, b] = T.uint8(0)
            for e in range(T.Cast("int64", stored_indptr[j]), T.Cast("int64", T.min(stored_indptr[j + 1], nnz))):
                entries[e] = stored_entries[e]  # (the entries no channel holds are never read)
                blk: T.let = T.Cast("int64", stored_entries[e] & T.Cast(entry_dtype, offset)) // COUNT_SPAN
                if blk < blocks:
                    counts[j, blk] = counts[j, blk] + T.uint8(1)
            scales[j] = stored_scales[j]
        for j in range(n + 1):
            indptr[j] = stored_indptr[j]

    return writer


def decode(*, n: int, k: int, nnz: int, entry_dtype: str, sign_bit: int, into: Layout, x_ndim: int,
           block_size: int = 0, count_dtype: str = "uint8"):
    """``f(x, indptr, [counts,] entries, scales, W)``: the ternary weights in ``into``; ``x`` is not read.

    ``block_size`` 0: global indices (``bie-binary``), one block over all of K; else block-local ones with per-block
    ``counts`` (``bie-blocked``). Panels of channels (the widest vector that divides N) in parallel; a panel's block
    is decoded into a buffer of its own, [rows of the block, channels of the panel], and then copied out a row at a
    time: the entries' scattered stores stay within that buffer (a matmul's 128 rows of 16 channels: 8 KB, 2 pages),
    where stored straight into W [K, N] each went to a row of its own, a page apart at N = 1536.
    """
    x_shape = tuple(tirx.Var(f"d{i}", "int64") for i in range(x_ndim))
    size = into.size
    span = block_size or k  # the K positions of a block
    blocks = -(-k // span)
    lanes = vector_lanes(n)  # channels of a panel

    @T.macro
    def zero_tile(tile):
        for r in range(span):
            for c in T.vectorized(lanes):
                tile[r * lanes + c] = T.float32(0)

    @T.macro
    def store_entries(tile, scales, entries, j, c, first, count):
        for e in range(count):
            entry: T.let = entries[first + e]
            # (the fields inline: names unpacked from a tuple in the loop became workspace allocations)
            tile[T.Cast("int64", entry_fields(entry, entry_dtype, sign_bit)[0]) * lanes + c] = T.if_then_else(
                entry_fields(entry, entry_dtype, sign_bit)[1], -scales[j], scales[j])

    @T.macro
    def copy_out(out, tile, p, blk):
        flat = T.decl_buffer((size,), "float32", data=out.data)
        for r in range(T.min(T.int64(span), T.int64(k) - blk * span)):
            for c in T.vectorized(lanes):
                flat[into.flat(p * lanes + c, blk * span + r)] = tile[r * lanes + c]

    @T.macro
    def body(indptr, counts, entries, scales, out):
        for p in T.parallel(n // lanes):
            start = T.decl_buffer((lanes,), "int64", scope="global")  # each channel's first entry of the block
            tile = T.decl_buffer((span * lanes,), "float32", scope="global")
            for c in range(lanes):
                start[c] = T.Cast("int64", indptr[p * lanes + c])
            for blk in range(T.int64(blocks)):
                zero_tile(tile)
                for c in range(lanes):
                    count: T.let = block_count(block_size, indptr, counts, p * lanes + c, blk)
                    store_entries(tile, scales, entries, p * lanes + c, c, start[c], count)
                    start[c] = start[c] + count
                copy_out(out, tile, T.int64(p), blk)

    if not block_size:
        @T.prim_func(private=True)
        def global_kernel(
            _x: T.Buffer(x_shape, "float32"),
            indptr: T.Buffer((n + 1,), "uint32"),
            entries: T.Buffer((nnz,), entry_dtype),
            scales: T.Buffer((n,), "float32"),
            out: T.Buffer(into.shape, "float32"),
        ):
            T.func_attr({"tirx.noalias": True})
            body(indptr, None, entries, scales, out)

        return global_kernel

    @T.prim_func(private=True)
    def blocked_kernel(
        _x: T.Buffer(x_shape, "float32"),
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        out: T.Buffer(into.shape, "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        body(indptr, counts, entries, scales, out)

    return blocked_kernel


def blocked_panel(*, n: int, k: int, nnz: int, block_size: int, entry_dtype: str,
                  count_dtype: str) -> panel_gemm.PanelDecode:
    """The panel GEMM's decode of a ``bie-blocked`` panel of ``matmul.COLS`` channels: +-1 and zeros (the scale is
    applied to the sums), from bit masks (:func:`_masked_panel`) where an entry is one byte (blocks up to 128),
    else entry by entry (:func:`_stored_panel`)."""
    sign_bit = block_size.bit_length() - 1
    args = dict(n=n, k=k, nnz=nnz, block_size=block_size, count_dtype=count_dtype, sign_bit=sign_bit,
                panels=-(-n // matmul.COLS), blocks=-(-k // block_size))
    return _writer(_masked_panel(**args) if entry_dtype == "uint8" else
                   _stored_panel(**args, entry_dtype=entry_dtype))


def _writer(body: tirx.PrimFunc) -> panel_gemm.PanelDecode:
    """A panel's decode from ``body`` (``f(panel, *the holders it reads, decoded)``)."""

    def write(holders, decoded, panel_var):
        """The body over the decoder's own panel and buffers (holders: the codec's arrays, then the scales)."""
        return substituted(body.body, dict(zip(body.params, [panel_var, *holders[:len(body.params) - 2], decoded])))

    return write


WAYS = 2  # uint32 lanes of a vector a channel's entries take in the mask decode (16 lanes: 8 channels)
LANES = 16 // WAYS


def _mask_macros(*, nnz: int, entry_bits: int, sign_bit: int, offset_bits: int, words: int):
    """The mask decode's shared steps, rows in windows of ``32 words`` (a block, or 128 rows of K):
    ``load(loaded, entries, first, g, at)`` the entries ``at`` on from each channel's ``first`` of group ``g``,
    ``WAYS`` uint32 lanes a channel (past the array: its last entry again, which the lane's count leaves out);
    ``set_bits(acc, h, entry, valid)`` sets the bit of uint32 lane ``h``'s entry (its offset's low
    ``offset_bits`` bits: the row in its window) in the window's masks, non-zero and negative;
    ``merge(masks, acc, g)`` ORs each channel's lanes into the masks of channel group ``g``;
    ``write_rows(decoded, masks, p, first, rows)``: the window's rows from the masks, 32 channels at a time (1.0
    where non-zero, the sign bit shifted in)."""
    cols, width = matmul.COLS, 16
    row_mask = (1 << offset_bits) - 1
    per_lane = 32 // entry_bits  # entries a uint32 lane

    @T.macro
    def load(loaded, entries, first, g, at):
        if first[g * LANES + LANES - 1] + at + WAYS * per_lane <= nnz:  # (the channels' entries run in order)
            for lane in range(LANES):
                loaded[T.Ramp(WAYS * lane, 1, WAYS)] = T.reinterpret(f"uint32x{WAYS}", entries[T.Ramp(
                    first[g * LANES + lane] + at, 1, WAYS * per_lane)])
        else:
            for h in range(width):
                loaded[h] = T.uint32(0)
                for b in range(per_lane):
                    loaded[h] = loaded[h] | T.shift_left(T.Cast("uint32", entries[T.min(
                        first[g * LANES + h // WAYS] + at + per_lane * (h % WAYS) + b, nnz - 1)]),
                        T.Cast("uint32", entry_bits * b))

    @T.macro
    def set_bits(acc, h, entry, valid):
        at: T.let = entry & T.uint32(row_mask & 31)  # the row's bit in its word
        for w in T.unroll(words):
            hit: T.let = valid & ((T.shift_right(entry, T.uint32(5)) & T.uint32(row_mask >> 5)) == T.uint32(w))
            acc[w * width + h] = acc[w * width + h] | T.Select(hit, T.shift_left(T.uint32(1), at), T.uint32(0))
            acc[(words + w) * width + h] = acc[(words + w) * width + h] | T.Select(
                hit, T.shift_left(T.shift_right(entry, T.uint32(sign_bit)) & T.uint32(1), at), T.uint32(0))

    @T.macro
    def merge(masks, acc, g):
        for w in T.unroll(2 * words):
            for lane in T.vectorized(LANES):
                masks[w * cols + g * LANES + lane] = acc[w * width + WAYS * lane] | acc[w * width + WAYS * lane + 1]

    @T.macro
    def write_rows(decoded, masks, p, first, rows):
        for q in range(words):
            for s in range(32):
                if q * 32 + s < rows:
                    for c in T.vectorized(cols):
                        decoded[p, first + q * 32 + s, c] = T.Select(
                            (masks[q * cols + c] & T.shift_left(T.uint32(1), T.Cast("uint32", s))) != T.uint32(0),
                            T.reinterpret("float32", (T.shift_left(masks[(words + q) * cols + c], T.Cast(
                                "uint32", 31 - s)) & T.uint32(0x80000000)) | T.uint32(0x3F800000)), T.float32(0))

    return load, set_bits, merge, write_rows


def _masked_panel(*, n, k, nnz, block_size, count_dtype, sign_bit, panels, blocks) -> tirx.PrimFunc:
    """A panel block by block, in vectors: the block's entries of 8 channels at a time, 8 entries of a channel a
    step (one uint64 load), each channel over two uint32 lanes (4 entries each), set bits in the channels' masks
    over the block's rows (non-zero, negative; selected word by word, no scatter); then each row of the block is
    written from the masks (:func:`_mask_macros`; where a store per entry into the panel, its rows 128 bytes apart,
    became LLVM's scatters)."""
    cols, width, chunk = matmul.COLS, 16, 4 * WAYS
    words = -(-min(block_size, k) // 32)  # uint32 words of a channel's mask over a block's rows
    load, set_bits, merge, write_rows = _mask_macros(nnz=nnz, entry_bits=8, sign_bit=sign_bit, offset_bits=sign_bit,
                                                     words=words)

    @T.prim_func(private=True)
    def body(
        p: T.int32,
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), "uint8"),
        decoded: T.Buffer((panels, k, cols), "float32"),
    ):
        start = T.decl_buffer((cols,), "int64", scope="global")  # each channel's first entry of the block
        left = T.decl_buffer((width,), "int32", scope="global")  # a uint32 lane's channel's entries from it on
        most = T.decl_buffer((1,), "int32", scope="global")
        loaded = T.decl_buffer((width,), "uint32", scope="global")  # each channel's next entries, 4 a lane
        acc = T.decl_buffer((2 * words * width,), "uint32", scope="global")  # [negative][word][uint32 lane]
        masks = T.decl_buffer((2 * words * cols,), "uint32", scope="global")  # [negative][word][channel]
        for c in range(cols):
            start[c] = T.if_then_else(p * cols + c < n, T.Cast("int64", indptr[T.min(p * cols + c, n)]), T.int64(0))
        for blk in range(blocks):
            for g in range(cols // LANES):
                most[0] = 0
                for h in range(width):
                    j: T.let = p * cols + g * LANES + h // WAYS
                    left[h] = T.if_then_else(j < n, T.Cast("int32", counts[T.min(j, n - 1), blk]), 0) - 4 * (h % WAYS)
                    most[0] = T.max(most[0], left[h])
                for lane in range(LANES):  # the channels' entries a few blocks on: too many streams to detect
                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(entries[T.min(
                        start[g * LANES + lane] + 256, nnz - 1)]), T.int32(0), T.int32(3), T.int32(1)))
                for i in T.vectorized(2 * words * width):
                    acc[i] = T.uint32(0)
                # a constant extent and a guard: the pipeline's work estimate of the panel loop reads a loop's
                # extent outside the loop, where the buffers it loads from are not allocated yet
                for step in range(-(-min(block_size, k) // chunk)):
                    if step * chunk < most[0]:
                        load(loaded, entries, start, g, step * chunk)
                        for b in T.unroll(4):  # the 4 entries of each uint32 lane, a byte at a time
                            for h in T.vectorized(width):
                                set_bits(acc, h, T.shift_right(loaded[h], T.Cast("uint32", 8 * b)),
                                         step * chunk + b < left[h])
                merge(masks, acc, g)
                for lane in range(LANES):
                    start[g * LANES + lane] = start[g * LANES + lane] + T.Cast("int64", left[WAYS * lane])
            write_rows(decoded, masks, p, blk * block_size, T.min(block_size, k - blk * block_size))

    return body


def global_panel(*, n: int, k: int, nnz: int, entry_dtype: str, sign_bit: int) -> panel_gemm.PanelDecode:
    """The panel GEMM's decode of a ``bie-binary`` index-layout panel (two-byte global indices: K up to 2 ** 15),
    128 rows of K at a time through bit masks, as :func:`_masked_panel` decodes a block; no counts: each channel's
    entries of a window are those up to its first past the window (sorted), counted as they set their bits."""
    cols, width, chunk = matmul.COLS, 16, 2 * WAYS  # 2 entries a uint32 lane
    window = 128
    words = -(-min(window, k) // 32)
    load, set_bits, merge, write_rows = _mask_macros(nnz=nnz, entry_bits=16, sign_bit=sign_bit,
                                                     offset_bits=window.bit_length() - 1, words=words)
    offset_mask = (1 << sign_bit) - 1
    panels = -(-n // cols)

    @T.prim_func(private=True)
    def body(
        p: T.int32,
        indptr: T.Buffer((n + 1,), "uint32"),
        entries: T.Buffer((nnz,), entry_dtype),
        decoded: T.Buffer((panels, k, cols), "float32"),
    ):
        cursor = T.decl_buffer((cols,), "int64", scope="global")  # each channel's first entry past the windows set
        left = T.decl_buffer((width,), "int32", scope="global")  # a uint32 lane's channel's entries from it on
        last = T.decl_buffer((width,), "int32", scope="global")  # whether a lane's last entry of the step set a bit
        more = T.decl_buffer((1,), "int32", scope="global")  # whether a channel may have further entries in the window
        loaded = T.decl_buffer((width,), "uint32", scope="global")  # each channel's next entries, 2 a lane
        acc = T.decl_buffer((2 * words * width,), "uint32", scope="global")  # [negative][word][uint32 lane]
        masks = T.decl_buffer((2 * words * cols,), "uint32", scope="global")  # [negative][word][channel]
        for c in range(cols):
            cursor[c] = T.if_then_else(p * cols + c < n, T.Cast("int64", indptr[T.min(p * cols + c, n)]), T.int64(0))
        for wd in range(-(-k // window)):
            for g in range(cols // LANES):
                more[0] = 0
                for h in range(width):
                    j: T.let = p * cols + g * LANES + h // WAYS
                    left[h] = T.if_then_else(j < n, T.Cast("int32", T.Cast("int64", indptr[T.min(j + 1, n)])
                                                            - cursor[g * LANES + h // WAYS]), 0) - 2 * (h % WAYS)
                    more[0] = T.max(more[0], left[h])
                for i in T.vectorized(2 * words * width):
                    acc[i] = T.uint32(0)
                for step in range(-(-min(window, k) // chunk)):  # (a constant extent: see _masked_panel)
                    if more[0] > 0:
                        load(loaded, entries, cursor, g, step * chunk)
                        for b in T.unroll(2):
                            for h in T.vectorized(width):
                                # the lane's channel's entry, in the window (the sorted entries of earlier windows
                                # were passed over)
                                set_bits(acc, h, T.shift_right(loaded[h], T.Cast("uint32", 16 * b)) & T.uint32(
                                    0xFFFF), (step * chunk + b < left[h]) & (T.shift_right(T.shift_right(
                                        loaded[h], T.Cast("uint32", 16 * b)) & T.uint32(offset_mask), T.uint32(
                                        7)) == T.Cast("uint32", wd)))
                        for h in T.vectorized(width):
                            last[h] = T.Select((step * chunk + 1 < left[h]) & (T.shift_right(T.shift_right(
                                loaded[h], T.uint32(16)) & T.uint32(offset_mask), T.uint32(7)) == T.Cast(
                                "uint32", wd)), 1, 0)
                        more[0] = 0
                        for lane in range(LANES):
                            more[0] = T.max(more[0], last[WAYS * lane + WAYS - 1])
                merge(masks, acc, g)
                for q in range(words):  # past the window's entries: one bit each
                    for lane in T.vectorized(LANES):
                        cursor[g * LANES + lane] = cursor[g * LANES + lane] + T.Cast("int64", T.popcount(
                            masks[q * cols + g * LANES + lane]))
            write_rows(decoded, masks, p, wd * window, T.min(window, k - wd * window))

    return _writer(body)


def _stored_panel(*, n, k, nnz, block_size, entry_dtype, count_dtype, sign_bit, panels, blocks) -> tirx.PrimFunc:
    """A panel channel by channel: zeros, then each entry stored (blocks past 128 rows, two-byte entries: a mask
    over a block's rows would take a word per 32 of them, each tested for every entry)."""
    cols = matmul.COLS

    @T.prim_func(private=True)
    def body(
        p: T.int32,
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        decoded: T.Buffer((panels, k, cols), "float32"),
    ):
        start = T.decl_buffer((1,), "int64", scope="global")  # the channel's first entry of the block
        for r in range(k):
            for c in T.vectorized(cols):
                decoded[p, r, c] = T.float32(0)
        for c in range(T.min(cols, n - p * cols)):
            j: T.let = p * cols + c
            start[0] = T.Cast("int64", indptr[j])
            for blk in range(blocks):
                count: T.let = T.Cast("int64", counts[j, blk])
                for e in range(count):
                    entry: T.let = entries[start[0] + e]
                    offset, negative = entry_fields(entry, entry_dtype, sign_bit)
                    decoded[p, blk * block_size + T.Cast("int32", offset), c] = T.if_then_else(
                        negative, T.float32(-1), T.float32(1))
                start[0] = start[0] + count

    return body


def _nonempty(entries: np.ndarray) -> np.ndarray:
    # A layer with no non-zeros still needs a buffer to bind; the kernel never reads it.
    return entries if entries.size else np.zeros(1, entries.dtype)


# non-zeros per weight up to which matmuls above one row run index_loop (see sparse_rows): kernel alone, one-thread
# CPU time against the panel GEMM over the same encoding, 8 / 16 / 64 rows (benchmarks/README.md, "Stop 27: ktile":
# with long K walked in chunks) at 0.5-0.52 4096x4096 0.60 / 0.56 / 0.87, 2048x2048 0.59 / 0.58 / 0.86, 1536x384
# 0.54 / 0.62 / 0.85; at 0.6 0.59 / 0.58 / 0.97, 0.57 / 0.59 / 1.02, 0.58 / 0.64 / 0.94
ROWS_DENSITY = 0.55
# ... and where K is at most SHORT_K, up to SHORT_ROWS_DENSITY (the same measure, stop 26: 384x1536 at the codecs'
# default 0.52 0.48 / 0.55 / 0.79, bie-binary's index layout 0.65 / 0.79 / 0.87; at 0.7 1.05 and 1.12 at 64 rows)
SHORT_K = 512
SHORT_ROWS_DENSITY = 0.6
# ... and for global indices (bie-binary's index layout) up to GLOBAL_ROWS_DENSITY at any K (the same measure, stop
# 27, rows 8 / 16 / 64, at 0.6: 4096x4096 0.49 / 0.51 / 0.92, 2048x2048 0.54 / 0.56 / 0.81, 1536x384 0.49 / 0.58 /
# 0.89, 768x768 0.58 / 0.49 / 0.84)
GLOBAL_ROWS_DENSITY = 0.6


def sparse_rows(enc: Encoded, nnz: int, global_entries: bool = False) -> bool:
    """Whether a matmul above one row runs :func:`index_loop` (work per non-zero) rather than the panel GEMM (work
    per weight: a panel decoded whole, zeros included): at most ``ROWS_DENSITY`` non-zeros per weight,
    ``SHORT_ROWS_DENSITY`` where K is at most ``SHORT_K``, and for ``global_entries`` (indices over all of K) at least
    ``GLOBAL_ROWS_DENSITY``."""
    n, k = enc.shape
    density = SHORT_ROWS_DENSITY if k <= SHORT_K else ROWS_DENSITY
    if global_entries:
        density = max(density, GLOBAL_ROWS_DENSITY)
    return nnz <= density * n * k


def global_layout(enc: Encoded) -> tuple[dict, list[np.ndarray]]:
    """A ``bie-binary`` index encoding's compile-time layout (the kernels' keywords) and constants."""
    n, k = enc.shape
    entries = _nonempty(enc.arrays["entries"])
    _, sign_bit = bie_binary.index_entry_dtype(k)
    layout = dict(n=n, k=k, nnz=entries.size, entry_dtype=entries.dtype.name, sign_bit=sign_bit)
    return layout, [enc.arrays["indptr"], entries, enc.arrays["scales"]]


def blocked_layout(enc: Encoded) -> tuple[dict, list[np.ndarray]]:
    """A ``bie-blocked`` encoding's compile-time layout (the kernels' keywords) and constants."""
    n, k = enc.shape
    entries, counts = _nonempty(enc.arrays["entries"]), enc.arrays["counts"]
    layout = dict(n=n, k=k, nnz=entries.size, block_size=int(enc.header["block_size"]),
                  entry_dtype=entries.dtype.name, count_dtype=counts.dtype.name)
    return layout, [enc.arrays["indptr"], counts, entries, enc.arrays["scales"]]


def _panel_gemm(enc: Encoded, constants: list[np.ndarray], names: tuple, panels: panel_gemm.PanelDecode):
    """The panel GEMM over an index layout's constants (``names``; the scales last, applied to the sums)."""
    holders = [te.placeholder(c.shape, c.dtype.name, name) for c, name in zip(constants, names)]
    return panel_gemm.gemm(panel_gemm.ByPanels(panels), holders, enc.shape[0], enc.shape[1],
                           scale=lambda c: holders[-1][c])


def global_loop_call(layout: dict, constants: list[np.ndarray], batched: bool) -> KernelCall:
    """The index loop over ``bie-binary``'s global indices (:func:`global_layout`'s ``layout`` and ``constants``),
    the counts it reads where it walks K in chunks (:func:`counted_chunks`) written at load with its other constants
    (:func:`global_counts`): the artefact stores what the encoding holds."""
    call = KernelCall("global_index", index_loop(**layout, batched=batched), constants)
    if batched and counted_chunks(layout["k"]):
        indptr, entries, scales = constants
        call.constants = [indptr, np.zeros((layout["n"], -(-layout["k"] // COUNT_SPAN)), np.uint8), entries, scales]
        call.at_load = AtLoad(global_counts(**layout), constants)
    return call


@register(bie_binary.NAME, ops=("matmul", "conv2d"), target="llvm")
def global_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """The bitmap layout: the bit-plane kernels (their exact fp32 look-up tables: the codec has no ``lut_tables``
    option); the index layout: the index loop for one row, and above where the weights are sparse, else the panel
    GEMM (K up to 2 ** 15; longer, and convs: the decode)."""
    if enc.header["layout"] == "bitmap":
        return bitplane.llvm_call(enc, conv, lut_tables="fp32")
    layout, constants = global_layout(enc)
    batched = conv is None and layout["entry_dtype"] == "uint16" and sparse_rows(enc, layout["nnz"], True)
    small = None if conv else global_loop_call(layout, constants, batched)
    if batched:
        return small
    if conv is None and layout["entry_dtype"] == "uint16":
        return panel_gemm.with_gemm(small, _panel_gemm(
            enc, constants, ("indptr", "entries", "scales"), global_panel(**layout)), "global_index")
    into, x_ndim = destination(enc, conv)
    return with_decoder(small, decode(**layout, into=into, x_ndim=x_ndim), "global_index", constants, conv)


@register(bie_blocked.NAME, ops=("matmul", "conv2d"), target="llvm")
def blocked_call(enc: Encoded, conv: ConvSpec | None,
                 blocked_execution: str = bie_blocked.Config.blocked_execution) -> KernelCall:
    """``blocked_execution`` as :func:`bie_blocked.execution` resolves it: ``load``, ``bie-binary``'s bitmap kernels
    over the bitmap written at load (:mod:`.blocked_bitmap`); ``stream``, the index loop for one row, and above
    where the weights are sparse, else the panel GEMM (a conv: the decode)."""
    layout, constants = blocked_layout(enc)
    if bie_blocked.execution(enc, blocked_execution, "matmul" if conv is None else "conv2d")[0] == "load":
        return blocked_bitmap.at_load_call(enc, layout, constants)
    sign_bit = layout["block_size"].bit_length() - 1
    batched = conv is None and sparse_rows(enc, layout["nnz"])
    small = None if conv else KernelCall("blocked_index", index_loop(**layout, sign_bit=sign_bit, batched=batched),
                                         constants)
    into, x_ndim = destination(enc, conv)
    if batched:
        return small
    if conv is None:
        return panel_gemm.with_gemm(small, _panel_gemm(
            enc, constants, ("indptr", "counts", "entries", "scales"), blocked_panel(**layout)), "blocked_index")
    decoder = decode(**layout, sign_bit=sign_bit, into=into, x_ndim=x_ndim)
    return with_decoder(small, decoder, "blocked_index", constants, conv)

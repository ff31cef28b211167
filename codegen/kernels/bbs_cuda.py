"""``bbs`` kernels on the GPU: weights decoded in registers from the stored bytes and bit columns as they are used.

The decoding is the format of :mod:`bie_compiler.codecs.bbs` (the reference
decoder; :mod:`.bbs_decoded` writes it in TE for the CPU kernels).

* :func:`matmul`: ``out[m, c] = sum_k x[m, k] * w[position[c], k]``, any batch.
  It works in stored-row order, so that a thread block's reads are contiguous,
  into a workspace ``stored [m, N]``; a second kernel writes the output
  unshuffle ``out[i, c] = stored[i, position[c]]``. A thread block of WARPS
  warps takes a unit of stored rows and a tile of rows of activations (one row
  when m is 1, ROWS_PER_TILE otherwise: each weight is decoded once for the
  tile's rows, held in registers); its warps split K and meet in shared memory.

  - a sensitive row (INT8): the block's threads read consecutive 32-bit words
    of it (four weights each, one coalesced load per warp);
  - sixteen pruned rows (one stored vector block): lane ``l`` of a warp takes
    channel ``l % 16`` of the block and every other group (``l // 16``), so a
    column load of the warp is the 64-byte vectors of two groups and each lane
    gets its own word. Bit ``j`` of each byte of the ``8 - N`` column words,
    shifted to the column's place and OR-ed, gives four kept integers at once
    (weights ``j, j + 8, j + 16, j + 24``, one per byte, offset by ``2^(7-N)``
    through the sign column's flip); a byte goes into the mantissa of 2^23, a
    float without a conversion. A group's dot product is
    ``2^shift * sum x * kept + offset * sum x``, shift and offset from its
    metadata byte; the next group's words are loaded before this one is used.
* :func:`conv2d`: a direct convolution, one thread per output element; the
  pad stage and the weight decode (:func:`bbs_decoded.stored_weight`) are
  inlined into its reduction, so no decoded weight is written anywhere.

``gpu=False`` builds the same loop nests with the thread loops serial and the
shared/local buffers global: a CPU build of the same computation, for tests on
machines without a GPU (serially, every thread's partial sums are written
before they are added, which is what the barrier guarantees on the GPU).
"""

from __future__ import annotations

from typing import TypeVar

from tvm import s_tir, tirx
from tvm.script import tirx as T

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

from ..kernel_registry import ConvSpec, KernelCall, register
from . import bbs_decoded
from .warp_layout import WARP_SIZE, bound_to, scopes

CONV_THREADS = 128  # threads per block of the conv: one output element each
WARPS = 8  # warps per thread block; they split a unit's K
ROWS_PER_TILE = 4  # rows of activations per thread block when m > 1
UNSHUFFLE_THREADS = 256
EXPONENT_OF_2_23 = 0x4B000000  # a byte OR-ed into the mantissa of 2^23 is 2^23 + byte, exactly
LOW_BIT_OF_EACH_BYTE = 0x01010101


def matmul(enc: Encoded, gpu: bool = True) -> tirx.PrimFunc:
    """``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])``, for the GPU (or serial)."""
    n, k = enc.shape
    scales_c, position_c, sensitive_c, columns_c, meta_c = bbs_decoded.constants(enc)
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    bits = 8 - pruned_columns
    zps = enc.header["method"] == "zps"
    kp = bbs_decoded.padded_k(enc)
    groups = kp // bbs.GROUP
    words = kp // 4  # of a sensitive row
    units = count + -(-(n - count) // bbs.LANES)  # sensitive rows, then blocks of sixteen pruned rows
    threads = WARPS * WARP_SIZE
    aligned = k == kp  # rows of x start 16-byte aligned and need no bounds test
    shared, local = scopes(gpu)
    bound = bound_to(gpu)
    tiles_of, units_of = bound("blockIdx.x"), bound("blockIdx.y")
    warps_of, lanes_of = bound("threadIdx.y"), bound("threadIdx.x")
    flip = LOW_BIT_OF_EACH_BYTE << (bits - 1)  # the sign column: two's complement -> offset binary
    kept_bias = float((1 << 23) + (1 << (bits - 1)))

    def group_offset(c):
        """The metadata's constant as the group's offset: ``c`` (avg), or ``-c`` in two's complement (zps)."""
        return T.if_then_else(c >= 32, 64 - c, -c) if zps else c

    def byte_of(word, q):
        return (word >> T.uint32(8 * q)) & T.uint32(0xFF)

    def as_float(byte):
        return T.reinterpret("float32", byte | T.uint32(EXPONENT_OF_2_23))

    @T.macro
    def load_x(xl, at, x, row, start):
        """Four activations x[row, start:start + 4] into xl[at:at + 4] (zero past K)."""
        if aligned:
            for e in T.vectorized(4):
                xl[at + e] = x[row, start + e]
        else:
            for e in range(4):
                xl[at + e] = T.if_then_else(start + e < k, x[row, T.min(start + e, k - 1)], T.float32(0))

    @T.macro
    def sensitive_rows(acc, x, sensitive_words, m, i0, rows, r, t):
        x_word = T.decl_buffer((rows * 4,), "float32", scope=local)
        for step in range((words + threads - 1) // threads):
            at: T.let = step * threads + t
            if at < words:
                word: T.let = sensitive_words[r, at]
                for rr in T.unroll(rows):
                    load_x(x_word, rr * 4, x, T.min(i0 + rr, m - 1), at * 4)
                for q in T.unroll(4):
                    # an int8 byte flipped to offset binary: 2^23 + byte + 128 as a float
                    value: T.let = as_float(byte_of(word, q) ^ T.uint32(0x80)) - T.float32((1 << 23) + 128)
                    for rr in T.unroll(rows):
                        acc[rr] = acc[rr] + x_word[rr * 4 + q] * value

    @T.macro
    def load_group(cw, mb, columns, meta, pb, g, c16):
        for b in T.unroll(bits):
            cw[b] = columns[pb, g, b, c16]
        mb[0] = T.Cast("int32", meta[pb, g, c16])

    @T.macro
    def pruned_rows(acc, x, columns, meta, m, i0, rows, pb, w, lane):
        c16: T.let = lane % bbs.LANES
        half: T.let = lane // bbs.LANES
        cur = T.decl_buffer((bits,), "uint32", scope=local)
        nxt = T.decl_buffer((bits,), "uint32", scope=local)
        cur_meta = T.decl_buffer((1,), "int32", scope=local)
        nxt_meta = T.decl_buffer((1,), "int32", scope=local)
        x_runs = T.decl_buffer((rows * 16,), "float32", scope=local)
        dots = T.decl_buffer((rows,), "float32", scope=local)
        sums = T.decl_buffer((rows,), "float32", scope=local)
        if w * 2 + half < groups:
            load_group(nxt, nxt_meta, columns, meta, pb, w * 2 + half, c16)
        for step in range((groups + 2 * WARPS - 1) // (2 * WARPS)):
            g: T.let = (step * WARPS + w) * 2 + half
            if g < groups:
                for b in T.unroll(bits):
                    cur[b] = nxt[b]
                cur_meta[0] = nxt_meta[0]
                if g + 2 * WARPS < groups:  # the next group's loads are in flight while this one is decoded
                    load_group(nxt, nxt_meta, columns, meta, pb, g + 2 * WARPS, c16)
                for rr in T.unroll(rows):
                    dots[rr] = T.float32(0)
                    sums[rr] = T.float32(0)
                for jh in T.unroll(2):
                    # weights j + 8 q for j in jh*4 .. jh*4+3: four runs of four consecutive activations per row
                    for rr in T.unroll(rows):
                        for q in T.unroll(4):
                            load_x(x_runs, (rr * 4 + q) * 4, x, T.min(i0 + rr, m - 1), g * bbs.GROUP + jh * 4 + 8 * q)
                    for jj in T.unroll(4):
                        j: T.let = jh * 4 + jj
                        spread = T.decl_buffer((1,), "uint32", scope=local)
                        spread[0] = T.uint32(flip)
                        for b in T.unroll(bits):
                            spread[0] = spread[0] ^ (((cur[b] >> T.Cast("uint32", j)) & T.uint32(LOW_BIT_OF_EACH_BYTE))
                                                     << T.uint32(bits - 1 - b))
                        for q in T.unroll(4):
                            kept: T.let = as_float(byte_of(spread[0], q)) - T.float32(kept_bias)
                            for rr in T.unroll(rows):
                                xv: T.let = x_runs[(rr * 4 + q) * 4 + jj]
                                dots[rr] = dots[rr] + xv * kept
                                sums[rr] = sums[rr] + xv
                meta_byte: T.let = cur_meta[0]
                c: T.let = meta_byte & 63
                step_of: T.let = T.Cast("float32", T.shift_left(1, pruned_columns - (meta_byte >> 6)))
                offset: T.let = T.Cast("float32", group_offset(c))
                for rr in T.unroll(rows):
                    acc[rr] = acc[rr] + dots[rr] * step_of + sums[rr] * offset

    @T.macro
    def tile_grid(m, x, scales, sensitive_words, columns, meta, stored, rows):
        for tile in tiles_of((m + (rows - 1)) // rows):
            for unit in units_of(units):
                partial = T.decl_buffer((WARPS, WARP_SIZE * rows), "float32", scope=shared)
                lane_sums = T.decl_buffer((WARP_SIZE * rows,), "float32", scope=shared)
                for w in warps_of(WARPS):
                    for lane in lanes_of(WARP_SIZE):
                        acc = T.decl_buffer((rows,), "float32", scope=local)
                        for rr in T.unroll(rows):
                            acc[rr] = T.float32(0)
                        if unit < count:
                            sensitive_rows(acc, x, sensitive_words, m, tile * rows, rows, unit, w * WARP_SIZE + lane)
                        else:
                            pruned_rows(acc, x, columns, meta, m, tile * rows, rows, unit - count, w, lane)
                        for rr in T.unroll(rows):
                            partial[w, lane * rows + rr] = acc[rr]
                if gpu:
                    T.tvm_storage_sync("shared")
                for w in warps_of(WARPS):
                    for lane in lanes_of(WARP_SIZE):
                        if w == 0:  # a lane's sum over the warps (pruned: then its channel's two halves, below)
                            for rr in T.unroll(rows):
                                total = T.decl_buffer((1,), "float32", scope=local)
                                total[0] = T.float32(0)
                                for other in range(WARPS):
                                    total[0] = total[0] + partial[other, lane * rows + rr]
                                lane_sums[lane * rows + rr] = total[0]
                if gpu:
                    T.tvm_storage_sync("shared")
                for w in warps_of(WARPS):
                    for lane in lanes_of(WARP_SIZE):
                        if w == 0 and lane == 0 and unit < count:  # a sensitive row: the sum of the 32 lanes
                            for rr in T.unroll(rows):
                                if tile * rows + rr < m:
                                    row_sum = T.decl_buffer((1,), "float32", scope=local)
                                    row_sum[0] = T.float32(0)
                                    for other in range(WARP_SIZE):
                                        row_sum[0] = row_sum[0] + lane_sums[other * rows + rr]
                                    stored[tile * rows + rr, unit] = row_sum[0] * scales[unit]
                        if (w == 0 and lane < bbs.LANES and unit >= count
                                and count + (unit - count) * bbs.LANES + lane < n):
                            row: T.let = count + (unit - count) * bbs.LANES + lane  # the sum of its two halves
                            for rr in T.unroll(rows):
                                if tile * rows + rr < m:
                                    stored[tile * rows + rr, row] = scales[row] * (
                                        lane_sums[lane * rows + rr] + lane_sums[(lane + bbs.LANES) * rows + rr])

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), "float32"),
        scales: T.Buffer(scales_c.shape, "float32"),
        position: T.Buffer(position_c.shape, "int32"),
        sensitive: T.Buffer(sensitive_c.shape, "int8"),
        columns: T.Buffer(columns_c.shape, "uint32"),
        meta: T.Buffer(meta_c.shape, "uint8"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        sensitive_words = T.decl_buffer((sensitive_c.shape[0], words), "uint32", data=sensitive.data)
        stored = T.decl_buffer((m, n), "float32")
        if m == T.int64(1):
            tile_grid(m, x, scales, sensitive_words, columns, meta, stored, 1)
        else:
            tile_grid(m, x, scales, sensitive_words, columns, meta, stored, ROWS_PER_TILE)
        for blk in tiles_of((m * n + (UNSHUFFLE_THREADS - 1)) // UNSHUFFLE_THREADS):
            for t in lanes_of(UNSHUFFLE_THREADS):
                if blk * UNSHUFFLE_THREADS + t < m * n:
                    at: T.let = blk * UNSHUFFLE_THREADS + t
                    out[at // n, at % n] = stored[at // n, position[at % n]]

    return kernel


def conv2d(enc: Encoded, conv, gpu: bool = True) -> tirx.PrimFunc:
    """:func:`bbs_decoded.conv2d_compute` as a direct conv: one thread per output element (or serial)."""
    sch = s_tir.Schedule(bbs_decoded.conv2d_compute(enc, conv))
    sch.work_on("main")
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint != bbs_decoded.CONV_BLOCK:  # the weight decode and the padding
            sch.compute_inline(block)
    nn, ff, yy, xx, *_ = sch.get_loops(sch.get_sblock(bbs_decoded.CONV_BLOCK))
    blocks, threads = sch.split(sch.fuse(nn, ff, yy, xx), [None, CONV_THREADS])
    if gpu:
        sch.bind(blocks, "blockIdx.x")
        sch.bind(threads, "threadIdx.x")
    return sch.mod["main"]


@register(bbs.NAME, ops=("matmul", "conv2d"), target="cuda")
def cuda_call(enc: Encoded, conv: ConvSpec | None, lut_tables: str = bbs.Config.lut_tables) -> KernelCall:
    """Weights decoded in registers as they are multiplied, one kernel for every batch: a thread block per unit of
    stored rows (matmul) or a thread per output element (conv) (``lut_tables`` is the CPU's choice)."""
    if conv is not None:
        return KernelCall("bbs_conv2d", conv2d(enc, conv), bbs_decoded.constants(enc))
    return KernelCall("bbs", matmul(enc), bbs_decoded.constants(enc))

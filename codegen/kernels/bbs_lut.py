"""The batch-1 ``bbs`` kernel: look-up-table bit-serial GEMV over the stored bit columns (AVX-512).

The look-ups (:mod:`.lut`): a pruned group's bit column for 16 channels is one
64-byte vector of 32-bit words (the stored layout, :mod:`bie_compiler.codecs.bbs`),
each column looked up and multiplied-added by its significance. Then per group

    dot += 2^shift * sum_b significance_b * colsum_b + offset * sum(x over the group)

with shift and offset from the group's metadata byte in 7 vector ops (2^shift is
a look-up of the byte's top 2 bits in a register of the 4 powers; the zps sign of
the offset is folded into the group sums): the pruned columns cost nothing but
that one multiply-add (they are constant, so their contribution is the offset
times the group's activation sum). A look-up costs the same whatever the column
holds, so the bi-directional rule of the bit-serial hardware (summing the zeros
of a mostly-ones column) has nothing to save here: ``table[~t] = table[15] - table[t]``
is the same identity, applied for free.

Sensitive rows are INT8 dot products, 4 rows per pass over x: 4 independent
16-lane FMA chains (one chain alone waits on the FMA latency), each updated
once per line of its row.

One parallel region over work items (16 pruned channels, or with int8 tables 32:
two blocks of 16, or 16 sensitive rows).
TVM hands each thread a contiguous share of the items, so the sensitive items
are spread evenly over the range. The lines a thread reads are prefetched into
L2 about ``lut.AHEAD_BYTES`` ahead of its reads (the hardware prefetchers stop at
every 4 KiB page and alone keep too few lines in flight for weights read from
memory), each stream on its own:

* a work item reads its blocks side by side, so block ``b`` of successive items
  is a stream (:func:`items_stream_ahead`): in the one flat stream of blocks the
  first block's prefetches fell on the item's own second block, read already,
  and left the next item's second block to demand misses; the metadata likewise;
* the sensitive rows at the same offset of the quad of rows whole quads on, at
  least that far (4 KiB on in the row reached the quad's own next row at
  K = 4096 and left the next quad to demand misses), each row's prefetch next to
  its own update rather than the quad's four together.

(Both for one thread reading weights from memory: benchmarks/README.md, ``bbs_gemv.py``, stop 30.)
Inside the parallel loop every value is ``T.let``-bound. The accumulators are
buffers declared in the work item, under TVM's stack limit
(``stack_buffers.TVM_STACK_BYTES``), so stack allocations that LLVM keeps in
registers (one buffer of every item's accumulators, declared for the call, was
stored to after every update: the prefetches in the loop kept LLVM from sinking
the stores). A larger buffer, or a name assigned, inside the parallel loop would
be a workspace allocation per iteration. The output is unshuffled through ``position``.
Rows of activations are processed one after the other, so the kernel is exact
for any batch, but it is meant for batch 1 (larger batches use the decoded
kernel, :mod:`.bbs_decoded`). Needs AVX-512 (``vpermi2ps`` and ``vpermps`` on 16 lanes).

``tables="int8"`` (4 kept columns, the ``moderate`` preset's; the default there,
``lut_tables.chosen``) is T-MAC's scheme for the pruned rows: per row, each
group's 8 tables of 4 activations (16 subset sums) quantized to int8 with one
step ``s_g`` (the group's largest entry in magnitude over TABLE_PEAK), looked up
64 at a time with ``vpshufb`` and the 4 columns' look-ups summed with their
significances by ``vpdpbusd``. The index bytes are the stored column words
re-laid out at compile time (:func:`int8_nibbles`: the same 256 bytes per block
and group, so the same bits/weight), the sign column inverted: the kept integer
as offset binary ``u = kept + 8`` (``vpdpbusd`` multiplies unsigned bytes, the
significances, by signed ones, the table entries). Per group and block: 4
loads, 8 shuffles and 8 ``vpdpbusd`` (in ``DOT_CHAINS`` chains), 4 masks and 4
shifts (``vgf2p8affineqb``) for the nibbles, and per group 8 table loads (16
bytes each, broadcast to the 4 lanes) and the group's scalars, shared by the
two blocks of a work item (an odd last block is paired with a copy of itself,
computed and not stored), against 28 float look-ups and 24 index operations; then

    dot += 2^shift * (s_g * D - 8 * S_g) + offset * S_g

with ``D`` the int32 look-up sum and ``S_g`` the exact sum of the group's
activations. Its error is bounded by :func:`int8_error_bound`; the sensitive
rows are the same INT8 dot products. Needs AVX512-BW and VNNI as well
(:func:`.lut.int8_supported`).
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

from ..layout_memo import per_layout
from ..stack_buffers import TVM_STACK_BYTES
from . import lut

KIND = "bbs_lut"  # the GEMV's kernel kind (with int8 tables: then lut_tables.INT8_KIND_SUFFIX)
LANES = bbs.LANES
QUAD = bbs.INT8_TABLE_COLUMNS  # int8 tables: a channel's kept columns in the 4 bytes vpdpbusd sums
# the significances of the 4 bytes of a channel (column 0 first) as unsigned bytes, little-endian: 8, 4, 2, 1
SIGNIFICANCES = 0x01020408
ROWS = 4  # sensitive rows per pass over x: independent FMA chains
# int8 tables: vpdpbusd chains per block and group; with two blocks in flight 2 chains of 4 hide the latency
# and save the zeroing and tree adds of 4 chains of 2 (benchmarks/README.md, bbs_gemv.py, stop 29 bbs2blk)
DOT_CHAINS = 2
PAIR = 2  # int8 tables: blocks of pruned rows per work item, sharing each group's table loads
LINE = lut.LINE_BYTES  # codes of a sensitive row per update of its accumulator
assert (bbs.LANES, bbs.GROUP) == (lut.LANES, lut.GROUP)  # a stored column is one vector of plane words
assert max(ROWS, PAIR) * LANES * 4 < TVM_STACK_BYTES  # a work item's accumulators


def items_stream_ahead(first, b, words, per_item: int, block_words):
    """The word ``words`` on from the start of block ``first + b`` in the stream of the work items' blocks ``b``
    (items of ``per_item`` blocks of ``block_words`` each, item after item): past the block's end it goes on in block
    ``b`` of the next items. Integers or TIR expressions."""
    return (first + b + per_item * (words // block_words)) * block_words + words % block_words


def in_order(total, terms):
    """``total + terms[0] + terms[1] + ...``, added in that order (one multiply-add chain)."""
    for term in terms:
        total = total + term
    return total


def int8_fits(enc: Encoded) -> bool:
    """Whether the int8-table GEMV takes ``enc``: its pruned rows keep QUAD columns (``bbs.int8_tables_fit``)."""
    return bbs.int8_tables_fit(8 - int(enc.header["pruned_columns"]))


def check_tables(enc: Encoded, tables: str) -> None:
    if tables not in ("fp32", "int8"):  # what the kernel builds (lut_tables.chosen resolves "auto")
        raise ValueError(f"bbs: look-up tables must be fp32 or int8, got {tables!r}")
    if tables == "int8" and not int8_fits(enc):
        kept = 8 - int(enc.header["pruned_columns"])
        raise ValueError(f"bbs: int8 look-up tables take {QUAD} kept columns, not {kept}")


def int8_nibbles(columns: np.ndarray) -> np.ndarray:
    """The stored column words uint32 [PB, KG, 4, LANES] as the int8 tables' look-up indices, uint8 [PB * KG, 4, 64]
    (row ``pb * KG + g``): byte ``4 c + p`` of vector ``h`` is column ``p`` of channel ``c`` (column 0, the sign,
    inverted: the kept integer in offset binary), its low nibble that column's bits of weights ``4 h .. 4 h + 3``
    (table ``h``), its high nibble those of weights ``16 + 4 h ..`` (table ``h + 4``). A 128-bit lane is 4 channels'
    4 columns, all looked up in the same table; the same bytes as the words, moved."""
    words = columns ^ np.array([0xFFFFFFFF, 0, 0, 0], np.uint32)[:, None]  # [PB, KG, 4, LANES]
    h = np.arange(QUAD, dtype=np.uint32)[:, None, None]
    low, high = (words[:, :, None] >> 4 * h) & 15, (words[:, :, None] >> 16 + 4 * h) & 15  # [PB, KG, h, p, c]
    byte = (low | high << 4).astype(np.uint8).transpose(0, 1, 2, 4, 3)  # [PB, KG, h, c, p]
    return np.ascontiguousarray(byte.reshape(-1, QUAD, LANES * QUAD))


def int8_offset_binary(enc: Encoded, words):
    """``f(pb, g, lane, j)``: the kept integer of weight ``j`` (uint32) of group ``g`` of pruned row ``pb * 16 +
    lane`` in offset binary (uint32, ``kept + 8``), read from :func:`int8_nibbles`' bytes as uint32 words (a TE
    tensor [PB * KG, 4, LANES]: word ``c`` of vector ``h`` is channel ``c``'s 4 columns, a vector along the channels;
    column ``b``'s bit of the weight is bit ``8 b + 4 (j // 16) + j % 4`` of it, the sign column already inverted).
    The word's nibbles of the weight's half, masked to its 4 bits (bit ``j % 4`` of each byte), then one multiply
    gathers them into bits ``24 + j % 4 ..``: each bit lands on its own place, the others below 24 or past 32, so
    there are no carries. With ``j % 4`` a constant (the decode unrolled by 4) that is an and, a multiply and a shift,
    the word's shift by its half shared by 4 weights."""
    kg = -(-enc.shape[1] // bbs.GROUP)

    def offset_binary(pb, g, lane, j):
        half = words[pb * kg + g, (j % 16 // 4).astype("int32"), lane] >> (j // 16 * 4)
        bits = half & (tirx.const(0x01010101, "uint32") << j % 4)
        return (bits * tirx.const(0x08040201, "uint32")) >> (j % 4 + tirx.const(24, "uint32"))

    return offset_binary


def int8_error_bound(x: np.ndarray, enc: Encoded) -> np.ndarray:
    """The stated bound of the int8-table GEMV's error against the exact product, per output [m, n] in output
    channel order, for ``x`` [m, k] (float rounding aside).

    A table entry rounded to its group's step ``s_g`` is off by at most ``s_g / 2``; a pruned channel looks up
    each of the group's 8 tables once per column, the columns weighing 8 + 4 + 2 + 1, and the sum is scaled by
    ``2^shift`` (its group's, from the metadata byte) and the channel's scale: at most ``60 * s_g * 2^shift *
    |scale|`` per group. Sensitive channels are exact."""
    n, k = enc.shape
    count = int(enc.header["sensitive"])
    shift, _ = bbs.group_offsets(bbs.from_lanes(enc.arrays["meta"], n - count), int(enc.header["pruned_columns"]),
                                 str(enc.header["method"]))  # [P, KG]
    per_group = 8 * ((1 << QUAD) - 1) / 2 * np.ldexp(1.0, shift)  # [P, KG]
    stored = np.zeros((x.shape[0], n))
    stored[:, count:] = lut.int8_table_steps(x, k) @ per_group.T * np.abs(enc.arrays["scales"][count:])
    return stored[:, enc.arrays["position"]]


@per_layout
def gemv(enc: Encoded, tables: str = "fp32"):
    """``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])`` (constants as
    ``bbs_decoded.constants``: ``columns`` the stored words, or with int8 ``tables`` :func:`int8_nibbles` of them)."""
    check_tables(enc, tables)
    int8 = tables == "int8"
    n, k = enc.shape
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    zps = enc.header["method"] == "zps"
    bits = 8 - pruned_columns
    kg = -(-k // bbs.GROUP)
    kp = kg * bbs.GROUP
    blocks = -(-(n - count) // LANES)
    sensitive_blocks = -(-count // LANES)  # work items of 16 sensitive rows
    sensitive_rows = max(count, 1)
    column_blocks = max(blocks, 1)
    per_item = PAIR if int8 else 1  # blocks of pruned rows per work item
    items = sensitive_blocks + -(-blocks // per_item)
    column_words = column_blocks * kg * bits * LANES
    block_words = kg * bits * LANES  # a block of pruned rows' stored words
    ahead_words = lut.AHEAD_BYTES // 4
    quads_ahead = -(-lut.AHEAD_BYTES // (ROWS * kp))  # quads of sensitive rows between a read and its prefetch
    meta_bytes = column_blocks * kg * LANES
    fill_tables = (lut.fill_tables if int8 else lut.fill_wide_tables)(k, kp)
    table_shape = (kp // 4, 16) if int8 else (kg * lut.FIELDS, lut.WIDE)
    columns_shape, columns_dtype = ((column_blocks * kg, QUAD, LINE), "uint8") if int8 else (
        (column_blocks, kg, bits, LANES), "uint32")
    # offset = c (avg, unsigned) or -c (zps, c a 6-bit two's complement: sign-extended by shifting it to the top
    # and back; the minus is folded into group_sum)
    offset_sign = -1 if zps else 1
    offset_of = ((lambda code: T.shift_right(T.shift_left(code, T.Broadcast(26, LANES)), T.Broadcast(26, LANES)))
                 if zps else (lambda code: T.bitwise_and(code, T.Broadcast(63, LANES))))
    # lane z: 2^(pruned_columns - z) for z = code >> 6 <= min(MAX_FREE_COLUMNS, pruned_columns); a constant
    powers = T.Cast("float32x16", T.shift_right(T.Broadcast(1 << pruned_columns, LANES), T.min(
        tirx.Ramp(0, 1, LANES), T.Broadcast(bbs.MAX_FREE_COLUMNS, LANES))))
    significances = T.reinterpret("uint8x64", T.Broadcast(tirx.const(SIGNIFICANCES, "uint32"), LANES))

    def looked_up(small, table, indices):
        # 64 look-ups in int8 table ``table`` (16 bytes, broadcast to the 4 lanes) of index bytes' low nibbles
        entries = tirx.Shuffle([small[table, T.Ramp(0, 1, 16)]] * 4, [tirx.IntImm("int32", i) for i in range(LINE)])
        return tirx.call_llvm_pure_intrin("int8x64", lut.SHUFFLE, entries, T.reinterpret("int8x64", indices))

    def int8_dot(small, g, nibbles, pb):
        # the group's int32 look-up sums for 16 channels: per index vector h, tables h (low nibbles) and h + 4
        # (high), each vpdpbusd summing a channel's 4 columns with their significances, in DOT_CHAINS chains (the
        # sums are exact integers: any order gives the same)
        looked = []
        for h in range(QUAD):
            v = nibbles[pb * kg + g, h, T.Ramp(0, 1, LINE)]
            looked += [looked_up(small, g * lut.NIBBLES + h, v & T.Broadcast(T.uint8(15), LINE)),
                       looked_up(small, g * lut.NIBBLES + QUAD + h, v >> T.Broadcast(T.uint8(4), LINE))]
        sums = []
        for c in range(DOT_CHAINS):
            total = T.Broadcast(T.int32(0), LANES)
            for entries in looked[c::DOT_CHAINS]:
                total = tirx.call_llvm_pure_intrin("int32x16", lut.DOT, total, significances, entries)
            sums.append(total)
        return lut.tree(sums)

    def int8_mixed(dot, step, centre, g):
        # s_g * D - 8 * S_g: the group's look-up sums as the offset-binary codes' sums times x
        return T.Cast("float32x16", dot) * T.Broadcast(step[g], LANES) - T.Broadcast(centre[g], LANES)

    def shift_scale(meta, blk, g):
        # 2^shift, shift = pruned_columns - (code >> 6), from block blk's metadata bytes of group g
        code = T.Cast("int32x16", meta[blk, g, T.Ramp(0, 1, LANES)])
        return tirx.call_llvm_pure_intrin("float32x16", lut.PERMUTE, powers, T.shift_right(code, T.Broadcast(6, LANES)))

    def offset_value(meta, blk, g):
        return T.Cast("float32x16", offset_of(T.Cast("int32x16", meta[blk, g, T.Ramp(0, 1, LANES)])))

    def accumulated(total, mixed, scale, offset, group_sum, g):
        return total + mixed * scale + offset * T.Broadcast(group_sum[g], LANES)

    @T.macro
    def prefetch_group(column_stream, meta_stream, first, b, g):
        # the lines AHEAD_BYTES on from group g of block first + b in the stream of the items' blocks b, and the
        # metadata's that far on in theirs
        line: T.let = T.min(items_stream_ahead(first, b, g * bits * LANES + ahead_words, per_item, block_words),
                            column_words - bits * LANES)
        for c in T.unroll(bits):
            lut.prefetch(column_stream[line + c * LANES])
        if g % (lut.LINE_BYTES // LANES) == 0:  # a line of meta holds 4 groups
            lut.prefetch(meta_stream[T.min(items_stream_ahead(first, b, g * LANES + lut.AHEAD_BYTES, per_item,
                                                              kg * LANES), meta_bytes - 1)])

    def codes_times_x(sensitive, xpad, row, at):
        # 16 codes of sensitive row ``row`` (rows past count, when count = n, are clamped and not stored) times x
        return T.Cast("float32x16", sensitive[T.min(row, count - 1), T.Ramp(at, 1, LANES)]) * xpad[T.Ramp(at, 1, LANES)]

    @T.prim_func(private=True)
    def main(
        var_x: T.handle,
        scales: T.Buffer((n,), "float32"),
        position: T.Buffer((n,), "int32"),
        sensitive: T.Buffer((sensitive_rows, kp), "int8"),
        columns: T.Buffer(columns_shape, columns_dtype),
        meta: T.Buffer((column_blocks, kg, LANES), "uint8"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        xpad = T.decl_buffer((kp,), "float32")
        # the constants as the byte streams a thread reads (its items' blocks, and sensitive rows, are contiguous)
        column_stream = T.decl_buffer((column_words,), "uint32", data=columns.data)  # int8: the same bytes
        meta_stream = T.decl_buffer((meta_bytes,), "uint8", data=meta.data)
        sensitive_stream = T.decl_buffer((sensitive_rows * kp,), "int8", data=sensitive.data)
        table = T.decl_buffer(table_shape, "float32")
        group_sum = T.decl_buffer((kg,), "float32")
        if int8:
            small = T.decl_buffer((kg * lut.NIBBLES, 16), "int8")  # the int8 tables
            step = T.decl_buffer((kg,), "float32")
            centre = T.decl_buffer((kg,), "float32")  # 8 * S_g: the offset binary's share of the look-up sums
        stored = T.decl_buffer((n,), "float32")
        for row in range(m):
            fill_tables(x, row, xpad, table)
            if int8:
                for g in range(kg):
                    peak: T.let = lut.table_peak(table, g * lut.NIBBLES)
                    scale: T.let = lut.int8_scale(peak)
                    step[g] = peak / T.float32(lut.TABLE_PEAK)
                    for t in T.unroll(lut.NIBBLES):
                        small[g * lut.NIBBLES + t, T.Ramp(0, 1, 16)] = lut.int8_entries(table, g * lut.NIBBLES + t,
                                                                                        scale)
                    total: T.let = lut.nibbles_total(table, g * lut.NIBBLES)
                    group_sum[g] = T.float32(offset_sign) * total
                    centre[g] = T.float32(1 << (QUAD - 1)) * total
            else:
                for g in range(kg):
                    group_sum[g] = T.float32(offset_sign) * lut.group_total(table, g * lut.FIELDS)
            for item in T.parallel(items):  # one parallel region: one thread wake-up per call
                # sensitive items spread evenly over the range, so each thread's contiguous share gets its part:
                # item is sensitive when (item + 1) * S // items > item * S // items, tested through the remainder
                # (the quotient form trips a divide-by-zero in TVM's FlattenBuffer simplification)
                before: T.let = item * sensitive_blocks // items  # sensitive items before this one
                if item * sensitive_blocks % items + sensitive_blocks >= items:
                    for quad in range(LANES // ROWS):
                        first: T.let = before * LANES + quad * ROWS
                        if first < count:
                            acc = T.decl_buffer((ROWS, LANES), "float32")
                            for j in T.unroll(ROWS):
                                acc[j, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                            for line in range(kp // LINE):
                                for j in T.unroll(ROWS):  # rows past count (count = n) are clamped, not stored
                                    # a later quad's line at this offset
                                    lut.prefetch(sensitive_stream[T.min((first + quads_ahead * ROWS + j) * kp
                                                                        + line * LINE, sensitive_rows * kp - 1)])
                                    acc[j, T.Ramp(0, 1, LANES)] = in_order(acc[j, T.Ramp(0, 1, LANES)], [
                                        codes_times_x(sensitive, xpad, first + j, line * LINE + v * LANES)
                                        for v in range(LINE // LANES)])
                            for kv in range(kp // LINE * (LINE // LANES), kp // LANES):  # past the last whole line
                                for j in T.unroll(ROWS):
                                    acc[j, T.Ramp(0, 1, LANES)] = acc[j, T.Ramp(0, 1, LANES)] + (
                                        codes_times_x(sensitive, xpad, first + j, kv * LANES))
                            for j in range(ROWS):
                                if first + j < count:
                                    total: T.let = lut.tree([acc[j, lane] for lane in range(LANES)])
                                    stored[first + j] = total * scales[first + j]
                else:
                    first: T.let = (item - before) * per_item  # the item's first block of pruned rows
                    acc = T.decl_buffer((per_item, LANES), "float32")
                    for j in T.unroll(per_item):
                        acc[j, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                    for g in range(kg):
                        prefetch_group(column_stream, meta_stream, first, 0, g)  # each block's beside its own work
                        if int8:
                            # the item's blocks (past the last, copies of it, computed and not stored) share the
                            # group's table loads and scalars: the accumulators are registers, nothing stored between
                            for b in T.unroll(per_item):
                                block: T.let = T.min(first + b, column_blocks - 1)
                                if b > 0:
                                    prefetch_group(column_stream, meta_stream, first, b, g)
                                acc[b, T.Ramp(0, 1, LANES)] = accumulated(
                                    acc[b, T.Ramp(0, 1, LANES)], int8_mixed(int8_dot(small, g, columns, block), step,
                                                                            centre, g),
                                    shift_scale(meta, block, g), offset_value(meta, block, g), group_sum, g)
                        else:
                            mixed: T.let = lut.twos_complement_sum([
                                lut.column_sum(table, g * lut.FIELDS, T.reinterpret(
                                    "int32x16", columns[first, g, b, T.Ramp(0, 1, LANES)])) for b in range(bits)])
                            scale: T.let = shift_scale(meta, first, g)
                            offset: T.let = offset_value(meta, first, g)
                            acc[0, T.Ramp(0, 1, LANES)] = accumulated(acc[0, T.Ramp(0, 1, LANES)], mixed, scale,
                                                                      offset, group_sum, g)
                    for j in T.unroll(per_item):
                        for lane in range(LANES):
                            if count + (first + j) * LANES + lane < n:
                                stored[count + (first + j) * LANES + lane] = acc[j, lane] * scales[
                                    count + (first + j) * LANES + lane]
            for c in range(n):
                out[row, c] = stored[position[c]]

    return main

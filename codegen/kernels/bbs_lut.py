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
once per line of its row (LLVM keeps an accumulator in a register but still
stores it after every update: the prefetches in the loop keep it from sinking
the stores, and a store per 16 codes was slower; benchmarks/README.md,
``bbs_gemv.py``, stop 19).

One parallel region over work items (16 pruned channels, or 16 sensitive rows).
TVM hands each thread a contiguous share of the items, so the sensitive items
are spread evenly over the range. Each thread's pruned blocks, their metadata
and its sensitive rows are three contiguous streams, each prefetched into L2
about ``lut.AHEAD_BYTES`` ahead of its reads (the hardware prefetchers stop at
every 4 KiB page and alone keep too few lines in flight for weights read from
memory): the pruned blocks and metadata that far on in their streams, the
sensitive rows at the same offset of the quad of rows whole quads on, at least
that far (4 KiB on in the row reached the quad's own next row at K = 4096 and
left the next quad to demand misses).
Inside the parallel loop every value is ``T.let``-bound and the accumulators
live in one buffer allocated per call: TVM turns a buffer declared, or a name
assigned, inside a parallel loop into a workspace allocation per iteration. The output is unshuffled through ``position``.
Rows of activations are processed one after the other, so the kernel is exact
for any batch, but it is meant for batch 1 (larger batches use the decoded
kernel, :mod:`.bbs_decoded`). Needs AVX-512 (``vpermi2ps`` and ``vpermps`` on 16 lanes).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

from . import lut

LANES = bbs.LANES
ROWS = 4  # sensitive rows per pass over x: independent FMA chains
LINE = lut.LINE_BYTES  # codes of a sensitive row per update of its accumulator
assert (bbs.LANES, bbs.GROUP) == (lut.LANES, lut.GROUP)  # a stored column is one vector of plane words


def in_order(total, terms):
    """``total + terms[0] + terms[1] + ...``, added in that order (one multiply-add chain)."""
    for term in terms:
        total = total + term
    return total


def gemv(enc: Encoded):
    """``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])`` (constants as ``bbs_decoded.constants``)."""
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
    items = sensitive_blocks + blocks
    column_words = column_blocks * kg * bits * LANES
    ahead_words = lut.AHEAD_BYTES // 4
    quads_ahead = -(-lut.AHEAD_BYTES // (ROWS * kp))  # quads of sensitive rows between a read and its prefetch
    meta_bytes = column_blocks * kg * LANES
    fill_tables = lut.fill_wide_tables(k, kp)
    # offset = c (avg, unsigned) or -c (zps, c a 6-bit two's complement: sign-extended by shifting it to the top
    # and back; the minus is folded into group_sum)
    offset_sign = -1 if zps else 1
    offset_of = ((lambda code: T.shift_right(T.shift_left(code, T.Broadcast(26, LANES)), T.Broadcast(26, LANES)))
                 if zps else (lambda code: T.bitwise_and(code, T.Broadcast(63, LANES))))
    # lane z: 2^(pruned_columns - z) for z = code >> 6 <= min(MAX_FREE_COLUMNS, pruned_columns); a constant
    powers = T.Cast("float32x16", T.shift_right(T.Broadcast(1 << pruned_columns, LANES), T.min(
        tirx.Ramp(0, 1, LANES), T.Broadcast(bbs.MAX_FREE_COLUMNS, LANES))))

    def codes_times_x(sensitive, xpad, row, at):
        # 16 codes of sensitive row ``row`` (rows past count, when count = n, are clamped and not stored) times x
        return T.Cast("float32x16", sensitive[T.min(row, count - 1), T.Ramp(at, 1, LANES)]) * xpad[T.Ramp(at, 1, LANES)]

    @T.prim_func(private=True)
    def main(
        var_x: T.handle,
        scales: T.Buffer((n,), "float32"),
        position: T.Buffer((n,), "int32"),
        sensitive: T.Buffer((sensitive_rows, kp), "int8"),
        columns: T.Buffer((column_blocks, kg, bits, LANES), "uint32"),
        meta: T.Buffer((column_blocks, kg, LANES), "uint8"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        xpad = T.decl_buffer((kp,), "float32")
        # the constants as the byte streams a thread reads (its items' blocks, and sensitive rows, are contiguous)
        column_stream = T.decl_buffer((column_words,), "uint32", data=columns.data)
        meta_stream = T.decl_buffer((meta_bytes,), "uint8", data=meta.data)
        sensitive_stream = T.decl_buffer((sensitive_rows * kp,), "int8", data=sensitive.data)
        table = T.decl_buffer((kg * lut.FIELDS, lut.WIDE), "float32")
        group_sum = T.decl_buffer((kg,), "float32")
        stored = T.decl_buffer((n,), "float32")
        # per-item accumulators (ROWS for sensitive rows, 1 for a pruned block), allocated once per call
        acc = T.decl_buffer((items, ROWS, LANES), "float32")
        for row in range(m):
            fill_tables(x, row, xpad, table)
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
                            for j in T.unroll(ROWS):
                                acc[item, j, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                            for line in range(kp // LINE):
                                for j in T.unroll(ROWS):  # a later quad's line at this offset
                                    lut.prefetch(sensitive_stream[T.min((first + quads_ahead * ROWS + j) * kp
                                                                        + line * LINE, sensitive_rows * kp - 1)])
                                for j in T.unroll(ROWS):  # rows past count (count = n) are clamped, not stored
                                    acc[item, j, T.Ramp(0, 1, LANES)] = in_order(acc[item, j, T.Ramp(0, 1, LANES)], [
                                        codes_times_x(sensitive, xpad, first + j, line * LINE + v * LANES)
                                        for v in range(LINE // LANES)])
                            for kv in range(kp // LINE * (LINE // LANES), kp // LANES):  # past the last whole line
                                for j in T.unroll(ROWS):
                                    acc[item, j, T.Ramp(0, 1, LANES)] = acc[item, j, T.Ramp(0, 1, LANES)] + (
                                        codes_times_x(sensitive, xpad, first + j, kv * LANES))
                            for j in range(ROWS):
                                if first + j < count:
                                    total: T.let = lut.tree([acc[item, j, lane] for lane in range(LANES)])
                                    stored[first + j] = total * scales[first + j]
                else:
                    pb: T.let = item - before
                    acc[item, 0, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                    for g in range(kg):
                        at: T.let = pb * kg + g  # the group's place in this thread's streams
                        for b in T.unroll(bits):
                            lut.prefetch(column_stream[T.min((at * bits + b) * LANES + ahead_words, column_words - 1)])
                        if at % (lut.LINE_BYTES // LANES) == 0:  # a line of meta holds 4 groups
                            lut.prefetch(meta_stream[T.min(at * LANES + lut.AHEAD_BYTES, meta_bytes - 1)])
                        mixed: T.let = lut.twos_complement_sum([
                            lut.column_sum(table, g * lut.FIELDS, T.reinterpret(
                                "int32x16", columns[pb, g, b, T.Ramp(0, 1, LANES)])) for b in range(bits)])
                        code: T.let = T.Cast("int32x16", meta[pb, g, T.Ramp(0, 1, LANES)])
                        scale: T.let = tirx.call_llvm_pure_intrin(  # 2^shift, shift = pruned_columns - (code >> 6)
                            "float32x16", lut.PERMUTE, powers, T.shift_right(code, T.Broadcast(6, LANES)))
                        offset: T.let = T.Cast("float32x16", offset_of(code))
                        acc[item, 0, T.Ramp(0, 1, LANES)] = acc[item, 0, T.Ramp(0, 1, LANES)] + mixed * scale + (
                            offset * T.Broadcast(group_sum[g], LANES))
                    for lane in range(LANES):
                        if count + pb * LANES + lane < n:
                            stored[count + pb * LANES + lane] = acc[item, 0, lane] * scales[count + pb * LANES + lane]
            for c in range(n):
                out[row, c] = stored[position[c]]

    return main

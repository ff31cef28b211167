"""The batch-1 ``bbs`` kernel: look-up-table bit-serial GEMV over the stored bit columns (AVX-512).

For each group of 4 activations a 16-entry table holds every subset sum
(``table[t] = sum of x[4q + i] for the bits i set in t``), exact in float32 and
one 512-bit register. A pruned group's bit column for 16 channels is one 64-byte
vector of 32-bit words (the stored layout, :mod:`bie_compiler.codecs.bbs`):
word bits ``4q .. 4q + 3`` are the column's bits for activations ``4q .. 4q + 3``,
so ``vpermps`` with the word as the index vector looks up 16 channels' partial
sums at once (it reads only the low 4 bits of each lane; a right shift by 4
moves to the next nibble). Per group and column: 1 load, 7 shifts, 8 look-ups,
8 adds for 16 channels x 32 weights. Then per group

    dot += 2^shift * sum_b significance_b * colsum_b + offset * sum(x over the group)

with shift and offset from the group's metadata byte: the pruned columns cost
nothing but that one multiply-add (they are constant, so their contribution is
the offset times the group's activation sum). A look-up costs the same
whatever the column holds, so the bi-directional rule of the bit-serial
hardware (summing the zeros of a mostly-ones column) has nothing to save here:
``table[~t] = table[15] - table[t]`` is the same identity, applied for free.

Sensitive rows are INT8 dot products (16-lane FMAs). Both chunks run in
parallel over rows/blocks; the output is unshuffled through ``position``.
Rows of activations are processed one after the other, so the kernel is exact
for any batch, but it is meant for batch 1 (larger batches use the decoded
kernel, :mod:`.bbs_decoded`). Needs AVX-512 (``vpermps`` on 16 lanes).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

PERMUTE = "llvm.x86.avx512.permvar.sf.512"  # vpermps zmm: 16 float look-ups in a 16-entry register table
LANES = bbs.LANES
NIBBLES = bbs.GROUP // 4  # tables per group


def supported(target) -> bool:
    """Whether ``target``'s CPU has AVX-512F (the table look-up instruction)."""
    from tvm.target import codegen as llvm_codegen

    return bool(llvm_codegen.llvm_cpu_has_features("avx512f", target))


def _column_sum(table, first, words):
    """Sum of the 8 look-ups of one group's column word for 16 channels, added as a tree (short dependency chains)."""
    terms = [
        tirx.call_llvm_pure_intrin("float32x16", PERMUTE, table[first + q, tirx.Ramp(0, 1, 16)],
                                   words if q == 0 else tirx.shift_right(words, tirx.Broadcast(4 * q, LANES)))
        for q in range(NIBBLES)
    ]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] for i in range(0, len(terms), 2)]
    return terms[0]


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
    sensitive_blocks = -(-count // LANES)  # work items of 16 sensitive rows, about as long as a pruned block
    sensitive_rows = max(count, 1)
    column_blocks = max(blocks, 1)
    top = 1 << (bits - 1)  # column 0 (the sign) has significance -top, column b > 0 has 2^(bits - 1 - b)
    offset_sign, wrap = (-1, 64) if zps else (1, 0)  # zps: offset = -c, c a 6-bit two's complement; avg: c

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
        table = T.decl_buffer((kp // 4, 16), "float32")
        group_sum = T.decl_buffer((kg,), "float32")
        stored = T.decl_buffer((n,), "float32")
        for row in range(m):
            for kk in T.vectorized(kp):
                xpad[kk] = T.if_then_else(kk < k, x[row, kk], T.float32(0))
            for q in range(kp // 4):
                for t in T.vectorized(16):
                    table[q, t] = (
                        T.Select(t & 1 != 0, xpad[4 * q], T.float32(0))
                        + T.Select(t & 2 != 0, xpad[4 * q + 1], T.float32(0))
                        + (T.Select(t & 4 != 0, xpad[4 * q + 2], T.float32(0))
                           + T.Select(t & 8 != 0, xpad[4 * q + 3], T.float32(0)))
                    )
            for g in range(kg):
                group_sum[g] = T.float32(0)
                for q in range(NIBBLES):
                    group_sum[g] = group_sum[g] + table[g * NIBBLES + q, 15]
            for item in T.parallel(sensitive_blocks + blocks):  # one parallel region: one thread wake-up per call
                if item < sensitive_blocks:
                    for rr in range(LANES):
                        if item * LANES + rr < count:
                            r = item * LANES + rr
                            acc = T.decl_buffer((LANES,), "float32", scope="global")  # small: on the stack
                            acc[T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                            for kv in range(kp // LANES):
                                acc[T.Ramp(0, 1, LANES)] = acc[T.Ramp(0, 1, LANES)] + T.Cast(
                                    "float32x16", sensitive[r, T.Ramp(kv * LANES, 1, LANES)]
                                ) * xpad[T.Ramp(kv * LANES, 1, LANES)]
                            total = T.decl_buffer((1,), "float32", scope="global")  # small: on the stack
                            total[0] = T.float32(0)
                            for lane in range(LANES):
                                total[0] = total[0] + acc[lane]
                            stored[r] = total[0] * scales[r]
                else:
                    pb = item - sensitive_blocks
                    dot = T.decl_buffer((LANES,), "float32", scope="global")  # small: on the stack
                    colsum = T.decl_buffer((LANES,), "float32", scope="global")  # small: on the stack
                    dot[T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                    for g in range(kg):
                        mixed = T.decl_buffer((LANES,), "float32", scope="global")  # small: on the stack
                        mixed[T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                        for b in T.unroll(bits):
                            colsum[T.Ramp(0, 1, LANES)] = _column_sum(
                                table, g * NIBBLES, T.reinterpret("int32x16", columns[pb, g, b, T.Ramp(0, 1, LANES)]))
                            mixed[T.Ramp(0, 1, LANES)] = mixed[T.Ramp(0, 1, LANES)] + colsum[T.Ramp(0, 1, LANES)] * T.Broadcast(
                                T.Cast("float32", T.Select(b == 0, -top, T.shift_left(1, bits - 1 - b))), LANES)
                        code = T.Cast("int32x16", meta[pb, g, T.Ramp(0, 1, LANES)])
                        shift = T.Broadcast(pruned_columns, LANES) - T.shift_right(code, T.Broadcast(6, LANES))
                        c = T.bitwise_and(code, T.Broadcast(63, LANES))
                        offset = T.Broadcast(offset_sign, LANES) * (c - T.Select(
                            c >= T.Broadcast(32, LANES), T.Broadcast(wrap, LANES), T.Broadcast(0, LANES)))
                        dot[T.Ramp(0, 1, LANES)] = dot[T.Ramp(0, 1, LANES)] + mixed[T.Ramp(0, 1, LANES)] * T.Cast(
                            "float32x16", T.shift_left(T.Broadcast(1, LANES), shift)) + T.Cast(
                            "float32x16", offset) * T.Broadcast(group_sum[g], LANES)
                    for lane in range(LANES):
                        if count + pb * LANES + lane < n:
                            stored[count + pb * LANES + lane] = dot[lane] * scales[count + pb * LANES + lane]
            for c in range(n):
                out[row, c] = stored[position[c]]

    return main

"""What the look-up-table bit-serial GEMVs share (``bbs_lut``, ``bitplane_lut``; AVX-512).

A bit plane of 16 channels over one group of 32 activations is one 64-byte
vector of 32-bit words, bit ``j`` of a word the plane's bit for activation
``j``. The float32 GEMVs look each word up in fields of 5 bits: the group's
activations ``5q .. 5q + 4`` (q = 0..5) have a 32-entry table of every subset
sum (``table[t] = sum of x[5q + i] for the bits i set in t``), two 512-bit
registers, and ``vpermi2ps`` with the word as the index vector looks up 16
channels' partial sums at once (it reads only the low 5 bits of each lane; a
right shift by 5 moves to the next field, :func:`field_indices`); the last two
activations (bits 30 and 31) are a 4-entry table looked up with ``vpermps``.
Per group and plane: 1 load, 2 shifts, 4 multiply-highs, 7 look-ups and 6 adds
for 16 channels x 32 weights (a shift per field, 6, left the shift-and-shuffle
ports the bottleneck; fields of 4 bits took 7 shifts, 8 look-ups and 7 adds).
The stored words are the same either way: only the tables change.

The int8-table GEMVs (``bitplane_lut.int8_gemv``, ``bbs_lut.gemv``) quantize
tables of 4 activations (:func:`fill_tables`), 16 entries, which byte shuffles
look up, per group of GROUP activations (:func:`table_peak`, :func:`int8_entries`).
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

PERMUTE = "llvm.x86.avx512.permvar.sf.512"  # vpermps zmm: 16 float look-ups in a 16-entry register table
PERMUTE2 = "llvm.x86.avx512.vpermi2var.ps.512"  # vpermi2ps zmm: 16 float look-ups in a 32-entry table of 2 registers
MULTIPLY_HIGH = "llvm.x86.avx512.pmulhu.w.512"  # vpmulhuw zmm: the high 16 bits of 32 products of 16-bit lanes
SHUFFLE = "llvm.x86.avx512.pshuf.b.512"  # vpshufb zmm: 64 byte look-ups, a 16-entry table per 128-bit lane
DOT = "llvm.x86.avx512.vpdpbusd.512"  # vpdpbusd zmm: int32 lanes += 4 products of unsigned and signed bytes
AFFINE = "llvm.x86.vgf2p8affineqb.512"  # vgf2p8affineqb zmm: each byte times its qword's 8 x 8 bit matrix
MULTISHIFT = "llvm.x86.avx512.pmultishift.qb.512"  # vpmultishiftqb zmm: each byte 8 bits of its qword from any bit
PREFETCH = "llvm.prefetch.p0"  # (address, read = 0, locality 2 = into L2, data = 1)
# How far ahead of its reads a one-row kernel prefetches in a contiguous stream of weights: far enough to hide the
# memory latency at the kernels' read rates (1 KiB left the int8 GEMV waiting on memory; benchmarks/README.md)
AHEAD_BYTES = 4096
LINE_BYTES = 64
LANES = 16  # channels per vector of plane words
GROUP = 32  # activations per group: the bits of one plane word
NIBBLES = GROUP // 4  # tables of 4 activations per group (the int8 tables)
TABLE_PEAK = 127  # the int8 tables' largest magnitude
FIELD = 5  # activations per float32 table: the index bits vpermi2ps reads
FIELDS = -(-GROUP // FIELD)  # float32 tables per group: 6 of 5 activations, the last of GROUP % FIELD
WIDE = 1 << FIELD  # entries of a float32 table
HALF_FIELDS_BITS = 16 // FIELD * FIELD  # bits of the whole fields in a 16-bit half of a lane (15)


def has_features(target, *features: str) -> bool:
    """Whether LLVM's CPU of ``target`` has every one of ``features`` (its names: ``avx512vnni``, ``gfni``, ...)."""
    from tvm.target import codegen as llvm_codegen

    return all(llvm_codegen.llvm_cpu_has_features(f, target) for f in features)


def supported(target) -> bool:
    """Whether ``target``'s CPU has AVX-512F (the table look-up instruction)."""
    return has_features(target, "avx512f")


def bit_transpose_supported(target) -> bool:
    """Whether ``target``'s CPU has AVX-512 VBMI and GFNI (vpmultishiftqb, vgf2p8affineqb): the bit transposes of the
    panel GEMM's run decodes (the int8 tables' bytes, ``bitplane_lut.int8_run_weights``; stored bit columns,
    ``column_runs``)."""
    return target is not None and has_features(target, "avx512f", "avx512bw", "avx512vbmi", "gfni")


def int8_supported(target) -> bool:
    """Whether ``target``'s CPU has the int8 tables' byte shuffles and dot products (AVX-512 BW and VNNI): where it
    lacks them the GEMVs run the exact float32 tables (the stored bytes are the same)."""
    return has_features(target, "avx512f", "avx512bw", "avx512vnni")


def bit_transposed(vector):
    """``vector`` (64 bytes) with each qword's 8 x 8 bits transposed (vgf2p8affineqb with the vector as its
    matrices): byte ``j`` of a qword then holds bit ``j`` of each of its bytes, bit ``7 - b`` from byte ``b``."""
    ramp = tirx.Ramp(tirx.const(0, "int32"), tirx.const(1, "int32"), LANES * 4)
    identity = tirx.Cast("int8x64", tirx.Broadcast(tirx.const(1, "int32"), LANES * 4) << (ramp & 7))
    return tirx.call_llvm_pure_intrin("int8x64", AFFINE, identity, tirx.reinterpret("int8x64", vector),
                                      tirx.const(0, "int8"))


def lane_bits(transposed, even: int, odd: int):
    """int32x16: each lane's bits of its qword of ``transposed`` from bit ``even`` (even lanes) or ``odd`` (odd
    lanes) at its bottom (vpmultishiftqb), the bits above them those that follow in the qword: look-ups by the
    lane's low bits (vpermps) read the field alone."""
    control = tirx.reinterpret("int8x64", tirx.Broadcast(tirx.const(even | odd << 32, "int64"), LANES // 2))
    return tirx.reinterpret("int32x16", tirx.call_llvm_pure_intrin("int8x64", MULTISHIFT, control, transposed))


def tree(terms):
    """The sum of ``terms`` as a balanced tree (short dependency chains)."""
    return tree_of(lambda a, b: a + b, terms)


def tree_of(combine, terms):
    """``terms`` combined pairwise by ``combine`` as a balanced tree."""
    while len(terms) > 1:
        terms = [combine(terms[i], terms[i + 1]) if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def prefetch(load):
    """Fetch the cache line of ``load`` into L2 (the hardware prefetchers stop at every 4 KiB page)."""
    return T.evaluate(tirx.call_llvm_intrin("void", PREFETCH, tirx.address_of(load), tirx.const(0, "int32"),
                                            tirx.const(2, "int32"), tirx.const(1, "int32")))


def field_width(q: int) -> int:
    """Activations in table ``q`` of a group."""
    return min(FIELD, GROUP - FIELD * q)


def field_indices(words):
    """The FIELDS look-up indices of plane words (int32x16): field ``q`` in the low FIELD bits of each lane (the
    look-ups read no bits above). Fields 0-2 lie in the low 16 bits of the word, fields 3-5 in those of the word
    shifted right by 15 (the base); a field ``r`` bits into its base comes out of one ``vpmulhuw`` by ``2^(16 - r)``
    (a right shift by ``r`` within each 16-bit half, and the look-up reads the low half), which runs on another port
    than the shifts and the look-ups: 2 shifts and 4 multiply-highs per plane word instead of 6 shifts
    (benchmarks/README.md, ``bitplane_gemv.py``, stop 18)."""
    indices, base = [], words
    for q in range(FIELDS):
        start = FIELD * q
        if field_width(q) < FIELD:  # the top bits: the shift (arithmetic on int32) repeats bit 31 above them, and
            # the table's entries depend on their low field_width(q) bits only, so index t and t with those repeated
            # bits read the same sum
            indices.append(tirx.shift_right(words, tirx.Broadcast(start, LANES)))
            continue
        offset = start % HALF_FIELDS_BITS
        if offset == 0:
            base = words if start == 0 else tirx.shift_right(words, tirx.Broadcast(start, LANES))
            indices.append(base)
        else:
            indices.append(T.reinterpret("int32x16", tirx.call_llvm_pure_intrin(
                "int16x32", MULTIPLY_HIGH, T.reinterpret("int16x32", base),
                T.reinterpret("int16x32", tirx.Broadcast(tirx.const(1 << (16 - offset), "int32"), LANES)))))
    return indices


def column_sum(table, first, words):
    """Sum of the FIELDS look-ups of one group's plane words (int32x16) for 16 channels, added as a tree; ``first``:
    the group's first table (:func:`fill_wide_tables`)."""
    looked_up = []
    for q, index in enumerate(field_indices(words)):
        if field_width(q) == FIELD:
            looked_up.append(tirx.call_llvm_pure_intrin("float32x16", PERMUTE2, table[first + q, tirx.Ramp(0, 1, LANES)],
                                                        index, table[first + q, tirx.Ramp(LANES, 1, LANES)]))
        else:
            looked_up.append(tirx.call_llvm_pure_intrin("float32x16", PERMUTE, table[first + q, tirx.Ramp(0, 1, LANES)],
                                                        index))
    return tree(looked_up)


def twos_complement_sum(sums):
    """``sum_b significance_b * sums[b]`` over the sums of the planes of two's complement integers (plane 0, the
    sign, of significance ``-2^(P - 1)``, plane ``b`` > 0 of ``2^(P - 1 - b)``, P = ``len(sums)``) in Horner form: a
    multiply-add by 2 per plane after the first, which LLVM did not make of the products by each significance and
    their sum (benchmarks/README.md, ``bbs_gemv.py``, stop 19)."""
    if len(sums) == 1:
        return -sums[0]
    total = sums[0] * tirx.Broadcast(tirx.const(-2, "float32"), LANES) + sums[1]
    for plane in sums[2:]:
        total = total * tirx.Broadcast(tirx.const(2, "float32"), LANES) + plane
    return total


def group_total(table, first):
    """The sum of a group's activations from its tables (:func:`fill_wide_tables`): each table's last used entry."""
    return tree([table[first + q, (1 << field_width(q)) - 1] for q in range(FIELDS)])


def subset_sum(xpad, first, width, t):
    """Entry ``t`` of the table of activations ``first .. first + width - 1``: those of the bits set in ``t``, added
    as a tree."""
    return tree([T.Select(t & (1 << i) != 0, xpad[first + i], T.float32(0)) for i in range(width)])


def fill_wide_tables(k: int, kp: int):
    """A TIR macro ``(x, row, xpad, table)``: row ``row`` of ``x`` [m, k] zero-padded to ``kp`` (a multiple of GROUP)
    in ``xpad``, and the FIELDS subset-sum tables of each group in ``table`` [kp / GROUP * FIELDS, WIDE] (see the
    module docstring; the entries past a short table's are not read)."""

    @T.macro
    def fill(x, row, xpad, table):
        for kk in T.vectorized(kp):
            xpad[kk] = T.if_then_else(kk < k, x[row, kk], T.float32(0))
        for g in range(kp // GROUP):
            for q in T.unroll(FIELDS - 1):
                for t in T.vectorized(WIDE):
                    table[g * FIELDS + q, t] = subset_sum(xpad, g * GROUP + FIELD * q, FIELD, t)
            for t in T.vectorized(WIDE):
                table[g * FIELDS + FIELDS - 1, t] = subset_sum(xpad, g * GROUP + FIELD * (FIELDS - 1),
                                                               field_width(FIELDS - 1), t)

    return fill


def fill_tables(k: int, kp: int):
    """A TIR macro ``(x, row, xpad, table)``: row ``row`` of ``x`` [m, k] zero-padded to ``kp`` (a multiple of GROUP)
    in ``xpad``, and the ``kp / 4`` subset-sum tables of its nibbles in ``table`` [kp / 4, 16]."""

    @T.macro
    def fill(x, row, xpad, table):
        for kk in T.vectorized(kp):
            xpad[kk] = T.if_then_else(kk < k, x[row, kk], T.float32(0))
        for q in range(kp // 4):
            for t in T.vectorized(16):
                table[q, t] = subset_sum(xpad, 4 * q, 4, t)

    return fill


def lanes_max(v):
    """The largest of the 16 lanes of float32x16 ``v``: halves compared until one lane is left."""
    lanes = LANES
    while lanes > 1:
        lanes //= 2
        v = T.max(tirx.Shuffle([v], [tirx.IntImm("int32", i) for i in range(lanes)]),
                  tirx.Shuffle([v], [tirx.IntImm("int32", lanes + i) for i in range(lanes)]))
    return v


def table_peak(table, first):
    """The largest entry in magnitude of the NIBBLES tables of a group from row ``first`` of ``table``
    (:func:`fill_tables`; a table's sum of its positive or of its negative activations): the entries compared as
    vectors, then their lanes (a scalar loop over the activations took most of the time the tables take to make)."""
    return lanes_max(tree_of(T.max, [T.fabs(table[first + t, tirx.Ramp(0, 1, 16)]) for t in range(NIBBLES)]))


def int8_scale(peak):
    """What quantizes a group's tables of largest magnitude ``peak`` to int8 (:func:`int8_entries`): TABLE_PEAK over
    it, 0 for a group of zero activations."""
    return T.if_then_else(peak > T.float32(0), T.float32(TABLE_PEAK) / peak, T.float32(0))


def int8_entries(table, row, scale):
    """The 16 entries of ``table``'s row ``row`` times ``scale`` (:func:`int8_scale`), rounded to nearest: int8x16."""
    return T.Cast("int8x16", T.Cast("int32x16", T.nearbyint(table[row, tirx.Ramp(0, 1, 16)] * T.Broadcast(scale,
                                                                                                         16))))


def nibbles_total(table, first):
    """The sum of a group's activations from its NIBBLES tables from row ``first`` (:func:`fill_tables`): each
    table's last entry."""
    return tree([table[first + t, 15] for t in range(NIBBLES)])


def int8_table_steps(x: np.ndarray, k: int) -> np.ndarray:
    """The int8 tables' steps per group of GROUP activations of each row of ``x`` [m, k], float64 [m, KG]: the
    group's largest subset sum in magnitude (the sum of its positive or of its negative activations, in one table of
    4) over TABLE_PEAK."""
    kg = -(-k // GROUP)
    xpad = np.zeros((x.shape[0], kg * GROUP))
    xpad[:, :k] = x
    quads = xpad.reshape(x.shape[0], kg, NIBBLES, 4)
    peak = np.maximum(np.maximum(quads, 0).sum(-1), np.maximum(-quads, 0).sum(-1)).max(-1)
    return peak / TABLE_PEAK

"""What the look-up-table bit-serial GEMVs share (``bbs_lut``, ``bitplane_lut``; AVX-512).

Activations come in groups of 32 = 8 nibbles of 4. For each nibble a 16-entry
table holds every subset sum (``table[t] = sum of x[4q + i] for the bits i set
in t``), exact in float32 and one 512-bit register. A bit plane of 16 channels
over one group is one 64-byte vector of 32-bit words, word bits ``4q .. 4q + 3``
the plane's bits for activations ``4q .. 4q + 3``: ``vpermps`` with the word as
the index vector looks up 16 channels' partial sums at once (it reads only the
low 4 bits of each lane; a right shift by 4 moves to the next nibble). Per
group and plane: 1 load, 7 shifts, 8 look-ups and 7 adds for 16 channels x 32
weights; the group's 8 tables stay in registers across its planes.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

PERMUTE = "llvm.x86.avx512.permvar.sf.512"  # vpermps zmm: 16 float look-ups in a 16-entry register table
PREFETCH = "llvm.prefetch.p0"  # (address, read = 0, locality 2 = into L2, data = 1)
LANES = 16  # channels per vector of plane words
GROUP = 32  # activations per group: the bits of one plane word
NIBBLES = GROUP // 4  # tables per group


def supported(target) -> bool:
    """Whether ``target``'s CPU has AVX-512F (the table look-up instruction)."""
    from tvm.target import codegen as llvm_codegen

    return bool(llvm_codegen.llvm_cpu_has_features("avx512f", target))


def tree(terms):
    """The sum of ``terms`` as a balanced tree (short dependency chains)."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def prefetch(load):
    """Fetch the cache line of ``load`` into L2 (the hardware prefetchers stop at every 4 KiB page)."""
    return T.evaluate(tirx.call_llvm_intrin("void", PREFETCH, tirx.address_of(load), tirx.const(0, "int32"),
                                            tirx.const(2, "int32"), tirx.const(1, "int32")))


def column_sum(table, first, words):
    """Sum of the 8 look-ups of one group's plane words (int32x16) for 16 channels, added as a tree; ``first``: the
    group's first table."""
    return tree([
        tirx.call_llvm_pure_intrin("float32x16", PERMUTE, table[first + q, tirx.Ramp(0, 1, LANES)],
                                   words if q == 0 else tirx.shift_right(words, tirx.Broadcast(4 * q, LANES)))
        for q in range(NIBBLES)
    ])


def fill_tables(k: int, kp: int):
    """A TIR macro ``(x, row, xpad, table)``: row ``row`` of ``x`` [m, k] zero-padded to ``kp`` (a multiple of GROUP)
    in ``xpad``, and the ``kp / 4`` subset-sum tables of its nibbles in ``table`` [kp / 4, 16]."""

    @T.macro
    def fill(x, row, xpad, table):
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

    return fill

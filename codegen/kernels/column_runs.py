"""Stored bit columns decoded a run at a time: 16 channels' column words over a group of 32 weights into float32
vectors of the weights, by byte interleaves and a bit transpose (the panel GEMM's :class:`.panel_gemm.ByRuns` decode
of ``bbs``'s fp32-table layout, :mod:`.bbs_decoded`, of ``bitwave``, :mod:`.int8`, and of ``bie-bitplane``'s
fp32-table planes, :mod:`.bitplane_lut`).

The layout (:mod:`bie_compiler.codecs.bbs`; :func:`.bitplane_lut.twos_complement_planes`' planes are the same):
word ``(b, lane)`` of a run and group, uint32, is column ``b`` of channel ``lane``, its bit ``j`` the column's bit of
weight ``j``; the ``bits`` columns are a two's complement integer, column 0 its sign. Weight by weight that is a
shift, a mask and an add per column and vector of 16 weights (about 0.8 cycles a weight at 6 columns); here per run:

1. the sign column inverted as it is loaded (the kept integer in offset binary, ``u = kept + 2^(bits - 1)``), then
   three stages of two-vector byte shuffles (the interleaves of bytes, then of their pairs, then of their quads) put
   byte ``q`` of a channel's ``bits`` words in one qword, column ``b`` in byte ``b`` (the bytes past ``bits`` zero);
   the 16 channels' qwords of byte ``q`` fill two vectors (:data:`ORDER`);
2. vgf2p8affineqb transposes each qword's 8 x 8 bits (:func:`.lut.bit_transposed`): byte ``j`` of it then holds
   weight ``8 q + j``'s columns, column ``b`` at bit ``7 - b``: ``u * 2^(8 - bits)``;
3. per 4 weights one vshufps gathers the 16 channels' dwords of them (:func:`_dwords`), and per weight ``w`` of the
   dword a mask keeps its byte in place: the integer ``u * 2^(8 - bits + 8 w)``, converted to float exactly, and one
   multiply-add by ``step * 2^(bits - 8 - 8 w)`` and ``offset - step * 2^(bits - 1)`` (per lane, the caller's, from
   the group's metadata) is the weight. Every term is a small integer times a power of 2: exact, the reference
   decoder's value. With a step the same in every lane, no offset and up to :data:`LOOKUP_BITS` columns, a shift
   and a look-up a vector instead (:func:`_looked_up`).

About 22 shuffles, 8 transposes and 8 vshufps per run (16 x 32 weights at 6 columns), then a mask, a conversion, a
multiply-add and a store a vector of 16 weights (a two-vector byte permute per weight instead, vpermt2b, LLVM made
2 pshufb and a vpternlogq of: 5% slower, benchmarks/README.md, stop 26).
"""

from __future__ import annotations

from typing import Callable

from tvm import tirx

from bie_compiler.codecs import bbs

from . import lut, panel_gemm

LANES = bbs.LANES  # channels of a run: a vector of column words
BYTES = 4 * LANES  # bytes of a vector of column words
LANE_BYTES = 16  # the interleaves work within 128-bit lanes
LOOKUP_BITS = 4  # columns whose integers a vpermps looks up (16 entries): a step the same in every lane
# Before the interleaves a word vector's bytes are taken in the order byte q of channel m at 4 q + m of each 128-bit
# lane (channels 4 l .. 4 l + 3 in lane l): the three interleaves then bring a lane's positions 2 t, 2 t + 1 together
# in one vector, so each byte q of its 4 channels lands in two vectors, not four
ORDER = [LANE_BYTES * lane + 4 * (p % 4) + p // 4 for lane in range(BYTES // LANE_BYTES) for p in range(LANE_BYTES)]


def interleave(size: int, half: int) -> list[int]:
    """Indices into two vectors of ``size``-byte elements (the second's from ``BYTES / size``) of their interleave,
    the low (``half`` 0) or high 8 bytes of each 128-bit lane (vpunpckl/h): elements, not bytes, so that the
    decoder's TVMScript, parsed again for each fused GEMM kernel, holds fewer numbers (also the transpose of ``bbs``'s
    sensitive rows' words, :func:`.bbs_decoded.run_weights`)."""
    count, per_lane = BYTES // size, LANE_BYTES // size
    return [source * count + per_lane * lane + per_lane // 2 * half + i for lane in range(BYTES // LANE_BYTES)
            for i in range(per_lane // 2) for source in (0, 1)]


def shuffled(x, y, indices: list[int], size: int):
    """The ``size``-byte elements of ``x`` and ``y`` (vectors of them, or None for zeros) at ``indices``: None where
    both are zeros."""
    if x is None and y is None:
        return None
    zero = tirx.Broadcast(tirx.const(0, f"int{8 * size}"), BYTES // size)
    return tirx.Shuffle([zero if x is None else x, zero if y is None else y],
                        [tirx.IntImm("int32", i) for i in indices])


def _dwords(half: int) -> list[int]:
    """Indices into two uint32x16 vectors (the second's from LANES) of the transposed dwords ``half`` of channels ``4 l
    .. 4 l + 3`` in lane ``l``: channel ``4 l + 2 h + e`` is qword ``2 l + e`` of vector ``h`` (one vshufps)."""
    return [LANES * h + 4 * lane + 2 * e + half for lane in range(LANES // 4) for h in (0, 1) for e in (0, 1)]


def decoded(column: Callable, bits: int, step, offset=None, scale=None) -> list[panel_gemm.RunItem]:
    """The run's items (:data:`.panel_gemm.RunWeights`): weights ``0 .. 31`` of the run's group of 16 channels,
    ``column(b)`` its column ``b``'s words (uint32x16, ``b`` in ``0 .. bits - 1``), each ``kept * step + offset``
    (float32x16 per lane, or ``step`` a float, the same in every lane; no ``offset``: ``kept * step``), times
    ``scale`` where given (float32x16: a multiply of its own, so that a scale that is no power of 2 rounds once, as
    the reference decoder's product does)."""
    items = []

    def bound(name, value, dtype="int8x64"):
        items.append(panel_gemm.RunBinding(tirx.Var(name, dtype), value))
        return items[-1].var

    def offset_binary(b):  # the sign column inverted: the kept integer in offset binary, u = kept + 2^(bits - 1)
        words = column(b)
        return tirx.reinterpret("int8x64", words ^ tirx.Broadcast(tirx.const(0xFFFFFFFF, "uint32"), LANES)
                                if b == 0 else words)

    words = [bound(f"column_{b}", offset_binary(b)) for b in range(bits)] + [None] * (8 - bits)
    stage = [None if value is None else bound(f"bytes_{i}_{half}", tirx.reinterpret("int16x32", value), "int16x32")
             for i in range(4) for half in (0, 1)
             for value in [shuffled(words[2 * i], words[2 * i + 1],
                                     [at // BYTES * BYTES + ORDER[at % BYTES] for at in interleave(1, half)], 1)]]
    pairs = [None if value is None else bound(f"pairs_{i}_{a}_{half}", value, "int16x32") for i in range(2)
             for a in (0, 1) for half in (0, 1)
             for value in [shuffled(stage[4 * i + a], stage[4 * i + 2 + a], interleave(2, half), 2)]]
    pairs = [None if pair is None else tirx.reinterpret("int32x16", pair) for pair in pairs]
    # byte q = 2 a + b of the channels' words, transposed: its two vectors, then its weights 8 q + 4 d .. 8 q + 4 d + 3
    # of each channel as one dword (d = 0, 1), the channels in order
    transposed = [[bound(f"transposed_{2 * a + b}_{half}", tirx.reinterpret("uint32x16", lut.bit_transposed(
        shuffled(pairs[2 * a + b], pairs[4 + 2 * a + b], interleave(4, half), 4))), "uint32x16") for half in (0, 1)]
        for a in (0, 1) for b in (0, 1)]
    dwords = [[bound(f"weights_{q}_{d}", tirx.Shuffle(pair, [tirx.IntImm("int32", i) for i in _dwords(d)]),
                     "uint32x16") for d in (0, 1)] for q, pair in enumerate(transposed)]
    w = tirx.Var("w", "int32")  # byte w of each dword: u * 2^(8 - bits + 8 w)
    uniform = isinstance(step, float)
    if uniform and offset is None and bits <= LOOKUP_BITS:
        shared, value = _looked_up(bits, step, w, bound)
    else:
        step = tirx.Broadcast(tirx.const(step, "float32"), LANES) if uniform else step
        shared, value = _converted(bits, step, offset, w, bound)
    scale = None if scale is None else bound("scale", scale, "float32x16")
    stores = [panel_gemm.RunStore(8 * q + 4 * d + w, value(dwords[q][d]) if scale is None else value(dwords[q][d])
                                  * scale) for q in range(len(dwords)) for d in (0, 1)]
    return [*items, panel_gemm.RunLoop(w, 4, [*shared, *stores])]


def _converted(bits: int, step, offset, w: tirx.Var, bound):
    """The loop's bindings and the weight of a dword (byte ``w``): the byte masked in place, exact as a float, times
    ``step * 2^(bits - 8 - 8 w)`` plus the base (bound once a run by ``bound``)."""
    step = bound("step", step, "float32x16")
    zero = tirx.Broadcast(tirx.const(0, "float32"), LANES)
    base = bound("base", (zero if offset is None else offset) - step * tirx.Broadcast(
        tirx.const(2.0 ** (bits - 1), "float32"), LANES), "float32x16")
    unit = panel_gemm.RunBinding(tirx.Var("unit", "float32x16"), step * tirx.Broadcast(
        tirx.const(2.0 ** (bits - 8), "float32"), LANES) * tirx.reinterpret(  # 2^(-8 w): its exponent's bits
        "float32x16", tirx.Broadcast((tirx.const(127, "int32") - w * 8) << 23, LANES)))
    mask = panel_gemm.RunBinding(tirx.Var("mask", "uint32x16"), tirx.Broadcast(
        tirx.const(255, "uint32") << (w * 8).astype("uint32"), LANES))
    return [unit, mask], lambda dword: tirx.Cast("float32x16", dword & mask.var) * unit.var + base


def _looked_up(bits: int, step: float, w: tirx.Var, bound):
    """As :func:`_converted` for a ``step`` the same in every lane and no offset, at up to LOOKUP_BITS columns: the
    dword shifted right by ``8 w + 8 - bits`` has ``u`` in its low 4 bits (the next byte's low bits, above ``u``, are
    zero), looked up (vpermps) in a register of the 16 weights ``(u - 2^(bits - 1)) * step``: 2 operations a vector
    of weights, not 3."""
    ramp = tirx.Ramp(tirx.const(0, "int32"), tirx.const(1, "int32"), LANES)
    table = bound("table", tirx.Cast("float32x16", ramp - tirx.Broadcast(tirx.const(1 << (bits - 1), "int32"), LANES))
                  * tirx.Broadcast(tirx.const(step, "float32"), LANES), "float32x16")
    count = panel_gemm.RunBinding(tirx.Var("count", "uint32x16"), tirx.Broadcast(
        (w * 8 + 8 - bits).astype("uint32"), LANES))
    return [count], lambda dword: tirx.call_llvm_pure_intrin("float32x16", lut.PERMUTE, table, tirx.reinterpret(
        "int32x16", dword >> count.var))

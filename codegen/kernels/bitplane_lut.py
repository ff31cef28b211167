"""The batch-1 ``bie-bitplane`` kernel: look-up-table bit-serial GEMV (AVX-512), 1 to 8 planes.

Each weight's integer ``q`` (sign and magnitude planes, :func:`.bitplane.integer_codes`)
is rewritten at compile time as two's complement over the planes it needs: with
``P`` magnitude planes kept (the lowest of them at significance ``2^shift``),
``q = 2^shift * r``, ``r`` in ``P + 1`` bits, plane 0 its sign bit of
significance ``-2^P``, plane ``b`` of significance ``2^(P - b)``. Every plane is
laid out as the look-ups of :mod:`.lut` read it (16 channels' words of one
group of 32 activations in one vector), so a group costs ``P + 1`` vectors of
look-ups (a sign-and-magnitude plane pair would cost two per magnitude plane).
Then per group ``dot += sum_b significance_b * colsum_b`` (times the group's
scales with ``group_size``, a multiple of 32); per-channel scales multiply the
sum once. The tables are exact float32 subset sums, so the result is the
reference decoder's up to float rounding.

One parallel loop over blocks of 16 channels, each prefetching the next block's
words into L2 while it computes (as in :mod:`.bbs_lut`). Rows of activations are
processed one after the other (exact at any batch; meant for batch 1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from tvm import te, tirx
from tvm.script import tirx as T

from ..kernel_registry import KernelCall
from . import lut, panel_gemm

LANES, GROUP, NIBBLES = lut.LANES, lut.GROUP, lut.NIBBLES
FORM = "lut_planes"  # the progressive-precision form of the words (weights.PRECISION_ATTR)


def twos_complement_planes(codes: np.ndarray, magnitude_planes: int) -> np.ndarray:
    """``codes`` [N, K] (int, ``|q| < 2^magnitude_planes``) as uint32 [P + 1, ceil(N / 16) * ceil(K / 32), 16]:
    plane ``b`` (0: the sign) of block ``blk`` and group ``g`` at row ``blk * KG + g``, lane = channel in the block,
    bit ``j`` of a word = weight ``32 g + j``; padding weights are zero."""
    n, k = codes.shape
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    bits = magnitude_planes + 1
    padded = np.zeros((blocks * LANES, kg * GROUP), np.int64)
    padded[:n, :k] = codes
    unsigned = padded & ((1 << bits) - 1)
    weights = np.left_shift(np.uint64(1), np.arange(GROUP, dtype=np.uint64))
    planes = []
    for b in range(bits):
        bit = ((unsigned >> (bits - 1 - b)) & 1).astype(np.uint64).reshape(blocks, LANES, kg, GROUP)
        words = (bit * weights).sum(axis=-1).astype(np.uint32)  # [blocks, 16, kg]
        planes.append(words.transpose(0, 2, 1).reshape(blocks * kg, LANES))
    return np.ascontiguousarray(np.stack(planes))


def codes_of_planes(words: np.ndarray, magnitude_planes: int) -> np.ndarray:
    """The integers ``r`` of :func:`twos_complement_planes`' words, int64 [blocks * KG, 16, 32] (its inverse, in the
    words' own order)."""
    bits = np.unpackbits(words.view(np.uint8).reshape(*words.shape, 4), axis=-1, bitorder="little").astype(np.int64)
    significance = np.array([-(1 << magnitude_planes)] + [1 << (magnitude_planes - b)
                                                          for b in range(1, magnitude_planes + 1)], np.int64)
    return np.tensordot(significance, bits, axes=(0, 0))


def lanes_of_scales(scales: np.ndarray) -> np.ndarray:
    """Scales [N, G] as float32 [ceil(N / 16), G, 16]: one vector of 16 channels' scales per group (padding 0)."""
    n, groups = scales.shape
    blocks = -(-n // LANES)
    padded = np.zeros((blocks * LANES, groups), np.float32)
    padded[:n] = scales
    return np.ascontiguousarray(padded.reshape(blocks, LANES, groups).transpose(0, 2, 1))


class Layout(NamedTuple):
    """What the kernels are built for: the weight [n, k], ``magnitude_planes`` (the words hold one more, the sign),
    the significance ``2^shift`` of the lowest, and ``groups`` scales per channel of ``scale_group`` weights along K
    (a multiple of GROUP, or the whole padded row when ``groups`` is 1)."""

    n: int
    k: int
    magnitude_planes: int
    shift: int
    scale_group: int
    groups: int


def kernel_call(layout: Layout, constants: list, kind: str) -> KernelCall:
    """The GEMV for one row over ``constants`` (words and scales, as :func:`twos_complement_planes` and
    :func:`lanes_of_scales` lay them out) and, above one row, the panel GEMM over the same words."""
    words, scales = holders = [te.placeholder(c.shape, c.dtype.name, name)
                               for name, c in zip(("words", "scales"), constants)]
    small = KernelCall(f"{kind}_lut", gemv(**layout._asdict()), constants)
    return panel_gemm.with_gemm(small, panel_gemm_of(layout, words, scales), kind)


def panel_gemm_of(layout: Layout, words: te.Tensor, scales: te.Tensor):
    """The panel GEMM over the words: per-channel scales applied to the sums, grouped ones in the decode."""
    if layout.groups == 1:
        value = panel_gemm.by_channel(decoded_value(words, **layout._asdict()), layout.n, LANES)
        return panel_gemm.gemm(value, [words, scales], layout.n, layout.k,
                               scale=lambda c: scales[c // LANES, 0, c % LANES], group=GROUP)
    weight = panel_gemm.by_channel(decoded_weight(words, scales, **layout._asdict()), layout.n, LANES)
    return panel_gemm.gemm(weight, [words, scales], layout.n, layout.k, group=GROUP)


def gemv(n: int, k: int, magnitude_planes: int, shift: int, scale_group: int, groups: int):
    """``f(x [m, K], words, scales, out [m, N])`` over :func:`twos_complement_planes` and :func:`lanes_of_scales`
    (see :class:`Layout`)."""
    planes = magnitude_planes + 1
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    kp = kg * GROUP
    significance = [-(1 << magnitude_planes) << shift] + [(1 << (magnitude_planes - b)) << shift
                                                          for b in range(1, planes)]
    per_group = groups > 1
    assert not per_group or scale_group % GROUP == 0
    fill_tables = lut.fill_tables(k, kp)

    @T.prim_func(private=True)
    def main(
        var_x: T.handle,
        words: T.Buffer((planes, blocks * kg, LANES), "uint32"),
        scales: T.Buffer((blocks, groups, LANES), "float32"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        xpad = T.decl_buffer((kp,), "float32")
        table = T.decl_buffer((kp // 4, 16), "float32")
        acc = T.decl_buffer((blocks, LANES), "float32")  # allocated once per call, not per parallel iteration
        for row in range(m):
            fill_tables(x, row, xpad, table)
            for blk in T.parallel(blocks):
                acc[blk, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
                for g in range(kg):
                    nxt: T.let = T.min(blk + 1, blocks - 1) * kg + g  # the next block's group (the next item)
                    for b in T.unroll(planes):
                        lut.prefetch(words[b, nxt, 0])
                    mixed: T.let = lut.tree([
                        lut.column_sum(table, g * NIBBLES, T.reinterpret(
                            "int32x16", words[b, blk * kg + g, T.Ramp(0, 1, LANES)])) * T.Broadcast(
                            T.float32(significance[b]), LANES)
                        for b in range(planes)])
                    if per_group:
                        acc[blk, T.Ramp(0, 1, LANES)] = acc[blk, T.Ramp(0, 1, LANES)] + mixed * scales[
                            blk, g * GROUP // scale_group, T.Ramp(0, 1, LANES)]
                    else:
                        acc[blk, T.Ramp(0, 1, LANES)] = acc[blk, T.Ramp(0, 1, LANES)] + mixed
                for lane in range(LANES):
                    if blk * LANES + lane < n:
                        if per_group:
                            out[row, blk * LANES + lane] = acc[blk, lane]
                        else:
                            out[row, blk * LANES + lane] = acc[blk, lane] * scales[blk, 0, lane]

    return main


def decoded_value(words, *, n: int, k: int, magnitude_planes: int, shift: int, **_):
    """``f(n, kk)``: the integer the words (a TE tensor) hold for weight ``kk`` of channel ``n``, before its scale."""
    kg = -(-k // GROUP)
    significance = [-(1 << magnitude_planes) << shift] + [(1 << (magnitude_planes - b)) << shift
                                                          for b in range(1, magnitude_planes + 1)]

    def value(n, kk):
        row, lane = n // LANES * kg + kk // GROUP, n % LANES
        bit = tirx.const(1, "uint32") << (kk % GROUP).astype("uint32")
        zero = tirx.const(0, "int32")
        # each plane's bit selects its significance: a mask test and a blend per vector of words, fewer vector
        # operations than shifting the bit down and multiplying (the panel GEMM at 8 rows: 15 % faster)
        return lut.tree([tirx.Select(words[b, row, lane] & bit != tirx.const(0, "uint32"), tirx.const(s, "int32"),
                                     zero) for b, s in enumerate(significance)])

    return value


def decoded_weight(words, scales, *, n: int, k: int, magnitude_planes: int, shift: int, scale_group: int,
                   groups: int):
    """``f(n, kk)``: the float32 weight the words and scales (TE tensors) hold."""
    value = decoded_value(words, n=n, k=k, magnitude_planes=magnitude_planes, shift=shift)
    return lambda n, kk: value(n, kk).astype("float32") * scales[n // LANES, kk // scale_group if groups > 1 else 0,
                                                                 n % LANES]

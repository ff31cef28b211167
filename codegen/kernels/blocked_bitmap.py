"""``bie-blocked`` matmuls decoded at load into ``bie-binary``'s bitmap (``--blocked-execution load``).

The artefact keeps the blocked encoding (indptr, per-block counts, one entry a non-zero); when it is loaded, a
PrimFunc (``KernelCall.at_load``) writes from it, once, the constants of the bit-plane kernels of the equivalent
``bie-binary`` bitmap encoding, and every call runs those kernels (:func:`.bitplane.llvm_call` with its exact fp32
look-up tables, as ``bie-binary`` does): on a CPU with AVX-512 the look-up-table GEMV's two's complement words
(:func:`.bitplane_lut.twos_complement_planes` of the codes ``q`` in {-1, 0, 1}: plane 0 the sign bit, set where
``q = -1``; plane 1 set where ``q != 0``) and its lanes of scales (:func:`.bitplane_lut.lanes_of_scales`), else
the K-interleaved planes and signs of :func:`bie_compiler.codecs.base.pack_bits`. The ternary weights are those of
the blocked encoding exactly, so every batch computes what ``bie-binary``'s kernels compute from the same weights.

Each channel's entries are walked in order and OR-ed into its words; channels (blocks of 16 for the words) in
parallel. The walk clamps its reads to the entries and drops positions past K, so a malformed encoding writes
nothing out of bounds.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, bie_binary
from bie_compiler.codecs.base import packed_width

from ..kernel_registry import AtLoad, KernelCall
from . import bitplane, bitplane_lut, lut

LANES, GROUP = bitplane_lut.LANES, bitplane_lut.GROUP
SIGN, NONZERO = 0, 1  # the words' planes: the two's complement sign bit (q = -1), the magnitude bit (q != 0)


def each_weight(*, k: int, nnz: int, block_size: int, entry_dtype: str, blocks: int, mark):
    """A TIR macro ``(indptr, counts, entries, channel, out, place)`` calling ``mark(out, place, position, negative)``
    for each non-zero weight of ``channel``, in the entries' order."""
    sign_bit = block_size.bit_length() - 1

    @T.macro
    def walk(indptr, counts, entries, channel, out, place):
        cursor = T.decl_buffer((1,), "int64", scope="global")  # a reassigned local becomes a workspace (sparse_index)
        cursor[0] = T.Cast("int64", indptr[channel])
        for blk in range(blocks):
            first: T.let = cursor[0]
            count: T.let = T.Cast("int64", counts[channel, blk])
            for e in range(count):
                entry: T.let = entries[T.min(first + e, nnz - 1)]
                position: T.let = blk * block_size + T.Cast("int64", entry & T.Cast(entry_dtype, block_size - 1))
                if position < k:
                    mark(out, place, position, (entry >> T.Cast(entry_dtype, sign_bit)) != T.Cast(entry_dtype, 0))
            cursor[0] = first + count

    return walk


def lut_words(*, n: int, k: int, nnz: int, block_size: int, entry_dtype: str, count_dtype: str):
    """``f(indptr, counts, entries, scales, words, lane_scales)``: the words [2, blocks * KG, 16] (uint32) and scales
    [blocks, 1, 16] of the look-up-table kernels (:func:`.bitplane_lut.kernel_call`), padding zero.

    A channel's bits of one group of 32 weights are gathered in two accumulators and OR-ed into its words when the
    entries move on to another group (an OR into memory per entry would chain each entry on the last one's store)."""
    blocks, lane_blocks, kg = -(-k // block_size), -(-n // LANES), -(-k // GROUP)

    @T.macro
    def flush(words, place, group, bits):
        row: T.let = place[0] * kg + group[0]
        words[NONZERO, row, place[1]] = words[NONZERO, row, place[1]] | bits[NONZERO]
        words[SIGN, row, place[1]] = words[SIGN, row, place[1]] | bits[SIGN]

    @T.macro
    def set_bit(out, place, position, negative):
        words, group, bits = out
        if position // GROUP != group[0]:
            flush(words, place, group, bits)
            group[0] = position // GROUP
            bits[NONZERO] = T.uint32(0)
            bits[SIGN] = T.uint32(0)
        bit: T.let = T.shift_left(T.uint32(1), T.Cast("uint32", position % GROUP))
        bits[NONZERO] = bits[NONZERO] | bit
        bits[SIGN] = bits[SIGN] | T.if_then_else(negative, bit, T.uint32(0))

    walk = each_weight(k=k, nnz=nnz, block_size=block_size, entry_dtype=entry_dtype, blocks=blocks, mark=set_bit)

    @T.prim_func(private=True)
    def kernel(
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        words: T.Buffer((2, lane_blocks * kg, LANES), "uint32"),
        lane_scales: T.Buffer((lane_blocks, 1, LANES), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for lb in T.parallel(lane_blocks):
            for g in range(kg):
                for p in range(2):
                    for c in T.vectorized(LANES):
                        words[p, lb * kg + g, c] = T.uint32(0)
            for c in range(LANES):
                lane_scales[lb, 0, c] = T.if_then_else(lb * LANES + c < n, scales[T.min(lb * LANES + c, n - 1)],
                                                       T.float32(0))
            for c in range(T.min(LANES, n - lb * LANES)):
                group = T.decl_buffer((1,), "int64", scope="global")  # the group the bits are of
                bits = T.decl_buffer((2,), "uint32", scope="global")
                group[0] = T.int64(0)
                bits[NONZERO] = T.uint32(0)
                bits[SIGN] = T.uint32(0)
                walk(indptr, counts, entries, lb * LANES + c, (words, group, bits), (lb, c))
                flush(words, (lb, c), group, bits)

    return kernel


def packed_planes(*, n: int, k: int, nnz: int, block_size: int, entry_dtype: str, count_dtype: str):
    """``f(indptr, counts, entries, scales, planes, signs, channel_scales)``: ``pack_bits`` of the non-zero mask
    (planes [1, N, KB]) and of the negative one (signs [N, KB]), weight ``kk`` in bit ``kk // KB`` of byte
    ``kk % KB``; the scales [N, 1]: the bit-serial kernels' constants (:class:`.bitplane.BitPlanes`)."""
    blocks, kb = -(-k // block_size), packed_width(k)

    @T.macro
    def set_bit(out, place, position, negative):
        planes, signs = out
        byte: T.let = position % kb
        bit: T.let = T.shift_left(T.uint8(1), T.Cast("uint8", position // kb))
        planes[0, place, byte] = planes[0, place, byte] | bit
        if negative:
            signs[place, byte] = signs[place, byte] | bit

    walk = each_weight(k=k, nnz=nnz, block_size=block_size, entry_dtype=entry_dtype, blocks=blocks, mark=set_bit)

    @T.prim_func(private=True)
    def kernel(
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        planes: T.Buffer((1, n, kb), "uint8"),
        signs: T.Buffer((n, kb), "uint8"),
        channel_scales: T.Buffer((n, 1), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for c in T.parallel(n):
            for w in range(kb):
                planes[0, c, w] = T.uint8(0)
                signs[c, w] = T.uint8(0)
            channel_scales[c, 0] = scales[c]
            walk(indptr, counts, entries, c, (planes, signs), c)

    return kernel


def at_load_call(enc: Encoded, layout: dict, stored: list[np.ndarray]) -> KernelCall:
    """``bie-binary``'s bitmap kernels for a matmul (fp32 tables), their constants written at load from ``stored``
    (the blocked encoding's indptr, counts, entries, scales; ``layout``: :func:`.sparse_index.blocked_layout`'s)."""
    n, k = enc.shape
    kb = packed_width(k)
    # bie-binary's bitmap encoding of the same shape and scales, its planes zero: the kernels' constants are
    # derived from it as bie-binary derives them (their values are written at load)
    bitmap = Encoded(bie_binary.NAME, (n, k), {"planes": np.zeros((1, n, kb), np.uint8),
                                               "signs": np.zeros((n, kb), np.uint8),
                                               "scales": enc.arrays["scales"][:, None]}, {"layout": "bitmap"})
    if lut.supported(tvm.target.Target.current()):  # where bitplane.llvm_call takes the look-up-table GEMV
        call, writer = bitplane.lut_kernels(bitmap), lut_words
    else:
        call, writer = bitplane.llvm_call(bitmap, None, lut_tables="fp32"), packed_planes
    call.at_load = AtLoad(writer(**layout), stored)
    return call

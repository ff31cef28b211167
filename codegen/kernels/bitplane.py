"""Matmuls over K-interleaved bit planes (``bie-bitplane``, ``bie-binary`` bitmap).

``compute`` is bit-serial, for one row of activations: ``out[m, n] = sum_b
2^(top - b) * sum_k sx[m, n, k] * plane_b[n, k]`` with ``sx = +-x[m, k] *
scale[n, k // group]``, the sign taken from the sign plane. Plane by plane, it
adds the (signed, scaled) activations selected by that plane's bits: the work
and the bytes read scale with the planes kept.

``decoded_weight`` is the decoded weight element by element, for the decode
kernels of several rows and of convs (:mod:`.decode`): there the bit-serial
work would be repeated per row, decoding once and a dense GEMM is cheaper.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from bie_compiler.codecs.base import PACK_LANES

from . import warp_layout

BLOCK = "bitplane"


def _padded(x: te.Tensor, k: int, kb: int) -> te.Tensor:
    """A copy of x padded to the planes' length, so inner loops need no bounds test."""
    zero = tirx.const(0, "float32")
    return te.compute((x.shape[0], 8 * kb), lambda m, kk: te.if_then_else(kk < k, x[m, kk], zero), name="xpad")


def compute(x: te.Tensor, planes: te.Tensor, signs: te.Tensor, scales: te.Tensor, *, k: int, top_bit: int, group: int):
    """TE definition. x [M, K] float32; planes uint8 [P, N, KB]; signs uint8 [N, KB]; scales float32 [N, G]."""
    m_dim = x.shape[0]
    num_planes, n_dim, kb = (int(d) for d in planes.shape)
    zero = tirx.const(0, "float32")
    xpad = _padded(x, k, kb)
    rb = te.reduce_axis((0, num_planes), "rb")
    rj = te.reduce_axis((0, 8), "rj")
    rw = te.reduce_axis((0, kb), "rw")
    no_bits = tirx.const(0, "uint8")

    def body(m, n):
        kk = rj * kb + rw  # pack_bits: weight kk is bit rj of byte rw
        mask = tirx.const(1, "uint8") << rj.astype("uint8")
        scaled = xpad[m, kk] * scales[n, kk // group]
        signed = tirx.Select((signs[n, rw] & mask) != no_bits, -scaled, scaled)
        significance = (tirx.const(1, "int32") << (top_bit - rb)).astype("float32")
        selected = (planes[rb, n, rw] & mask) != no_bits
        return te.sum(tirx.Select(selected, signed * significance, zero), axis=[rb, rj, rw])

    return te.compute((m_dim, n_dim), body, name=BLOCK)


def schedule_llvm(sch: s_tir.Schedule) -> None:
    """Parallel over output channels, a 16-lane vector accumulator per channel, planes unrolled.

    The reduction over bytes is split into 16-lane vectors and rfactor-ed, so
    each lane accumulates its own partial sum and the lanes are summed once.
    """
    block = sch.get_sblock(BLOCK)
    m, n, rb, rj, rw = sch.get_loops(block)
    rw_outer, rw_lane = sch.split(rw, [None, PACK_LANES])
    sch.reorder(n, m, rj, rw_outer, rb, rw_lane)
    partial = sch.rfactor(rw_lane, factor_axis=0)
    n, m, rj, rw_outer, rb, lane = sch.get_loops(partial)
    sch.vectorize(lane)
    sch.unroll(rb)
    sch.parallel(n)
    sch.reverse_compute_at(block, m)
    sch.decompose_reduction(partial, rj)
    _vectorize_padding(sch)


def _vectorize_padding(sch: s_tir.Schedule) -> None:
    _, kk = sch.get_loops(sch.get_sblock("xpad"))
    sch.vectorize(sch.split(kk, [None, PACK_LANES])[1])


def decoded_weight(planes: te.Tensor, signs: te.Tensor, scales: te.Tensor, *, top_bit: int, group: int):
    """``f(n, kk)``: weight ``kk`` of channel ``n`` (the decode kernels' element, :mod:`.decode`)."""
    kb = int(planes.shape[2])
    zero = tirx.const(0, "float32")
    no_bits = tirx.const(0, "uint8")

    def weight(n, kk):
        rw = kk % kb  # pack_bits: weight kk is bit kk // kb of byte kk % kb
        mask = tirx.const(1, "uint8") << (kk // kb).astype("uint8")
        magnitude = sum(
            tirx.Select((planes[b, n, rw] & mask) != no_bits, tirx.const(float(1 << (top_bit - b)), "float32"), zero)
            for b in range(int(planes.shape[0]))
        )
        scaled = magnitude * scales[n, kk // group]
        return tirx.Select((signs[n, rw] & mask) != no_bits, -scaled, scaled)

    return weight


def schedule_cuda(sch: s_tir.Schedule) -> None:
    """One warp per channel (see ``warp_layout``); lanes over the plane bytes, a warp-shuffle sum at the end.

    Each lane holds one byte of every plane (eight bit columns) and of the
    sign plane at a time and walks its eight bits and the planes unrolled; the
    reduction loop bound to the lanes becomes TVM's cross-thread (warp
    shuffle) reduction. The padding of ``x`` is inlined as a bounds test.
    """
    sch.compute_inline(sch.get_sblock("xpad"))
    block = sch.get_sblock(BLOCK)
    m, n, rb, rj, rw = sch.get_loops(block)
    n_group, n_warp = sch.split(n, [None, warp_layout.CHANNELS_PER_BLOCK])
    rw_step, lane = sch.split(rw, [None, warp_layout.WARP_SIZE])
    sch.reorder(m, n_group, n_warp, lane, rw_step, rj, rb)
    sch.bind(m, warp_layout.ROWS)
    sch.bind(n_group, warp_layout.CHANNEL_GROUPS)
    sch.bind(n_warp, warp_layout.CHANNEL)
    sch.bind(lane, warp_layout.LANE)
    sch.unroll(rj)
    sch.unroll(rb)

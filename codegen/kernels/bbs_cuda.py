"""``bbs`` kernels on the GPU: every weight decoded in registers from its bit columns, as it is multiplied.

The decoding is :func:`bbs_decoded.stored_weight`, the same TE expression as
the CPU kernels; only the schedules differ.

* :func:`matmul`: ``out[m, c] = sum_k x[m, k] * w[position[c], k]``, written in
  output-channel order (the unshuffle is the row index ``position[c]``), for
  any batch. The grid of ``warp_layout``: a warp per output channel, lane
  ``j`` takes weight ``j`` of every group of 32 along K (K is padded to whole
  groups; the padding reads x as zero), so a step of the warp reads one bit
  column word per kept column and one metadata byte (the same address for
  all lanes: a broadcast) and each lane extracts its own bit. The lanes'
  partial sums meet in a warp-shuffle reduction.
* :func:`conv2d`: a direct convolution, one thread per output element; the
  pad stage and the weight decode are inlined into its reduction, so no
  decoded weight is written anywhere.

``gpu=False`` applies the same loop splits with the loops left serial (no
thread bindings): a CPU build of the same computation, for tests on machines
without a GPU.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from bie_compiler.codecs.base import Encoded

from . import bbs_decoded, warp_layout

BLOCK = "bbs"
CONV_THREADS = 128  # threads per block of the conv: one output element each


def matmul(enc: Encoded, gpu: bool = True) -> tirx.PrimFunc:
    """``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])``, scheduled for the GPU (or serial)."""
    n, k = enc.shape
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    scales, position, sensitive, columns, meta = holders = bbs_decoded.placeholders(enc)
    weight = bbs_decoded.stored_weight(enc, scales, sensitive, columns, meta)
    rk = te.reduce_axis((0, bbs_decoded.padded_k(enc)), "rk")
    zero = tirx.const(0, "float32")
    out = te.compute(
        (x.shape[0], n),
        lambda m, c: te.sum(te.if_then_else(rk < k, x[m, rk], zero) * weight(position[c], rk), axis=rk),
        name=BLOCK,
    )
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    m, c, rk = sch.get_loops(sch.get_sblock(BLOCK))
    c_group, c_warp = sch.split(c, [None, warp_layout.CHANNELS_PER_BLOCK])
    group, lane = sch.split(rk, [None, warp_layout.WARP_SIZE])  # bbs.GROUP = 32: a lane is a weight of each group
    sch.reorder(m, c_group, c_warp, lane, group)
    if gpu:
        sch.bind(m, warp_layout.ROWS)
        sch.bind(c_group, warp_layout.CHANNEL_GROUPS)
        sch.bind(c_warp, warp_layout.CHANNEL)
        sch.bind(lane, warp_layout.LANE)
    return sch.mod["main"]


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

"""``bbs`` kernels that decode a channel's weights from the stored bit columns, then multiply (any batch, and conv).

The decode stage is the format of :mod:`bie_compiler.codecs.bbs` written in TE:
a stored row below ``S`` is a sensitive INT8 row; a pruned row's weight ``j`` of
group ``g`` is ``kept * 2^shift + offset``, ``kept`` the two's complement number
of its ``8 - N`` column bits and (shift, offset) from the group's metadata byte.
Times the row's scale, that is the reference decoder's value.

* :func:`matmul`: ``out[m, n] = sum_k x[m, k] * w[position[n], k]``: each stored
  row decoded once into a row buffer (vectorized), then 16-lane FMAs per row of
  activations, stored rows in parallel; then the output unshuffle.
* :func:`conv2d`: the first step for BBS convolutions: the whole OIHW weight
  decoded (in parallel over output channels) inside the same PrimFunc as
  ``topi.nn.conv2d_nchw``, which reads the activation, so constant folding
  cannot turn the weight back into a dense constant (the GPU's direct conv,
  :mod:`.bbs_cuda`, shares its compute, :func:`conv2d_compute`).
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx, topi

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

from . import decode_once

CONV_BLOCK = "conv2d_nchw"  # topi's name for the conv block


def constants(enc: Encoded) -> list[np.ndarray]:
    """What the kernels read: scales, position, sensitive, columns, meta (an empty chunk as one zero row)."""
    a = enc.arrays

    def nonempty(x: np.ndarray) -> np.ndarray:
        return x if len(x) else np.zeros((1, *x.shape[1:]), x.dtype)

    return [a["scales"], a["position"], nonempty(a["sensitive"]), nonempty(a["columns"]), nonempty(a["meta"])]


def placeholders(enc: Encoded) -> list[te.Tensor]:
    names = ("scales", "position", "sensitive", "columns", "meta")
    return [te.placeholder(c.shape, c.dtype.name, name) for name, c in zip(names, constants(enc))]


def stored_weight(enc: Encoded, scales, sensitive, columns, meta):
    """``f(row, kk)``: the decoded float32 weight of stored row ``row`` at padded position ``kk``."""
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    bits = 8 - pruned_columns
    zps = enc.header["method"] == "zps"
    one = tirx.const(1, "uint32")

    def weight(row, kk):
        g, j = kk // bbs.GROUP, (kk % bbs.GROUP).astype("uint32")
        p = tirx.max(row - count, 0)  # indices clamped so that the branch not taken stays in bounds
        pb, lane = p // bbs.LANES, p % bbs.LANES
        kept = tirx.const(0, "int32")
        for b in range(bits):
            bit = ((columns[pb, g, b, lane] >> j) & one).astype("int32")
            kept = kept + bit * (-(1 << (bits - 1)) if b == 0 else 1 << (bits - 1 - b))
        m = meta[pb, g, lane].astype("int32")
        c = m & 63
        offset = -tirx.Select(c >= 32, c - 64, c) if zps else c
        pruned = (kept << (pruned_columns - (m >> 6))) + offset
        value = tirx.Select(row < count, sensitive[tirx.min(row, max(count, 1) - 1), kk].astype("int32"), pruned)
        return value.astype("float32") * scales[row]

    return weight


def padded_k(enc: Encoded) -> int:
    return -(-enc.shape[1] // bbs.GROUP) * bbs.GROUP


def matmul(enc: Encoded) -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])``."""
    n, k = enc.shape
    kp = padded_k(enc)
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    scales, position, sensitive, columns, meta = holders = placeholders(enc)
    zero = tirx.const(0, "float32")
    xpad = te.compute((x.shape[0], kp), lambda m, kk: te.if_then_else(kk < k, x[m, kk], zero), name="xpad")
    decoded = te.compute((n, kp), stored_weight(enc, scales, sensitive, columns, meta), name="decoded")
    rk = te.reduce_axis((0, kp), "rk")
    stored = te.compute((x.shape[0], n), lambda m, row: te.sum(xpad[m, rk] * decoded[row, rk], axis=rk), name="stored")
    out = te.compute((x.shape[0], n), lambda m, c: stored[m, position[c]], name="unshuffle")
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    decode_once.schedule_llvm(sch, "stored")
    sch.parallel(sch.get_loops(sch.get_sblock("unshuffle"))[0])
    return sch.mod["main"]


def conv2d_compute(enc: Encoded, conv) -> tirx.PrimFunc:
    """Unscheduled ``f(x NCHW, scales, position, sensitive, columns, meta, out NCHW)``: the OIHW weight decoded
    (block ``decoded``, in output-channel order via ``position``), then ``topi.nn.conv2d_nchw``."""
    o, i, kh, kw = conv.kernel_shape
    x = te.placeholder((te.var("batch", "int64"), i, te.var("h", "int64"), te.var("w", "int64")), "float32", "x")
    scales, position, sensitive, columns, meta = holders = placeholders(enc)
    weight = stored_weight(enc, scales, sensitive, columns, meta)
    # codec layout: K runs over (kh, kw, in_channel), channel fastest
    oihw = te.compute((o, i, kh, kw), lambda f, c, r, s: weight(position[f], (r * kw + s) * i + c), name="decoded")
    out = topi.nn.conv2d_nchw(x, oihw, list(conv.strides), list(conv.padding), list(conv.dilation))
    return te.create_prim_func([x, *holders, out])


def conv2d(enc: Encoded, conv) -> tirx.PrimFunc:
    """:func:`conv2d_compute` scheduled for the CPU: decode in parallel over output channels, then the conv."""
    sch = s_tir.Schedule(conv2d_compute(enc, conv))
    sch.work_on("main")
    sch.parallel(sch.get_loops(sch.get_sblock("decoded"))[0])
    pad = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint.startswith("pad")]
    for b in pad:
        sch.compute_inline(b)
    block = sch.get_sblock(CONV_BLOCK)
    nn, ff, yy, xx, rc, ry, rx = sch.get_loops(block)
    sch.reorder(nn, ff, yy, rc, ry, rx, xx)
    sch.parallel(sch.fuse(nn, ff))
    return sch.mod["main"]

"""``bbs`` weights decoded from the stored bit columns: the decode in TE, a decode-once GEMV, the panel GEMM, the GPU
conv's compute.

The decode stage is the format of :mod:`bie_compiler.codecs.bbs` written in TE:
a stored row below ``S`` is a sensitive INT8 row; a pruned row's weight ``j`` of
group ``g`` is ``kept * 2^shift + offset``, ``kept`` the two's complement number
of its ``8 - N`` column bits and (shift, offset) from the group's metadata byte.
Times the row's scale, that is the reference decoder's value.

* :func:`matmul`: ``out[m, n] = sum_k x[m, k] * w[position[n], k]``: each stored
  row decoded once into a row buffer (vectorized), then 16-lane FMAs per row of
  activations, stored rows in parallel; then the output unshuffle. The one-row
  kernel on CPUs without the LUT kernel's AVX-512.
* :func:`gemm`: matmuls above one row, the panel GEMM (:mod:`.panel_gemm`) over
  the stored rows, a panel of sensitive rows or of pruned ones decoded once per
  call; the scales applied to the sums, then the output unshuffle.
* :func:`output_weight`: the decoded weight per output channel, for the decode
  kernels (:mod:`.decode`) of convs.
* :func:`conv2d_compute`: the whole OIHW weight decoded inside the same
  PrimFunc as ``topi.nn.conv2d_nchw``: the GPU's direct conv (:mod:`.bbs_cuda`).
* :func:`kept_value`: a pruned row's stored column bits as a number, shared
  with ``bitwave``, which stores its columns the same way (:mod:`.int8`).
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx, topi

import tvm

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded

from ..kernel_registry import ConvSpec, KernelCall, register
from ..schedules import matmul as matmul_schedule
from . import bbs_lut, decode, decode_once, lut, panel_gemm

CONV_BLOCK = "conv2d_nchw"  # topi's name for the conv block (the GPU's direct conv schedules it)

def constants(enc: Encoded) -> list[np.ndarray]:
    """What the kernels read: scales, position, sensitive, columns, meta (an empty chunk as one zero row)."""
    a = enc.arrays

    def nonempty(x: np.ndarray) -> np.ndarray:
        return x if len(x) else np.zeros((1, *x.shape[1:]), x.dtype)

    return [a["scales"], a["position"], nonempty(a["sensitive"]), nonempty(a["columns"]), nonempty(a["meta"])]


def placeholders(enc: Encoded) -> list[te.Tensor]:
    names = ("scales", "position", "sensitive", "columns", "meta")
    return [te.placeholder(c.shape, c.dtype.name, name) for name, c in zip(names, constants(enc))]


def kept_value(columns, bits: int, p, g, j):
    """The ``bits``-bit two's complement number that pruned row ``p`` stores for weight ``j`` of group ``g``."""
    pb, lane = p // bbs.LANES, p % bbs.LANES
    one = tirx.const(1, "uint32")
    kept = tirx.const(0, "int32")
    for b in range(bits):
        bit = ((columns[pb, g, b, lane] >> j) & one).astype("int32")
        kept = kept + bit * (-(1 << (bits - 1)) if b == 0 else 1 << (bits - 1 - b))
    return kept


def pruned_value(enc: Encoded, columns, meta):
    """``f(row, kk)``: the integer of pruned stored row ``row`` (at least the sensitive count) at padded position
    ``kk``, before its scale."""
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    zps = enc.header["method"] == "zps"

    def value(row, kk):
        g, j = kk // bbs.GROUP, (kk % bbs.GROUP).astype("uint32")
        p = row - count
        kept = kept_value(columns, 8 - pruned_columns, p, g, j)
        m = meta[p // bbs.LANES, g, p % bbs.LANES].astype("int32")
        c = m & 63
        offset = -tirx.Select(c >= 32, c - 64, c) if zps else c
        return (kept << (pruned_columns - (m >> 6))) + offset

    return value


def pruned_float(enc: Encoded, columns, meta):
    """``f(row, kk)``: :func:`pruned_value` as a float32 sum, for decodes that run in vectors of channels: the
    group's offset plus, for each kept column whose bit is set, that column's significance times ``2^shift``.
    Each term is a bit test and a masked add; the group's terms (from its metadata byte) do not depend on the
    weight's place in the group, so they are computed once per group (its 32 weights), not per weight as the
    integer form's shifts and multiplies are. Every value is an integer below 2^9: the float sum is exact."""
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    zps = enc.header["method"] == "zps"
    bits = 8 - pruned_columns
    significance = [-(1 << (bits - 1))] + [1 << (bits - 1 - b) for b in range(1, bits)]

    def value(row, kk):
        g, j = kk // bbs.GROUP, (kk % bbs.GROUP).astype("uint32")
        p = row - count
        pb, lane = p // bbs.LANES, p % bbs.LANES
        m = meta[pb, g, lane].astype("int32")
        c = m & 63
        shift = pruned_columns - (m >> 6)
        total = (-tirx.Select(c >= 32, c - 64, c) if zps else c).astype("float32")
        bit = tirx.const(1, "uint32") << j
        for b in range(bits):
            term = (tirx.const(significance[b], "int32") << shift).astype("float32")
            total = tirx.Select((columns[pb, g, b, lane] & bit) != tirx.const(0, "uint32"), total + term, total)
        return total

    return value


def stored_weight(enc: Encoded, scales, sensitive, columns, meta):
    """``f(row, kk)``: the decoded float32 weight of stored row ``row`` at padded position ``kk``."""
    count = int(enc.header["sensitive"])
    pruned = pruned_value(enc, columns, meta)

    def weight(row, kk):
        # if_then_else, not Select: Select evaluates both sides, and TVM simplifies each side under its own
        # condition, which removed the index clamps that kept the side not taken in bounds (a segfault when
        # the constants ended near the end of a mapping: mobilenet's classifier at batch 8).
        value = tirx.if_then_else(row < count, sensitive[row, kk].astype("int32"), pruned(row, kk))
        return value.astype("float32") * scales[row]

    return weight


def output_weight(enc: Encoded, holders):
    """``f(n, kk)``: the decoded weight of output channel ``n`` (the stored row ``position[n]``)."""
    scales, position, sensitive, columns, meta = holders
    weight = stored_weight(enc, scales, sensitive, columns, meta)
    return lambda n, kk: weight(position[n], kk)


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
    (block ``decoded``, in output-channel order via ``position``), then ``topi.nn.conv2d_nchw`` (the GPU's direct conv)."""
    o, i, kh, kw = conv.kernel_shape
    x = te.placeholder((te.var("batch", "int64"), i, te.var("h", "int64"), te.var("w", "int64")), "float32", "x")
    holders = placeholders(enc)
    weight = output_weight(enc, holders)
    # codec layout: K runs over (kh, kw, in_channel), channel fastest
    oihw = te.compute((o, i, kh, kw), lambda f, c, r, s: weight(f, (r * kw + s) * i + c), name="decoded")
    out = topi.nn.conv2d_nchw(x, oihw, list(conv.strides), list(conv.padding), list(conv.dilation))
    return te.create_prim_func([x, *holders, out])


def panel_value(enc: Encoded, holders) -> panel_gemm.PanelWeight:
    """The integers of stored rows in panels of ``COLS`` (:mod:`.panel_gemm`), before their scales: a panel is all
    sensitive or all pruned (the sensitive count is a multiple of the panel, or every row), so the choice is made
    once per panel, not per weight; sensitive rows (K-major) are read across rows, pruned ones in their 16-row words."""
    n = enc.shape[0]
    count = int(enc.header["sensitive"])
    cols = matmul_schedule.COLS
    if count % cols and count != n:
        raise ValueError(f"bbs: {count} sensitive rows of {n}: neither a multiple of {cols} nor every row")
    _, _, sensitive, columns, meta = holders
    pruned = panel_gemm.by_channel(pruned_float(enc, columns, meta), n, bbs.LANES)
    last = tirx.const(max(count, 1) - 1, "int32")  # a last panel of sensitive rows may run past them
    return lambda p, kk, c: tirx.if_then_else(
        p * cols < count, sensitive[tirx.min(p * cols + c, last), kk].astype("float32"), pruned(p, kk, c))


def gemm(enc: Encoded) -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])`` for several rows: the panel
    GEMM in stored order, then the output unshuffle."""
    holders = placeholders(enc)
    scales, position = holders[:2]
    return panel_gemm.gemm(panel_value(enc, holders), holders, *enc.shape, scale=lambda row: scales[row],
                           position=position, group=bbs.GROUP)


@register(bbs.NAME, ops=("matmul", "conv2d"), target="llvm")
def llvm_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """Matmul: the LUT bit-serial GEMV for one row (AVX-512; else the decode-once GEMV), the panel GEMM above;
    conv: decode."""
    tensors = constants(enc)
    if conv is not None:
        holders = placeholders(enc)
        decoder = decode.elementwise(output_weight(enc, holders), holders, *decode.destination(enc, conv))
        return decode.with_decoder(None, decoder, "bbs", tensors, conv)
    if lut.supported(tvm.target.Target.current()):  # kernel_for builds within its target
        small = KernelCall("bbs_lut", bbs_lut.gemv(enc), tensors)
    else:
        small = KernelCall("bbs_decoded", matmul(enc), tensors)
    return panel_gemm.with_gemm(small, gemm(enc), "bbs")

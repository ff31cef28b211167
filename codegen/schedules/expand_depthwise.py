"""Schedule rule for a pointwise (1x1) conv fused with the depthwise conv that reads it (NCHW).

``codegen/fuse_expand_depthwise.py`` puts the two convs into one PrimFunc: the pointwise conv's input
copy, its reduction, the depthwise conv's padding (the pointwise epilogue inlined into it), the
depthwise reduction and its epilogue. Each parallel task is a group of channels x a band of output
rows: it computes the pointwise output of those channels on the input rows the band reads (a register
tile of channels x vectors along the row, the input channels innermost), pads them, and runs the
depthwise taps on them as :mod:`.depthwise_conv2d` does. The expanded tensor is never written out;
only the band's halo rows are computed twice.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .conv2d import (ACCUMULATORS, ConvBlocks, _is_conv_block, _is_elementwise, column_stride, copy_along_rows,
                     fold_epilogue, is_depthwise, lanes_for, largest_divisor, shape_of, split_column_phases)

GROUP = 24  # channels per task
ROW_VECTORS = 8  # vectors along a row in the pointwise register tile (a whole 112- or 56-wide row: 7)
BAND_ROWS = 8  # output rows of the depthwise conv per task: the halo recomputed is (kh - stride) of stride * this


def match_expand_depthwise(sch: s_tir.Schedule) -> tuple[s_tir.SBlockRV, s_tir.SBlockRV, ConvBlocks] | None:
    """(pointwise input copy, pointwise conv, depthwise blocks) if the PrimFunc is that fused pair."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) < 5:
        return None
    copy, pointwise, pad, depthwise, *epilogue = blocks
    if not (_is_conv_block(sch.get(pointwise)) and _is_conv_block(sch.get(depthwise))):
        return None
    if not all(_is_elementwise(sch.get(b)) and len(sch.get(b).iter_vars) == 4 for b in (copy, pad, *epilogue)):
        return None
    if [int(sch.get(l).extent) for l in sch.get_loops(pointwise)[5:]] != [1, 1] or not is_depthwise(sch, depthwise):
        return None
    if not sch.get(pad).reads[0].source.same_as(sch.get(pointwise).writes[0].source):
        return None
    if any(not sch.get_consumers(b) for b in (copy, pointwise, pad, depthwise, *epilogue[:-1])):
        return None
    return copy, pointwise, ConvBlocks(pad, depthwise, epilogue)


def schedule_expand_depthwise(sch: s_tir.Schedule, copy, pointwise, dw: ConvBlocks) -> None:
    """Schedule the fused pair in ``sch``, in place (see the module docstring)."""
    _, channels, oh, ow = shape_of(sch, dw.conv, write=True)
    width = shape_of(sch, pointwise, write=True)[3]
    in_lanes = lanes_for(width)
    vectors = largest_divisor(width // in_lanes, ROW_VECTORS)
    group = largest_divisor(channels, GROUP)
    tile = largest_divisor(group, max(1, ACCUMULATORS // vectors))  # pointwise register tile: channels x vectors

    split_column_phases(sch, dw.pad, column_stride(sch, dw))
    final = fold_epilogue(sch, dw)
    sch.compute_inline(copy)
    # The pointwise conv accumulates a register tile in a local buffer and copies it to the band's rows.
    write_back = sch.cache_write(pointwise, 0, "local")

    lanes = lanes_for(ow)
    n, c, y, x, r, ky, kx = sch.get_loops(dw.conv)
    c_o, c_i = sch.split(c, [None, group])
    y_o, y_i = sch.split(y, [None, largest_divisor(oh, BAND_ROWS)])
    x_o, x_l = sch.split(x, [None, lanes])
    sch.reorder(n, c_o, y_o, c_i, x_o, r, ky, kx, y_i, x_l)
    task = sch.fuse(n, c_o, y_o)
    sch.parallel(task)
    sch.reverse_compute_at(final, x_o)
    *rows_out, inner = sch.get_loops(final)[-2:]
    _, vec = sch.split(inner, [None, lanes_for(int(sch.get(inner).extent))])
    sch.vectorize(vec)
    for loop in (ky, kx, y_i, *rows_out):  # the depthwise tile and its epilogue unrolled: accumulators in registers
        sch.unroll(loop)
    sch.vectorize(x_l)
    sch.decompose_reduction(dw.conv, r)

    sch.compute_at(dw.pad, task)
    copy_along_rows(sch, dw.pad)
    sch.compute_at(write_back, task)
    sch.compute_at(pointwise, task)
    pc, py, px, rc = sch.get_loops(pointwise)[-4:]
    pc_o, pc_i = sch.split(pc, [None, tile])
    px_o, px_v, px_l = sch.split(px, [None, vectors, in_lanes])
    sch.reorder(pc_o, py, px_o, rc, pc_i, px_v, px_l)
    sch.reverse_compute_at(write_back, px_o)
    channel, inner = sch.get_loops(write_back)[-2:]
    along, vec = sch.split(inner, [None, in_lanes])
    sch.unroll(channel)
    sch.unroll(along)
    sch.vectorize(vec)
    for loop in (pc_i, px_v):  # the register tile unrolled: its accumulators stay in registers
        sch.unroll(loop)
    sch.vectorize(px_l)
    sch.decompose_reduction(pointwise, rc)


class ExpandDepthwise(CPUScheduleRule):
    """A 1x1 conv and the depthwise conv reading it, fused in one PrimFunc."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        found = match_expand_depthwise(sch)
        if found is None:
            return None
        schedule_expand_depthwise(sch, *found)
        return sch

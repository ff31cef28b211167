"""Schedule rule for depthwise NCHW conv2d (groups == channels) with its fused epilogue.

Each (image, channel) plane is one parallel task. Per band of output rows, the padded input rows
the band reads are copied into a small buffer (no padded copy of the whole tensor; the copy of
one band's rows and the taps of the previous band interleave, so reading the input from memory
overlaps the arithmetic instead of preceding it; a small plane is copied whole, as its bands would
re-copy a large share of their rows), then a tile of output rows x a vector along the output row
accumulates the kh x kw taps, and the epilogue is applied to the tile.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .conv2d import MAX_LANES, ConvBlocks, column_stride, copy_along_rows, find_conv, fold_epilogue, is_depthwise, lanes_for, largest_divisor, shape_of, split_column_phases

ROWS = 8  # output rows per register tile (one vector each): with the taps unrolled, rows share their input loads
SMALL_ROWS = 4  # the same on planes below BANDED_PIXELS (vectors of 14 or 7 lanes there: measured faster)
NARROW_ROWS = 8  # the same on rows narrower than half a vector (7 lanes): one register per row, so more rows share loads
BANDED_PIXELS = 2048  # output planes of at least this many pixels copy their padded input per band of rows


def schedule_depthwise_conv2d(sch: s_tir.Schedule, blocks: ConvBlocks) -> None:
    """Schedule a depthwise conv and its epilogue in ``sch``, in place."""
    _, _, oh, ow = shape_of(sch, blocks.conv, write=True)
    split_column_phases(sch, blocks.pad, column_stride(sch, blocks))
    final = fold_epilogue(sch, blocks)
    lanes = lanes_for(ow)
    banded = oh * ow >= BANDED_PIXELS
    rows = largest_divisor(oh, ROWS if banded else NARROW_ROWS if 2 * ow <= MAX_LANES else SMALL_ROWS)
    n, c, y, x, r, ky, kx = sch.get_loops(blocks.conv)
    y_o, y_i = sch.split(y, [None, rows])
    x_o, x_l = sch.split(x, [None, lanes])
    sch.reorder(n, c, y_o, x_o, r, ky, kx, y_i, x_l)
    plane = sch.fuse(n, c)
    sch.parallel(plane)
    sch.reverse_compute_at(final, x_o)
    *rows_out, inner = sch.get_loops(final)[-2:]
    _, vec = sch.split(inner, [None, lanes_for(int(sch.get(inner).extent))])
    sch.vectorize(vec)
    for loop in (ky, kx, y_i, *rows_out):  # the epilogue unrolled too: the accumulators stay in registers
        sch.unroll(loop)
    sch.vectorize(x_l)
    sch.decompose_reduction(blocks.conv, r)
    if blocks.pad is not None:
        sch.compute_at(blocks.pad, y_o if banded else plane)  # a band of a small plane re-copies too many rows
        copy_along_rows(sch, blocks.pad)


class DepthwiseConv2D(CPUScheduleRule):
    """NCHW conv2d whose groups equal its input and output channels."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        found = find_conv(func)
        if found is None or not is_depthwise(found[0], found[1].conv):
            return None
        schedule_depthwise_conv2d(*found)
        return found[0]

"""A 3x3 stride-1 depthwise conv on rows narrower than 8 lanes (a 7x7 plane), as written TIR.

The schedule rule (:mod:`.depthwise_conv2d`) runs its vectors along an output row: a 7-wide row takes 7-lane
vectors, which LLVM splits into pieces of 4, 2 and 1 lanes, three instructions for each load and FMA. Here a
plane is one flat run of pixels, as NCHW stores it. Each task (an image's channel) copies its input plane into
a flat buffer with ``w + 1`` zeros before and after it, and each 16-lane vector of output pixels is the sum
over the taps of that buffer shifted by ``(ky - 1) * w + kx - 1``: the vertical padding is the zeros, and a
lane in a row's first (last) column takes nothing from the left (right) taps, whose shifted loads read the
neighbouring row there (a select, not a multiplication by zero, which would turn an infinite neighbour into
NaN). The last vectors of the plane overlap the ones before them (as in :mod:`.pointwise_overlap`), and the
epilogue is applied per vector. Each vector loads every tap separately, where the rule's tiles of rows share a
loaded input row among three output rows: on rows of 14 or 28 (14-lane vectors in the rule) the rule stays
faster.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script.ir_builder import IRBuilder
from tvm.target import Target
from tvm.tirx.script.builder import ir as T

from ..tir_nodes import collected
from .conv2d import MAX_LANES, ConvBlocks, find_conv, is_depthwise, shape_of
from .pointwise_overlap import epilogue_value, folded_per_pixel

KERNEL = 3  # the taps per axis this rule writes (padding 1: the output plane is the input's)
NARROW = 8  # rows narrower than this many lanes are written flat
UNROLLED_VECTORS = 8  # a plane of at most this many vectors has its vector loops unrolled (see build)


def applies(sch: s_tir.Schedule, blocks: ConvBlocks) -> bool:
    """A float32 3x3 depthwise conv of stride 1 and padding 1 over a static plane of at least one vector whose rows
    are narrower than 8 lanes."""
    if blocks.pad is None:
        return False
    _, c, h, w = shape_of(sch, blocks.conv, write=True)
    _, _, ph, pw = shape_of(sch, blocks.conv, 0)
    kh, kw = (int(sch.get(l).extent) for l in sch.get_loops(blocks.conv)[5:7])
    static = all(isinstance(d, int) for d in (c, h, w, ph, pw))
    return (static and kh == kw == KERNEL and (ph, pw) == (h + 2, w + 2) and w < NARROW and h * w >= MAX_LANES
            and sch.get(blocks.conv).writes[0].source.dtype == "float32")


def _operands(sch: s_tir.Schedule, blocks: ConvBlocks):
    """(input, weight) buffers if the conv's update is ``acc + pad[n, c, y + ky, x + kx] * weight[c, 0, ky, kx]``
    and the padding block stores the input (one load of it) or zero; else None."""
    update = sch.get(blocks.conv).body
    if not (isinstance(update, tirx.BufferStore) and isinstance(update.value, tirx.Add)
            and isinstance(update.value.b, tirx.Mul)):
        return None
    padded, weight = update.value.b.a, update.value.b.b
    pad = sch.get(blocks.pad)
    if not (isinstance(padded, TensorLoad) and isinstance(weight, TensorLoad) and padded.source.same_as(pad.writes[0].source)
            and len(weight.indices) == 4 and weight.source.dtype == "float32"):
        return None
    loads = collected(pad.body.value, TensorLoad)
    if len(loads) != 1 or len(loads[0].indices) != 4:
        return None
    return loads[0].source, weight.source


def build(sch: s_tir.Schedule, blocks: ConvBlocks) -> tirx.PrimFunc | None:
    """The conv of the unscheduled ``sch`` written over flat planes, or None if its form is not the expected one
    (see :func:`_operands`, :func:`.pointwise_overlap.plane_buffers_of`). ``sch`` is modified (its epilogue
    folded) either way."""
    operands = _operands(sch, blocks)
    if operands is None:
        return None
    data, weight = operands
    batch, channels, h, w = shape_of(sch, blocks.conv, write=True)
    folded = folded_per_pixel(sch, blocks)
    if folded is None:
        return None
    final, acc, out, plane_buffers = folded
    pixels, lanes, border = h * w, MAX_LANES, w + 1
    vectors, last = -(-pixels // lanes), pixels - lanes
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    views = {}
    with IRBuilder() as builder:
        with T.parallel(i64(0), batch * channels) as task:
            n, c = task // channels, task % channels
            for buffer in [data, out, *plane_buffers]:  # flat [n, c, pixels] views, no copies
                if buffer not in views:
                    views[buffer] = T.decl_buffer((buffer.shape[0], buffer.shape[1], pixels), buffer.dtype, data=buffer.data)
            flat = T.decl_buffer((pixels + 2 * border,), "float32", scope="local")
            sums = T.decl_buffer((lanes,), "float32", scope="local")
            with T.serial(i64(0), i64(border)) as i:
                T.buffer_store(flat, tirx.const(0, "float32"), [i])
                T.buffer_store(flat, tirx.const(0, "float32"), [border + pixels + i])
            # Unrolled, each vector's start is a constant, and so are the side taps' column masks (no modulo per
            # vector): 960x7x7 0.93 of the loop's time at batch 1, 0.90 at batch 8 (one thread).
            vector_loop = T.unroll if vectors <= UNROLLED_VECTORS else T.serial
            with vector_loop(i64(0), i64(vectors)) as v:
                start = tirx.min(v * lanes, i64(last))  # the last vectors of the plane overlap the ones before
                with T.vectorized(i64(0), i64(lanes)) as lane:
                    T.buffer_store(flat, views[data][n, c, start + lane], [border + start + lane])
            with vector_loop(i64(0), i64(vectors)) as v:
                start = tirx.min(v * lanes, i64(last))
                with T.vectorized(i64(0), i64(lanes)) as lane:
                    T.buffer_store(sums, tirx.const(0, "float32"), [lane])
                for ky in range(KERNEL):
                    for kx in range(KERNEL):
                        with T.vectorized(i64(0), i64(lanes)) as lane:
                            shifted = flat[border + start + lane + (ky - 1) * w + (kx - 1)]
                            column = tirx.floormod((start + lane).astype("int32"), w)  # (int64 vectors: no fast mod)
                            if kx == 0:
                                shifted = tirx.Select(column > 0, shifted, tirx.const(0, "float32"))
                            elif kx == KERNEL - 1:
                                shifted = tirx.Select(column < w - 1, shifted, tirx.const(0, "float32"))
                            T.buffer_store(sums, sums[lane] + shifted * weight[c, i64(0), i64(ky), i64(kx)], [lane])
                with T.vectorized(i64(0), i64(lanes)) as lane:
                    p = start + lane
                    T.buffer_store(views[out], epilogue_value(final, acc, n, c, p, sums[lane], views), [n, c, p])
    root = s_tir.SBlock([], [], [], "root", builder.get())  # TVM's passes expect a root block
    return sch.mod["main"].with_body(s_tir.SBlockRealize([], True, root))


class DepthwiseFlat(CPUScheduleRule):
    """A 3x3 stride-1 depthwise conv (and its epilogue) on rows narrower than 8 lanes; others go to DepthwiseConv2D."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        found = find_conv(func)
        if found is None or not is_depthwise(found[0], found[1].conv) or not applies(*found):
            return None
        written = build(*found)
        return None if written is None else s_tir.Schedule(written)

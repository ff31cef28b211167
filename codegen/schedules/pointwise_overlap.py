"""A 1x1 stride-1 conv over a plane that is not a whole number of vectors (14x14, 7x7), as written TIR.

The schedule rule (:mod:`.conv2d`) pads such a plane to whole vectors: a zero-padded copy of the input
(a serial loop before the parallel one) and an epilogue predicated on the real pixels, which TVM runs one
lane at a time. Here every vector of a register tile starts at ``min(its offset, last vector's start)``:
the last vectors overlap the ones before them, recompute those pixels (as many as the padding did) and
store the same values again, so every load and store is a whole vector of the input and output as they
are, with no copy and no predicate. A register tile is one vector of pixels x up to 24 output channels, so
the overlap costs less than one vector per plane (14x14: 13 vectors for 12.25). On a plane of one register
tile with a few pixels past its last whole vector (7x7: 48 + 1), those pixels are dot products along the
input channels instead, 16 channels per FMA (:func:`_tail_pays`). Tiles are output channels x vectors of
the flat plane, the input channels innermost; the tasks are images x pixel tiles x channel tiles, pixel
tiles outer (a tile's input, every channel, stays in L2 for its channel tiles). The epilogue chain (bias,
clip, residual) is the fused function's own, folded into one expression and applied per tile to the
accumulators.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script.ir_builder import IRBuilder
from tvm.target import Target
from tvm.tirx.script.builder import ir as T

from ..kernels.lut import LINE_BYTES, prefetch
from ..tir_nodes import collected, substituted
from .conv2d import ACCUMULATORS, MAX_LANES, ConvBlocks, find_conv, fold_epilogue, is_depthwise, largest_divisor, shape_of

TILE_VECTORS = 1  # vectors along the plane per register tile: one, so a plane costs ceil(pixels / 16) vectors
# (14x14: 13, where tiles of two vectors computed 14) and the tile takes 24 output channels
WHOLE_PLANE_VECTORS = 4  # a plane of at most this many vectors is one tile (7x7: three vectors and a tail)
TAIL_PIXELS = 4  # at most this many pixels past the last whole vector are dot products (see _tail_pays)
LINE_FLOATS = LINE_BYTES // 4  # float32 per cache line


def applies(sch: s_tir.Schedule, blocks: ConvBlocks) -> bool:
    """A 1x1 stride-1 float32 conv over a static plane of at least one vector that vectors do not divide."""
    _, ci, h, w = shape_of(sch, blocks.conv, 0)
    _, co, oh, ow = shape_of(sch, blocks.conv, write=True)
    kh, kw = (int(sch.get(l).extent) for l in sch.get_loops(blocks.conv)[5:7])
    static = all(isinstance(d, int) for d in (ci, h, w, co))
    return (static and kh == kw == 1 and (h, w) == (oh, ow) and h * w > MAX_LANES and (h * w) % MAX_LANES != 0
            and sch.get(blocks.conv).writes[0].source.dtype == "float32")


def _operands(sch: s_tir.Schedule, blocks: ConvBlocks):
    """(input, weight) buffers if the conv's update is ``acc + input[n, ci, y, x] * weight[co, ci, 0, 0]``, the
    input read through a padding block that only copies (a 1x1 conv's) or none; else None."""
    update = sch.get(blocks.conv).body
    if not (isinstance(update, tirx.BufferStore) and isinstance(update.value, tirx.Add)
            and isinstance(update.value.b, tirx.Mul)):
        return None
    data, weight = update.value.b.a, update.value.b.b
    if not (isinstance(data, TensorLoad) and isinstance(weight, TensorLoad) and len(weight.indices) == 4
            and weight.source.dtype == "float32"):
        return None
    if blocks.pad is None:
        return data.source, weight.source
    pad = sch.get(blocks.pad)
    copied = pad.body.value
    if not (isinstance(copied, TensorLoad) and len(copied.indices) == 4
            and all(i.same_as(iv.var) for i, iv in zip(copied.indices, pad.iter_vars))):
        return None
    return copied.source, weight.source


def folded_per_pixel(sch: s_tir.Schedule, blocks: ConvBlocks) -> tuple | None:
    """The conv's epilogue folded into one block (:func:`.conv2d.fold_epilogue`): (that block, the accumulator,
    the output, the buffers it reads at the output pixel), or None where the block does not store the output or
    reads a buffer elsewhere than at the output pixel (then it is not computed per pixel of a flat plane)."""
    final = sch.get(fold_epilogue(sch, blocks))
    acc = sch.get(blocks.conv).writes[0].source  # (folding moved it to a local buffer)
    out = final.writes[0].source
    if not (isinstance(final.body, tirx.BufferStore) and final.body.buffer.same_as(out)):
        return None
    plane_buffers = plane_buffers_of(final, acc)
    return None if plane_buffers is None else (final, acc, out, plane_buffers)


def plane_buffers_of(block: s_tir.SBlock, acc) -> list | None:
    """The buffers the folded epilogue reads at the output pixel ([n, c, y, x] of its block), or None if it reads one
    elsewhere (then it is not computed per pixel of the flat plane)."""
    n_var, c_var, y_var, x_var = (iv.var for iv in block.iter_vars)
    found = []
    for load in collected(block.body.value, TensorLoad):
        if load.source.same_as(acc):
            continue
        if len(load.indices) == 4 and load.indices[2].same_as(y_var) and load.indices[3].same_as(x_var):
            found.append(load.source)
        elif any(_uses(i, (y_var, x_var)) for i in load.indices):
            return None
    return found


def epilogue_value(block: s_tir.SBlock, acc, n, c, p, accumulated, views: dict):
    """The folded epilogue's stored value at channel ``c``, flat pixel ``p``: the accumulator is ``accumulated``,
    loads at the output pixel read the flat ``views`` [n, c, pixels], other loads (a bias [1, c, 1, 1]) keep theirs."""
    n_var, c_var, y_var, x_var = (iv.var for iv in block.iter_vars)

    def rewrite(load):
        if load.source.same_as(acc):
            return accumulated
        if len(load.indices) == 4 and load.indices[2].same_as(y_var) and load.indices[3].same_as(x_var):
            head = [substituted(i, {n_var: n, c_var: c}) for i in load.indices[:2]]
            return views[load.source][head[0], head[1], p]
        return load

    result = tvm_ffi.structural_map(block.body.value, [(TensorLoad, rewrite)], order="post")
    return substituted(result, {n_var: n, c_var: c})


def _vectors(whole: int) -> int:
    """Vectors per register tile for ``whole`` vectors of the plane: the plane in one tile if it is small."""
    return whole if whole <= WHOLE_PLANE_VECTORS else TILE_VECTORS


def _tail_pays(pixels: int, ci: int) -> bool:
    """Whether the pixels past the last whole vector are dot products along the input channels: on a plane of one
    register tile with a short tail (7x7: three vectors and one pixel instead of four vectors, a quarter fewer FMAs).
    On larger planes the tail falls to one tile's tasks and saves at most one vector of the plane's (14x14: 12.25
    for 13): measured no faster."""
    tail = pixels % MAX_LANES
    return 0 < tail <= TAIL_PIXELS and ci % MAX_LANES == 0 and MAX_LANES <= pixels <= WHOLE_PLANE_VECTORS * MAX_LANES


def _tail(final, acc, views, columns, weight, n, c0, ct, ci: int, first: int, tail: int) -> None:
    """Emit the last ``tail`` pixels of channels ``c0 + [0, ct)``: each a dot product along the input channels (16 per
    vector FMA, where a whole vector of pixels would cost one FMA per channel) of the weight row and the pixel's input
    column (``columns[t]``, copied contiguous by the tile's reduction loop). Channels innermost: ``ct`` independent
    FMA chains."""
    lanes, i64 = MAX_LANES, (lambda v: tirx.const(v, "int64"))
    dots = T.decl_buffer((ct, lanes), "float32", scope="local")
    with T.serial(i64(0), i64(tail)) as t:
        with T.unroll(i64(0), i64(ct)) as i:
            with T.vectorized(i64(0), i64(lanes)) as lane:
                T.buffer_store(dots, tirx.const(0, "float32"), [i, lane])
        with T.serial(i64(0), i64(ci // lanes)) as block:
            with T.unroll(i64(0), i64(ct)) as i:
                with T.vectorized(i64(0), i64(lanes)) as lane:
                    k = block * lanes + lane
                    T.buffer_store(dots, dots[i, lane] + weight[c0 + i, k, i64(0), i64(0)] * columns[t, k], [i, lane])
        with T.unroll(i64(0), i64(ct)) as i:
            total = _pairwise_sum([dots[i, i64(lane)] for lane in range(lanes)])
            T.buffer_store(views[final.writes[0].source],
                           epilogue_value(final, acc, n, c0 + i, first + t, total, views), [n, c0 + i, first + t])


def _pairwise_sum(values: list) -> tirx.PrimExpr:
    while len(values) > 1:
        values = [values[j] + values[j + 1] if j + 1 < len(values) else values[j] for j in range(0, len(values), 2)]
    return values[0]


def _uses(expr, variables) -> bool:
    return any(v.same_as(u) for v in collected(expr, tirx.Var) for u in variables)


def build(sch: s_tir.Schedule, blocks: ConvBlocks) -> tirx.PrimFunc | None:
    """The conv of the unscheduled ``sch`` written with overlapping vectors, or None if its form is not the expected
    one (see :func:`_operands`, :func:`plane_buffers_of`). ``sch`` is modified (its epilogue folded) either way."""
    operands = _operands(sch, blocks)
    if operands is None:
        return None
    data, weight = operands
    batch, ci, h, w = shape_of(sch, blocks.conv, 0)
    co = shape_of(sch, blocks.conv, write=True)[1]
    folded = folded_per_pixel(sch, blocks)
    if folded is None:
        return None
    final, acc, out, plane_buffers = folded
    pixels, lanes = h * w, MAX_LANES
    tail = pixels % lanes if _tail_pays(pixels, ci) else 0  # pixels left to dot products
    whole = (pixels - tail) // lanes if tail else -(-pixels // lanes)
    vectors = _vectors(whole)
    tiles, ct = -(-whole // vectors), largest_divisor(co, max(1, ACCUMULATORS // vectors))
    groups = co // ct
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    views = {}
    with IRBuilder() as builder:
        with T.parallel(i64(0), batch * tiles * groups) as task:
            n, tile, group = task // (tiles * groups), task // groups % tiles, task % groups
            for buffer in [data, out, *plane_buffers]:  # flat [n, c, pixels] views, no copies
                if buffer not in views:
                    views[buffer] = T.decl_buffer((buffer.shape[0], buffer.shape[1], pixels), buffer.dtype, data=buffer.data)
            tile_acc = T.decl_buffer((ct, vectors * lanes), "float32", scope="local")
            last = i64((pixels - tail if tail else pixels) - lanes)

            def start(v):  # the vector's first pixel: the last vectors of the plane overlap the ones before
                return tirx.min(tile * (vectors * lanes) + v * lanes, last)

            with T.unroll(i64(0), i64(ct)) as i:
                with T.unroll(i64(0), i64(vectors)) as v:
                    with T.vectorized(i64(0), i64(lanes)) as lane:
                        T.buffer_store(tile_acc, tirx.const(0, "float32"), [i, v * lanes + lane])
            # A task reads its channel tile's weight rows as ct short streams, which the hardware prefetchers do not
            # follow from one task to the next; the next task's rows (the next channel tile) follow these in memory,
            # so each step of the reduction fetches its share of them into L2 (ct floats a step: every line of them).
            weight_flat = T.decl_buffer((co * ci,), weight.dtype, data=weight.data)
            next_rows = (group + 1) * (ct * ci)
            # The tail pixels' input columns (a plane apart) are copied contiguous in this loop, a scalar load and store
            # per step beside the tile's FMAs, rather than by a loop of their own (slower: benchmarks/README.md).
            columns = T.decl_buffer((tail, ci), "float32", scope="local") if tail else None
            with T.serial(i64(0), i64(ci)) as r:
                for line in range(-(-ct // LINE_FLOATS)):
                    prefetch(weight_flat[tirx.min(next_rows + r * ct + line * LINE_FLOATS, i64(co * ci - 1))])
                for t in range(tail):
                    T.buffer_store(columns, views[data][n, r, pixels - tail + t], [t, r])
                with T.unroll(i64(0), i64(ct)) as i:
                    with T.unroll(i64(0), i64(vectors)) as v:
                        with T.vectorized(i64(0), i64(lanes)) as lane:
                            T.buffer_store(tile_acc, tile_acc[i, v * lanes + lane] + views[data][n, r, start(v) + lane]
                                           * weight[group * ct + i, r, i64(0), i64(0)], [i, v * lanes + lane])
            with T.unroll(i64(0), i64(ct)) as i:
                with T.unroll(i64(0), i64(vectors)) as v:
                    with T.vectorized(i64(0), i64(lanes)) as lane:
                        p = start(v) + lane
                        stored = epilogue_value(final, acc, n, group * ct + i, p, tile_acc[i, v * lanes + lane], views)
                        T.buffer_store(views[out], stored, [n, group * ct + i, p])
            if tail:
                with T.If(tile == tiles - 1):
                    with T.Then():
                        _tail(final, acc, views, columns, weight, n, group * ct, ct, ci, pixels - tail, tail)
    root = s_tir.SBlock([], [], [], "root", builder.get())  # TVM's passes expect a root block
    return sch.mod["main"].with_body(s_tir.SBlockRealize([], True, root))


class PointwiseOverlap(CPUScheduleRule):
    """A 1x1 stride-1 conv (and its epilogue) on a plane that whole vectors do not cover; other convs go to Conv2D."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        found = find_conv(func)
        if found is None or is_depthwise(found[0], found[1].conv) or not applies(*found):
            return None
        written = build(*found)
        return None if written is None else s_tir.Schedule(written)

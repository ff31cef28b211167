"""Schedule rule for NCHW conv2d (groups = 1 or grouped, any kernel and stride) with its fused epilogue.

A fused conv PrimFunc, as Relax legalizes and fuses it, is an optional padding block, the conv
reduction block (loops n, co, y, x, ci, ky, kx) and a chain of elementwise blocks (bias add,
clip, residual add) ending in the block that writes the output. The epilogue is folded into one
block computed per register tile, so every output is written once, straight from registers.

1x1 stride-1 convs are a GEMM W[co, ci] x X[ci, h*w] with the pixel axis contiguous: the
accumulator is indexed by the flat pixel, tiles are output channels x pixel vectors, ci is the
innermost reduction. The pixels run in chunks whose input (every channel) stays in L2: every
channel tile of a chunk, then the next chunk, so the input is read from memory once (channel
tiles outermost re-read all of it per tile; pixels outermost scatter each task's writes over
every output channel). Other convs tile output channels x vectors along the output row. Vector
widths are divisors of the row (or plane), so no tile needs a predicate (which would make TVM
scalarize the loop); LLVM legalizes widths that are not a power of two.

The weight may be any buffer (a PrimFunc argument or an intermediate), so a conv fed by a
decoded weight is scheduled with :func:`schedule_conv2d` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

MAX_LANES = 16  # one AVX-512 register of float32
ACCUMULATORS = 24  # register tile size (of 32 vector registers; the rest hold inputs)
BANDS = 8  # row bands per image, the parallel tasks of a spatial conv
CHUNK_BYTES = 256 * 1024  # the input pixels a pointwise conv's chunk reads (every channel): kept in L2 across channel tiles
UNROLLED_TAPS = 32  # a conv reducing over at most this many (ci, ky, kx) taps has its window's taps unrolled


@dataclass
class ConvBlocks:
    """The blocks of a fused conv: padding (or None), the conv reduction, the epilogue chain in order."""

    pad: s_tir.SBlockRV | None
    conv: s_tir.SBlockRV
    epilogue: list[s_tir.SBlockRV]


def _is_conv_block(block: tirx.SBlock) -> bool:
    kinds = [iv.iter_type for iv in block.iter_vars]
    return (len(kinds) == 7 and kinds[:4] == [tirx.IterVar.DataPar] * 4 and kinds[4:] == [tirx.IterVar.CommReduce] * 3
            and len(block.writes) == 1 and len(block.reads) >= 2 and block.init is not None)


def _is_elementwise(block: tirx.SBlock) -> bool:
    return block.init is None and all(iv.iter_type == tirx.IterVar.DataPar for iv in block.iter_vars)


def _same_extents(block: tirx.SBlock, shape: list) -> bool:
    extents = [int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else iv.dom.extent for iv in block.iter_vars]
    return len(extents) == len(shape) and all(
        e == d if isinstance(e, int) or isinstance(d, int) else e.same_as(d) for e, d in zip(extents, shape))


def match_conv(sch: s_tir.Schedule, conv: s_tir.SBlockRV) -> ConvBlocks | None:
    """The fused conv around ``conv``: its padding producer and the elementwise blocks after it.

    The epilogue is every block after the conv in program order, a DAG rather than a chain: the NaN-keeping
    ReLU (``x <= 0 ? 0 : x``, see ``passes/nan_semantics.py``) reads its input twice. Only its last block may
    have no consumer (it writes the output).
    """
    if not _is_conv_block(sch.get(conv)):
        return None
    producers = [p for p in sch.get_producers(conv) if _is_elementwise(sch.get(p))
                 and len(sch.get(p).writes) == 1 and sch.get(p).writes[0].source.same_as(sch.get(conv).reads[0].source)]
    pad = producers[0] if producers else None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    position = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(conv)))
    epilogue = blocks[position + 1:]
    if any(not _is_elementwise(sch.get(b)) or len(sch.get(b).iter_vars) != 4 for b in epilogue):
        return None
    # an epilogue over a larger tensor (a squeeze-excitation scale: the conv of a pooled 1x1 plane times the
    # feature map) is not computed per conv output tile
    out = [int(d) if isinstance(d, tirx.IntImm) else d for d in sch.get(conv).writes[0].source.shape]
    if any(not _same_extents(sch.get(b), out) for b in epilogue):
        return None
    if any(not sch.get_consumers(b) for b in [conv, *epilogue][:-1]):
        return None
    return ConvBlocks(pad, conv, epilogue)


def find_conv(func: tirx.PrimFunc) -> tuple[s_tir.Schedule, ConvBlocks] | None:
    """A schedule of ``func`` and its fused conv, if ``func`` is one conv and elementwise blocks."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    convs = [b for b in blocks if _is_conv_block(sch.get(b))]
    if len(convs) != 1:
        return None
    found = match_conv(sch, convs[0])
    if found is None or len(blocks) != 1 + len(found.epilogue) + (found.pad is not None):
        return None
    return sch, found


def shape_of(sch: s_tir.Schedule, block: s_tir.SBlockRV, index: int = 0, write: bool = False) -> list[int | tirx.PrimExpr]:
    buf = (sch.get(block).writes if write else sch.get(block).reads)[index].source
    return [int(s) if isinstance(s, tirx.IntImm) else s for s in buf.shape]


def fold_epilogue(sch: s_tir.Schedule, blocks: ConvBlocks) -> s_tir.SBlockRV:
    """Inline the epilogue into its last block and make the conv accumulate in a local buffer; return that last block.

    Without an epilogue the conv writes the output: a local cache of it gets the write-back block.
    """
    for block in blocks.epilogue[:-1]:
        sch.compute_inline(block)
    if blocks.epilogue:
        sch.set_scope(blocks.conv, 0, "local")
        return blocks.epilogue[-1]
    return sch.cache_write(blocks.conv, 0, "local")


def lanes_for(extent: int) -> int:
    """A vector width that divides ``extent``, so tiles need no predicate: 16 or 8 lanes if they divide it (LLVM
    splits other widths into pieces with shuffles), else the widest divisor up to MAX_LANES."""
    return next((d for d in (MAX_LANES, 8) if extent % d == 0), None) or largest_divisor(extent, MAX_LANES)


def largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, max(1, limit) + 1) if extent % d == 0)


def schedule_conv2d(sch: s_tir.Schedule, blocks: ConvBlocks) -> None:
    """Schedule a conv (groups = 1 or grouped, not depthwise) and its epilogue in ``sch``, in place."""
    n_in, ci_in, h_in, w_in = shape_of(sch, blocks.conv, 0)
    _, co, oh, ow = shape_of(sch, blocks.conv, write=True)
    kh, kw = (int(sch.get(l).extent) for l in sch.get_loops(blocks.conv)[5:7])
    final = fold_epilogue(sch, blocks)
    if kh == kw == 1 and (h_in, w_in) == (oh, ow):
        _schedule_pointwise(sch, blocks, final, ci_in, co, oh * ow, ow)
    else:
        _schedule_spatial(sch, blocks, final, co, oh, ow)


def split_column_phases(sch: s_tir.Schedule, pad: s_tir.SBlockRV | None, stride: int) -> None:
    """Store the padded input as ``stride`` planes of every stride-th column, so a strided conv reads vectors.

    Column x of a row goes to plane x % stride at x // stride; output column ox, tap kx then reads plane
    kx % stride at ox + kx // stride, contiguous along ox.
    """
    if pad is None or stride == 1 or shape_of(sch, pad, write=True)[3] % stride:
        return
    sch.transform_layout(pad, ("write", 0), lambda n, c, y, x: (n, c, x % stride, y, x // stride))
    sch.transform_block_layout(pad, lambda n, c, y, x: (n, c, x % stride, y, x // stride))  # contiguous writes


def column_stride(sch: s_tir.Schedule, blocks: ConvBlocks) -> int:
    """The conv's stride along the output row, read from the input and output widths and the kernel."""
    w_in = shape_of(sch, blocks.conv, 0)[3]
    ow = shape_of(sch, blocks.conv, write=True)[3]
    kw = int(sch.get(sch.get_loops(blocks.conv)[6]).extent)
    return (w_in - kw) // (ow - 1) if ow > 1 else 1


def _channel_tile(co: int, vectors: int) -> int:
    return largest_divisor(co, max(1, ACCUMULATORS // vectors))


def _schedule_pointwise(sch, blocks: ConvBlocks, final, ci: int, co: int, pixels: int, ow: int) -> None:
    # Index the accumulator and both loop nests by the flat pixel p = y * ow + x.
    sch.transform_layout(blocks.conv, ("write", 0), lambda n, c, y, x: (n, c, y * ow + x))
    sch.transform_block_layout(blocks.conv, lambda n, c, y, x, r, ky, kx: (n, c, y * ow + x, r, ky, kx))
    sch.transform_block_layout(final, lambda n, c, y, x: (n, c, y * ow + x))
    if pixels % MAX_LANES and pixels > 1 and blocks.pad is not None:
        # (A one-pixel plane, as after a global pooling, is indexed by the constant 0: padding it would only repeat
        # the reduction, and it has no partial vector to pad.)
        # Whole vectors over a plane that is not: read a zero-padded copy of the input (1/co of the work) and
        # accumulate the padded plane; the epilogue writes the real pixels.
        sch.transform_layout(blocks.pad, ("write", 0), lambda n, c, y, x: (n, c, y * ow + x))
        sch.transform_block_layout(blocks.pad, lambda n, c, y, x: (n, c, y * ow + x))
        # Two vectors per tile once the plane is large enough that the extra padding stays small.
        multiple = MAX_LANES * (2 if pixels > 4 * MAX_LANES else 1)
        sch.pad_einsum(blocks.conv, [1, 1, multiple, 1, 1, 1])
        padded_input = sch.get_producers(blocks.conv)[0]
        crop = sch.get_consumers(blocks.conv)[0]
        sch.compute_inline(blocks.pad)
        sch.compute_inline(crop)
        sch.set_scope(blocks.conv, 0, "local")
        n, c, p = sch.get_loops(padded_input)
        # Images in parallel, channels serial: at batch 1 the copy (ci x a padded plane of a late, small layer) costs
        # less on one thread than splitting it over workers that must all be woken and waited for.
        sch.parallel(n)
        sch.vectorize(p)
        pixels = -(-pixels // multiple) * multiple
    elif blocks.pad is not None:
        sch.compute_inline(blocks.pad)  # a 1x1 conv without padding: the "padding" is a copy
    lanes = lanes_for(pixels)
    vectors = largest_divisor(pixels // lanes, 4)
    ct = _channel_tile(co, vectors)
    n, c, p, r, ky, kx = sch.get_loops(blocks.conv)
    c_o, c_i = sch.split(c, [None, ct])
    tiles = pixels // (vectors * lanes)
    chunk = largest_divisor(tiles, max(1, CHUNK_BYTES // (ci * vectors * lanes * 4)))
    p_c, p_o, p_v, p_l = sch.split(p, [None, chunk, vectors, lanes])
    sch.reorder(n, p_c, c_o, p_o, r, ky, kx, c_i, p_v, p_l)
    _finish_tile(sch, blocks.conv, final, outer=[n, p_c, c_o, p_o], tile=[c_i, p_v], lanes=p_l, at=None, reduce_from=r)


def _schedule_spatial(sch, blocks: ConvBlocks, final, co: int, oh: int, ow: int) -> None:
    """Parallel tasks are bands of output rows with every output channel, each padding the input rows it reads.

    A separate parallel padding loop would be a second parallel region per call, and each region waits for every
    worker; per band, the padding repeats only the kh - stride rows the next band also reads.
    """
    split_column_phases(sch, blocks.pad, column_stride(sch, blocks))
    lanes = lanes_for(ow)
    vectors = largest_divisor(ow // lanes, 4)
    ct = _channel_tile(co, vectors)
    n, c, y, x, r, ky, kx = sch.get_loops(blocks.conv)
    c_o, c_i = sch.split(c, [None, ct])
    y_o, y_i = sch.split(y, [None, largest_divisor(oh, max(1, oh // BANDS))])
    x_o, x_v, x_l = sch.split(x, [None, vectors, lanes])
    sch.reorder(n, y_o, c_o, y_i, x_o, r, ky, kx, c_i, x_v, x_l)
    taps = [int(sch.get(loop).extent) for loop in (r, ky, kx)]
    if taps[0] * taps[1] * taps[2] <= UNROLLED_TAPS:  # few input channels (the stem): no loop overhead per tap
        for loop in (ky, kx):  # (the input channels unrolled too made LLVM spill the register tile)
            sch.unroll(loop)
    _finish_tile(sch, blocks.conv, final, outer=[n, y_o], tile=[c_i, x_v], lanes=x_l, at=x_o, reduce_from=r)
    if blocks.pad is not None:
        sch.compute_at(blocks.pad, sch.get_loops(blocks.conv)[0])
        copy_along_rows(sch, blocks.pad)


def copy_along_rows(sch: s_tir.Schedule, pad: s_tir.SBlockRV) -> None:
    """Vectorize the padding copy along the row; with column phases, loop over the phases innermost instead.

    A vector of one phase plane gathers every stride-th input column, one scalar load per lane; with the phases
    innermost the copy reads the input row in order.
    """
    loops = sch.get_loops(pad)
    shape = shape_of(sch, pad, write=True)  # (n, c, phase, y, x // stride) with phases: see split_column_phases
    phases = sch.get(loops[-3]).extent if len(loops) >= 3 else None
    if len(shape) == 5 and isinstance(phases, tirx.IntImm) and int(phases) == shape[2]:
        phase, y, x = loops[-3:]
        sch.reorder(y, x, phase)
        sch.unroll(phase)
    else:  # no phases, or loops of one iteration (one phase or one row read per task) dropped by compute_at
        sch.vectorize(loops[-1])
    for loop in sch.get_loops(pad):
        sch.annotate(loop, "pragma_loop_partition_hint", 1)


def _finish_tile(sch, conv, final, outer, tile, lanes, at, reduce_from) -> None:
    """Parallelize ``outer``, compute the epilogue per tile (under ``at``, or the fused outer loop), unroll the
    register tile and its epilogue (a loop left over the tile would index the accumulators at run time, keeping
    them in memory) and vectorize its lanes."""
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    at = fused if at is None else at
    sch.reverse_compute_at(final, at)
    loops = sch.get_loops(final)
    depth = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(at))) + 1
    *epilogue, inner = loops[depth:]
    _, vec = sch.split(inner, [None, lanes_for(int(sch.get(inner).extent))])
    sch.vectorize(vec)
    for loop in (*tile, *epilogue):
        sch.unroll(loop)
    sch.vectorize(lanes)
    sch.decompose_reduction(conv, reduce_from)


class Conv2D(CPUScheduleRule):
    """NCHW conv2d with groups = 1 or a few groups (depthwise convs go to DepthwiseConv2D)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        found = find_conv(func)
        if found is None:
            return None
        sch, blocks = found
        if is_depthwise(sch, blocks.conv):
            return None
        schedule_conv2d(sch, blocks)
        return sch


def is_depthwise(sch: s_tir.Schedule, conv: s_tir.SBlockRV) -> bool:
    """groups == input channels == output channels: the weight has one input channel and the reduction over it is 1."""
    _, ci, _, _ = shape_of(sch, conv, 0)
    _, co, _, _ = shape_of(sch, conv, write=True)
    reduce_channels = int(sch.get(sch.get_loops(conv)[4]).extent)
    return reduce_channels == 1 and ci == co and ci != 1

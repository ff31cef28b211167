"""Matmuls and batched matmuls on the CPU: a register-tiled micro-kernel.

A block ``C[b..., m, n] += A[b..., m, k] * B[b..., k, n]`` (loops in the order
batch..., m, n, k, as Relax legalization and our dense kernels produce them;
``n`` the innermost index of C and of B, so both are contiguous along it) is
tiled into ``ROWS x COLS`` output tiles accumulated in registers: for each k,
one broadcast of ``A[m, k]`` per row and a ``COLS``-wide vector load of
``B[k, n:n+COLS]`` feed ``ROWS x COLS / lanes`` FMAs; a static K runs several k steps per loop iteration
(:func:`k_unroll`). Tiles run in parallel.
Elementwise epilogues (the attention scale, a bias add) are applied as a tile
is written back, so the unscaled product never reaches memory. One-row kernels
tile several panels at once (:func:`gemv_panels`); a symbolic width narrower
than one vector runs the plain loops instead (:func:`narrow_in_loops`).
"""

from __future__ import annotations

from tvm import s_tir, te, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.ir.expr import TensorLoad
from tvm.target import Target

from ..tir_nodes import collected, substituted
from .elementwise import LANES

ROWS = 8  # rows of a register tile: 8 x 2 zmm accumulators, plus B's two vectors and the broadcast
COLS = 32  # columns of a register tile: two AVX-512 vectors
K_UNROLL = 8  # k steps per iteration of the tile's k loop where K allows: fewer loop branches between the FMAs
SLICE = "columns_of_padded_product"  # the block that writes a padded product's real columns (:func:`padded_product`)


def is_matmul(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether ``block`` is ``C[..., m, n] += A[..., m, k] * B[..., k, n]`` with loops batch..., m, n, k."""
    stmt = sch.get(block)
    iters = list(stmt.iter_vars)
    if len(iters) < 3 or len(stmt.writes) != 1:
        return False
    kinds = [iv.iter_type for iv in iters]
    if kinds[-1] != tirx.IterVar.CommReduce or any(t != tirx.IterVar.DataPar for t in kinds[:-1]):
        return False
    *_, m, n, k = (iv.var for iv in iters)
    body = stmt.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return False
    if len(body.indices) < 2 or not (_uses_only(body.indices[-2], m) and _uses_only(body.indices[-1], n)):
        return False
    product = body.value.b
    if not isinstance(product, tirx.Mul):
        return False
    loads = [product.a, product.b]
    if not all(isinstance(ld, TensorLoad) for ld in loads):
        return False
    a, b = loads
    if not (_uses(a.indices[-1], k) and _uses_only(a.indices[-2], m)):
        return False
    return _uses(b.indices[-1], n) and not _uses(b.indices[-1], k) and any(_uses(i, k) for i in b.indices[:-1])


def padded_product(shape: list, fcompute, name: str, index: str | None = None) -> te.Tensor:
    """``te.compute(shape, fcompute, name)`` over whole tiles of ``COLS`` columns: computed over ``shape[-1]`` rounded
    up to ``COLS`` (``fcompute`` must read zeros, or anything, past the real columns: the packed and decoded weights
    are zero-padded to whole panels), then its first ``shape[-1]`` columns (block ``SLICE``). Tiled by
    :func:`schedule_matmul`, every tile's FMAs run unpredicated in vectors; the columns past the last are dropped
    where the tile is written back. (Tiled over ``shape[-1]`` itself, a tile past the last column is predicated on
    its lanes, and TVM then computes it in scalars: the classifier's 10 columns 12x slower.) Rows in one dim only:
    with leading dims too, TVM's code generator loses the padded slab's allocation (the tile loop partitioned over
    two symbolic dims), so those products stay unpadded. ``index``: the columns' index type, by default the rows'
    (one index type lays the slab out by tile: over several tiles of columns, TVM's code generator otherwise loses
    its allocation where the tile loop is kept both serial and parallel, :mod:`..serial_small_loops`)."""
    n = int(shape[-1])
    padded = -(-n // COLS) * COLS
    if padded == n or len(shape) != 2:
        return te.compute(shape, fcompute, name=name)
    index = index or str(getattr(shape[0], "ty", "int32"))
    product = te.compute([shape[0], tirx.IntImm(index, padded)], fcompute, name=name)
    return te.compute([shape[0], tirx.IntImm(index, n)], lambda *i: product(*i), name=SLICE)


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _uses_only(expr, var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


def schedule_matmul(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, rows: int = ROWS, cols: int = COLS, panels: int = 1,
    k_step: int | None = None, batch_inside: bool = False, batch_in_task: bool = False,
) -> s_tir.schedule.SBlockRV:
    """Tile ``block`` (see :func:`is_matmul`) into register tiles, inlining its elementwise consumers.

    For kernels of our own too: a matmul over a weight decoded into a buffer qualifies when the buffer is laid out
    with the output channel innermost, e.g. ``dense.pack``'s [N / COLS, K, COLS] read as ``B[n // COLS, k, n % COLS]``.
    A tile is ``rows`` x ``panels * cols``: ``panels`` runs of ``cols`` channels (the packed layout's panels), each
    its own vector loop (see :func:`gemv_panels`). ``k_step`` consecutive k are unrolled in each iteration (a weight
    format with several k in one byte decodes the byte once for all of them; it must divide K; by default
    :func:`k_unroll`). Producers of A or B (a decode) are left where they are. ``batch_inside``: the batch loops
    run inside the loop over a static n's panels, so each parallel task's panel of B serves every batch (B shared
    by the batch, as a weight is); ``batch_in_task``: they run inside each task over n's panels, which are the only
    parallel loop (a panel decoded at the top of its task serves every batch and row). Returns the block that
    writes the tile back.
    """
    *batch, m, n, k = sch.get_loops(block)
    if k_step is None:  # a symbolic n's tail tile runs in guarded scalars: unrolled k would multiply them
        k_step = k_unroll(sch.get(k).extent) if isinstance(sch.get(n).extent, tirx.IntImm) else 1
    static = [isinstance(sch.get(loop).extent, tirx.IntImm) for loop in (m, n)]
    if static[1] and int(sch.get(n).extent) < cols * panels and int(sch.get(n).extent) % LANES == 0:
        cols, panels = int(sch.get(n).extent), 1  # whole vectors narrower than a tile (attention scores at 16 tokens)
    # A static n that is not a multiple of the tile has its last tile peeled (below). Not with int64 indices and a
    # symbolic m: TVM's loop partitioning then mixes int32 and int64 indices and the build fails.
    peel_n = (static[1] and int(sch.get(n).extent) % (cols * panels) != 0
              and (static[0] or str(sch.get(n).loop_var.ty) == "int32"))
    if not static[1]:
        cols, panels = min(cols, LANES), 1  # the tail tile of a symbolic n runs in scalars: keep it one vector wide
    width = cols * panels
    mo, mi = sch.split(m, [None, rows])
    no, ni = sch.split(n, [None, width])
    nj, ni = sch.split(ni, [panels, cols]) if panels > 1 else (None, ni)
    # A symbolic dim's tail tile is predicated: its tile loop stays serial so that loop partitioning can peel
    # the tail off and the full tiles run unpredicated (a predicate on the vector lanes would scalarize them).
    outer = [loop for loop, s in zip((no, mo), (static[1], static[0])) if s]
    inner = [loop for loop, s in zip((mo, no), static) if not s]
    hinted = inner
    if batch_in_task:  # the panels the only tasks; the batch and every row block inside each
        if not static[1]:
            raise ValueError("schedule_matmul: batch_in_task needs a static n")
        outer, inner = [no], [*batch, mo]
    ko, ki = sch.split(k, [None, k_step]) if k_step > 1 else (k, None)
    tasks = outer if batch_in_task else [*outer, *batch] if batch_inside else [*batch, *outer]
    sch.reorder(*tasks, *inner, ko, *([ki] if ki else []), mi, *([nj] if nj else []), ni)
    tile_loop = [*tasks, *inner][-1]  # the innermost loop over tiles: the batch's where it runs inside a static tile's
    for loop in hinted:
        sch.annotate(loop, "pragma_loop_partition_hint", 1)
    tile = sch.cache_write(block, 0, "local")
    # The accumulator indexed by (tile, position in the tile): each tile loop iteration touches one static
    # ROWS x COLS slab, which buffer compaction shrinks to registers also where a symbolic dim's tail is predicated
    # (indexed like the output, the predicated region has a symbolic extent and the buffer stays whole).
    nb = len(batch)
    consumers = sch.get_consumers(tile)
    sliced = bool(consumers) and sch.get(consumers[0]).name_hint == SLICE  # a padded product (:func:`padded_product`)
    # the index map needs one index type: over the written dims for a padded product (which indexes its columns as
    # its rows), over every dim, the reduction's too, elsewhere (as the kernels measured before it were scheduled)
    iters = sch.get(block).iter_vars
    one_index_type = len({str(iv.var.ty) for iv in (iters[:-1] if sliced else iters)}) == 1

    def by_tile(*i):
        return (*i[:nb], i[nb] // rows, i[nb + 1] // width, i[nb] % rows, i[nb + 1] % width)

    if one_index_type:
        sch.transform_layout(block, ("write", 0), by_tile, assume_injective_transform=True)
    sch.reverse_compute_at(tile, tile_loop, preserve_unit_loops=True)
    # an epilogue chain, one block after the other; after a padded product's slice (:func:`padded_product`) into the
    # slice, which then follows the write-back in the tile loop (inlined into the write-back, TVM keeps one of the
    # two bounds, rows or columns, on the block it makes: the other tile's rows or columns would be written)
    head = consumers[0] if sliced else tile
    while consumers := sch.get_consumers(head):
        for consumer in consumers:
            sch.reverse_compute_inline(consumer)
    if head != tile:  # the padded product held as the accumulator is: one tile's slab, in registers
        sch.set_scope(tile, 0, "local")
        if one_index_type:
            sch.transform_layout(tile, ("write", 0), by_tile, assume_injective_transform=True)
        sch.reverse_compute_at(head, tile_loop, preserve_unit_loops=True)
    for loop in (ki, mi, nj):
        if loop is not None:
            sch.unroll(loop)
    sch.vectorize(ni)
    sch.vectorize(sch.get_loops(tile)[-1])
    if tasks:
        tiles = sch.fuse(*tasks)
        sch.parallel(tiles)
        if peel_n:  # the full tiles then run unpredicated (a predicate on the lanes would scalarize them)
            sch.annotate(tiles, "pragma_loop_partition_hint", 1)
    init = sch.decompose_reduction(block, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    for loop in sch.get_loops(init)[-3 if nj else -2:-1]:
        sch.unroll(loop)
    return tile


def k_unroll(extent: tirx.PrimExpr) -> int:
    """The k steps a tile's loop iteration unrolls: up to ``K_UNROLL``, a divisor of a static K (no tail), else 1."""
    if not isinstance(extent, tirx.IntImm):
        return 1
    return next(step for step in (K_UNROLL, 4, 2, 1) if int(extent) % step == 0)


def gemv_panels(n: int, cols: int = COLS) -> int:
    """Panels of ``cols`` channels per one-row tile for ``n`` channels: with one panel a k step is two dependent FMA
    chains (one per vector) and waits on the FMA latency; four give eight independent chains. As many as divide
    the panels into an even number of tiles (the two threads' shares)."""
    count = -(-n // cols)
    return next(p for p in (4, 2, 1) if count % (2 * p) == 0 or p == 1)


class Matmul(CPUScheduleRule):
    """A PrimFunc that is one matmul (see :func:`is_matmul`) followed by elementwise blocks."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or not is_matmul(sch, blocks[0]):
            return None
        if any(_reduces(sch, b) for b in blocks[1:]):
            return None
        width = sch.get(sch.get_loops(blocks[0])[-2]).extent
        try:
            schedule_matmul(sch, blocks[0])
        except s_tir.ScheduleError:  # an epilogue that cannot be inlined: leave it to the generic rewrite
            return None
        if isinstance(width, tirx.IntImm):
            return sch
        return s_tir.Schedule(narrow_in_loops(func, sch.mod["main"], width < LANES))


def narrow_in_loops(func: tirx.PrimFunc, tiled: tirx.PrimFunc, narrow: tirx.PrimExpr) -> tirx.PrimFunc:
    """``tiled`` (``func`` scheduled), but ``func``'s own loop nest where ``narrow`` holds at run time.

    A symbolic width (attention scores: n = the sequence length) below one vector has no full tile: each tile is
    then a predicated tail whose ROWS x LANES guarded scalar updates per k (128 for one useful one at one token) cost
    far more than the plain loops, one scalar multiply-add per product."""
    plain, scheduled = func.body.block, tiled.body.block
    root = s_tir.SBlock([], [], [], "root", tirx.IfThenElse(narrow, fresh_definitions(plain.body), scheduled.body),
                        None, [*plain.alloc_buffers, *scheduled.alloc_buffers])
    return tiled.with_body(s_tir.SBlockRealize([], True, root))


def fresh_definitions(stmt):
    """``stmt`` with new variables for its loops, block iterators and bindings (a copy defines nothing the original
    does)."""
    fresh = {}
    for node in collected(stmt, (tirx.For, tirx.Bind, s_tir.SBlock)):
        if isinstance(node, tirx.For):
            defined = [node.loop_var]
        elif isinstance(node, tirx.Bind):
            defined = [node.var]
        else:
            defined = [iv.var for iv in node.iter_vars]
        for var in defined:
            fresh[var] = tirx.Var(var.name, var.ty)
    return substituted(stmt, fresh)


def _reduces(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    return any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)

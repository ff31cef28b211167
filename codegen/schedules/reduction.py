"""Row reductions on the CPU (softmax, layer norm, RMS norm, a mean over the last axis or over a plane, as a global
average pool's): rows in parallel.

The blocks of such a PrimFunc share leading spatial axes (the rows) and run
along the last axis within a row (a reduction of it, an elementwise pass over
it, or a per-row scalar like the mean). Schedule: rows in parallel, per-row
results computed in the row loop that reads them; elementwise passes
vectorized; reductions over a static length vectorized too, as ``LANES``
partial results (``rfactor``) summed once per row.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .elementwise import LANES, vectorize_inner


def iter_kinds(sch: s_tir.Schedule, block) -> str:
    """The block's iterators as a string, "S" (spatial) or "R" (reduction) each."""
    return "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in sch.get(block).iter_vars)


def static_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent where it is a constant, else None."""
    extent = sch.get(loop).extent
    return extent.value if isinstance(extent, tirx.IntImm) else None


def _rows(sch: s_tir.Schedule, blocks) -> int | None:
    """The number of leading spatial axes all blocks share, if they fit the pattern, else None."""
    kinds = [iter_kinds(sch, b) for b in blocks]
    rows = len(kinds[-1]) - 1
    if rows < 1 or kinds[-1] != "S" * (rows + 1) or "R" not in "".join(kinds):
        return None
    for kind in kinds:
        if kind not in ("S" * rows, "S" * (rows + 1), "S" * rows + "R", "S" * (rows + 1) + "R"):
            return None
    return rows


class RowReduction(CPUScheduleRule):
    """A PrimFunc of reductions over the last axis and elementwise blocks, rows in parallel."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        try:
            for block in blocks:
                _merge_reduced_axes(sch, block)
        except s_tir.ScheduleError:
            return None
        if len(blocks) < 2 or (rows := _rows(sch, blocks)) is None:
            return None
        try:
            return _schedule(sch, blocks, rows)
        except (s_tir.ScheduleError, _Unfit):
            return None


def _merge_reduced_axes(sch: s_tir.Schedule, block) -> None:
    """A block reducing over several trailing axes of static extents (a global average pool: a plane's rows and
    columns) made to reduce over one, their product, in the same order: the pattern's reduction over the last axis,
    in ``LANES`` partial sums where the product is a multiple of them (the cnn's 16x16 pool at batch 8, one thread:
    43 -> 3 us; one scalar chain of adds per row before). Other products are left as they are (mobilenet's 7x7:
    the rows' scalar chains either way)."""
    iters = list(sch.get(block).iter_vars)
    reduced = len(iter_kinds(sch, block)) - len(iter_kinds(sch, block).rstrip("R"))
    extents = [iv.dom.extent for iv in iters[len(iters) - reduced:]]
    if reduced < 2 or "R" in iter_kinds(sch, block)[:len(iters) - reduced] \
            or not all(isinstance(e, tirx.IntImm) for e in extents):
        return
    size = 1
    for extent in extents:
        size *= int(extent)
    if size % LANES or size == LANES:
        return

    def merged(*v):
        index = v[len(iters) - reduced]
        for var, extent in zip(v[len(iters) - reduced + 1:], extents[1:]):
            index = index * int(extent) + var
        return (*v[:len(iters) - reduced], index)

    sch.transform_block_layout(block, tirx.IndexMap.from_func(merged, ndim=len(iters)))


class _Unfit(Exception):
    """The blocks fit the pattern's axes but not its shape (e.g. an extra spatial axis that is not a lane)."""


def _schedule(sch: s_tir.Schedule, blocks, rows: int) -> s_tir.Schedule:
    # An elementwise step along the row read by one block only (softmax's x - max; its exponentials, which
    # :mod:`..softmax` computes once per reader) is inlined into its reader.
    kept = []
    for block in blocks[:-1]:
        if iter_kinds(sch, block) == "S" * (rows + 1) and len(sch.get_consumers(block)) == 1:
            sch.compute_inline(block)
        else:
            kept.append(block)
    # A reduction over a static multiple of LANES becomes LANES partial results (rfactor needs the block still at
    # the root); over a symbolic length it stays scalar unless written lane-partial (rfactor would drop the
    # predicate of the split's tail).
    partials = {}
    for block in kept:
        k = sch.get_loops(block)[-1]
        extent = static_extent(sch, k)
        if iter_kinds(sch, block) == "S" * (rows + 1) + "R" and static_extent(sch, sch.get_loops(block)[rows]) == LANES:
            # already lane-partial (:mod:`..softmax`); a unit axis there is a kept dim (a pool's [n, c, 1, 1])
            partials[sch.get(block).name_hint] = block
        elif "R" in iter_kinds(sch, block) and extent is not None and extent % LANES == 0 and extent > LANES:
            _, ki = sch.split(k, [None, LANES])
            partials[sch.get(block).name_hint] = sch.rfactor(ki, factor_axis=rows)
    # Blocks that write whole rows (the output; TOPI's softmax's exponentials) each run as a parallel loop over rows;
    # per-row scalars (sums, means) are computed in the row loop of the block that reads them. A whole-row
    # intermediate computed per row would need a row buffer, which a symbolic row length makes a heap
    # allocation per row: it stays a buffer of the function, filled by its own loop.
    names = [sch.get(b).name_hint for b in kept + [blocks[-1]]]
    anchors = {n for b, n in zip(kept + [blocks[-1]], names) if iter_kinds(sch, b) == "S" * (rows + 1)}
    row_loop = {}
    for block, name in zip(kept + [blocks[-1]], names):
        if name in anchors:
            row_loop[name] = sch.fuse(*sch.get_loops(block)[:rows])
            sch.parallel(row_loop[name])
    for block, name in reversed(list(zip(kept, names))):
        if name in anchors:
            continue
        reader = next(n for n in names[names.index(name) + 1:]
                      if any(sch.get(c).name_hint == n for c in sch.get_consumers(block)))
        row_loop[name] = row_loop[reader]
        sch.compute_at(block, row_loop[name], preserve_unit_loops=True)
        if name in partials and partials[name] is not block:
            sch.compute_at(partials[name], row_loop[name], preserve_unit_loops=True)
    for block, name in zip(kept + [blocks[-1]], names):
        if name in partials:  # loops: row, then the lane and unit loops of the row's axes, then ko
            partial = partials[name]
            *between, ko = sch.get_loops(partial)[1:]
            lane = next((loop for loop in between if static_extent(sch, loop) == LANES), None)
            if lane is None:
                raise _Unfit(name)
            sch.annotate(ko, "pragma_loop_partition_hint", 1)  # the last chunk of a symbolic row is tested
            sch.reorder(ko, lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(partial, ko)
            sch.vectorize(sch.get_loops(init)[-1])
        elif name in anchors:
            vectorize_inner(sch, sch.get_loops(block)[-1])
    return sch

"""Elementwise chains, transposes and copies on the CPU: one vectorized, parallel pass.

Every block but the last is inlined into the last (a fused chain like GELU's
add, divide, erf, add, multiply, multiply reads its input and writes its output
once); the output's innermost dim is vectorized and the dims above it run in
parallel.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

LANES = 16  # float32 lanes of an AVX-512 vector
CHUNK = 4 * LANES  # elements per vectorized inner loop: a few vectors per iteration hide the FMA latency


def vectorize_inner(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> s_tir.schedule.LoopRV:
    """Vectorize ``loop`` (the innermost of a block) in CHUNK- or LANES-wide pieces; returns the loop above them.

    A symbolic extent leaves a predicated tail piece: the loop over pieces is marked for loop partitioning, so the
    full pieces run unpredicated (a predicate on the lanes would scalarize them).
    """
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value <= CHUNK:
        sch.vectorize(loop)
        return None
    if isinstance(extent, tirx.IntImm):  # pieces that divide it (1000 classes: 8 lanes), else a tested tail
        width = next((w for w in (CHUNK, LANES, LANES // 2, LANES // 4) if extent.value % w == 0), LANES)
    else:
        width = LANES
    outer, inner = sch.split(loop, [None, width])
    sch.vectorize(inner)
    if not isinstance(extent, tirx.IntImm):  # (TVM's loop partitioning mixes index types on static extents)
        sch.annotate(outer, "pragma_loop_partition_hint", 1)
    return outer


class Elementwise(CPUScheduleRule):
    """A PrimFunc of spatial blocks only (elementwise ops, broadcasts, transposes, reshapes)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or any(iv.iter_type != tirx.IterVar.DataPar for b in blocks for iv in sch.get(b).iter_vars):
            return None
        try:
            for block in blocks[:-1]:
                sch.compute_inline(block)
        except s_tir.ScheduleError:
            return None
        loops = sch.get_loops(blocks[-1])
        if not loops:
            return None
        *outer, inner = loops
        extent = sch.get(inner).extent
        piece = vectorize_inner(sch, inner)
        if len(outer) > 1 and isinstance(extent, tirx.IntImm) and extent.value <= CHUNK:
            # A fused loop's index is split back into its dims by divisions (64-bit ones by symbolic extents);
            # over a short row (a head's 32 values in a transpose) they would cost more than the copy.
            outer = outer[:-1]
        if outer:
            sch.parallel(sch.fuse(*outer))
        elif piece is not None and isinstance(sch.get(piece).extent, tirx.IntImm):
            sch.parallel(piece)
        return sch

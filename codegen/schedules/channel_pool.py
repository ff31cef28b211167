"""A mean (or sum) over a plane per channel on the CPU (a global average pool over NCHW): channels in vectors.

TVM's reduction rule sums each channel's plane as one scalar chain (49 dependent adds for a 7x7 plane: the add's
latency per pixel). Here 16 channels are summed at once: per pixel, one vector of the 16 channels' values (a
gather, the channels a plane apart) added into 16 sums, then the elementwise step (the division by the plane's
size) on the 16 sums; images and groups of 16 channels in parallel.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .elementwise import LANES
from .reduction import iter_kinds, static_extent


class ChannelPool(CPUScheduleRule):
    """A reduction over the last two axes of a 4-D input into ``[n, c]`` (or ``[n, c, 1, 1]``), then an elementwise
    step into ``[n, c, 1, 1]``: the channels (a static multiple of LANES) in vectors."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) != 2 or iter_kinds(sch, blocks[0]) not in ("SSRR", "SSSSRR") or \
                iter_kinds(sch, blocks[1]) != "SSSS":
            return None
        total, result = blocks
        n, c, *units, kh, kw = sch.get_loops(total)  # units: the plane's unit axes where the sum keeps them
        channels, *unit_extents = (static_extent(sch, loop) for loop in (c, *units))
        result_extents = [static_extent(sch, loop) for loop in sch.get_loops(result)[1:]]
        if channels is None or channels % LANES or any(e != 1 for e in unit_extents) or \
                result_extents != [channels, 1, 1]:
            return None
        c_outer, lane = sch.split(c, [None, LANES])
        sch.reorder(n, c_outer, *units, kh, kw, lane)
        tasks = sch.fuse(n, c_outer)
        sch.parallel(tasks)
        sch.vectorize(lane)
        init = sch.decompose_reduction(total, kh)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.reverse_compute_at(result, tasks)
        sch.vectorize(sch.get_loops(result)[1])  # the 16 channels' lane loop (the unit loops after it)
        return sch

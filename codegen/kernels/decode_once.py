"""The CPU schedule shared by the decode-once matmuls (``bie-bitplane`` and ``bbs`` for several rows).

Their TE has a block ``xpad`` (x zero-padded to the decoded length), a block
``decoded`` (one channel's weights computed from the encoding) and the matmul
block ``out[m, n] = sum_k xpad[m, k] * decoded[n, k]``. Schedule: channels in
parallel; a channel's weights decoded once (vectorized) into a row buffer at the
channel loop, then 16-lane FMA accumulators per row of activations (the
reduction rfactor-ed over the lanes, which are summed once per output).
"""

from __future__ import annotations

from tvm import s_tir

from bie_compiler.codecs.base import PACK_LANES


def schedule_llvm(sch: s_tir.Schedule, block_name: str) -> None:
    block = sch.get_sblock(block_name)
    m, n, rk = sch.get_loops(block)
    rk_outer, rk_lane = sch.split(rk, [None, PACK_LANES])
    sch.reorder(n, m, rk_outer, rk_lane)
    partial = sch.rfactor(rk_lane, factor_axis=0)
    n, m, rk_outer, lane = sch.get_loops(partial)
    sch.vectorize(lane)
    sch.parallel(n)
    sch.reverse_compute_at(block, m)
    decoded = sch.get_sblock("decoded")
    sch.compute_at(decoded, n)
    sch.vectorize(sch.split(sch.get_loops(decoded)[-1], [None, PACK_LANES])[1])
    sch.decompose_reduction(partial, rk_outer)
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("xpad"))[-1], [None, PACK_LANES])[1])

"""Encoded matmuls above one row: each panel of the weight decoded once per call, consumed by the dense micro-kernel.

Above one row an encoded matmul is compute-bound, like the dense one, but
decoding the whole weight into a dense buffer first writes and re-reads it
(tens of MB per model call) and leaves the multiplication to a GEMM over
[K, N]. Here the weight is decoded panel by panel: a panel is ``matmul.COLS``
output channels over all of K, laid out K-major ([K, COLS], the layout
``dense.pack`` stores), decoded into a buffer of that size (the size of one
panel of the dense kernel's packed weight: L1 or L2) at the top of the panel's
parallel iteration, and then every row of activations runs over it in the
register tiles of :func:`..schedules.matmul.schedule_matmul`, the dense GEMM's
own schedule. Each weight is decoded once per call; the decode runs in vectors
along the channels of the panel, where the codecs' arrays hold them contiguously
(K-major panels of 16 or 32 channels).

The decoded value is the codec's reference decoder's (a per-channel scale is
applied to the sums instead), so the result differs from ``x @ decode(enc).T``
by float rounding only.
"""

from __future__ import annotations

from typing import Callable

from tvm import s_tir, te, tirx

from ..kernel_registry import KernelCall
from ..schedules import matmul

BLOCK = "panel_gemm"
DECODED = "decoded"
SCALED = "panel_gemm_scaled"
UNSHUFFLE = "unshuffle"
VECTOR = 16  # float32 lanes of one AVX-512 vector: the decode's vector width

PanelWeight = Callable[..., tirx.Expr]  # (panel, kk, c) -> weight kk of channel panel * COLS + c


def by_channel(weight: Callable, n: int, lanes: int) -> PanelWeight:
    """A panel weight from ``weight(channel, kk)``, whose arrays hold channels in runs of ``lanes`` (zero-padded to a
    whole run): the runs past the last one are not read (zero), so a panel never reads past the arrays."""
    cols = matmul.COLS
    readable = -(-n // lanes) * lanes
    if readable % cols == 0:
        return lambda p, kk, c: weight(p * cols + c, kk)

    def guarded(p, kk, c):
        # if_then_else, not Select: only the runs that exist are read. Its condition is the same for a vector of
        # lanes (a run), so the decode stays vectorized.
        value = weight(p * cols + c, kk)
        return tirx.if_then_else(p * cols + c // lanes * lanes < readable, value, tirx.const(0, value.ty))

    return guarded


def gemm(panel_weight: PanelWeight, holders: list[te.Tensor], n: int, k: int, scale: Callable | None = None,
         position: te.Tensor | None = None, group: int | None = None) -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], *holders, out [m, N])``, ``out[:, c] = x @ W[c] * scale(c)``, W's panels from
    ``panel_weight`` (a number, converted to float32).

    ``scale(c)``: a channel's scale, applied to the tile's sums as they are written back (the decode reads the
    panels' padding channels, the scales are read for channels that exist only). ``position`` (int32 [N], one of
    ``holders``): the weight's channels are stored rows, output channel ``c`` is stored row ``position[c]``; the
    product (and ``scale``) is in stored order, then unshuffled (a gather per output). ``group``: the codec's words
    hold this many consecutive weights of K (bit ``j`` of a word: weight ``j`` of its group); the decode then runs
    group by group, a run of channels at a time, so that each group's words and metadata are loaded once."""
    cols = matmul.COLS
    panels = -(-n // cols)
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    decoded = te.compute((panels, k, cols), lambda p, kk, c: panel_weight(p, kk, c).astype("float32"), name=DECODED)
    rk = te.reduce_axis((0, k), "rk")
    out = te.compute((x.shape[0], n), lambda i, c: te.sum(x[i, rk] * decoded[c // cols, rk, c % cols], axis=rk),
                     name=BLOCK)
    if scale is not None:
        product = out
        out = te.compute(product.shape, lambda i, c: product[i, c] * scale(c), name=SCALED)
    if position is not None:
        stored = out
        out = te.compute(stored.shape, lambda i, c: stored[i, position[c]], name=UNSHUFFLE)
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    block = sch.get_sblock(BLOCK)
    matmul.schedule_matmul(sch, block, keep=UNSHUFFLE)
    panel_loop = sch.get_loops(block)[0]  # the parallel loop over panels; rows of activations run inside it
    decode = sch.get_sblock(DECODED)
    sch.compute_at(decode, panel_loop)
    *_, kk, c = sch.get_loops(decode)  # (kk is not a loop when K is 1)
    runs, lane = sch.split(c, [None, VECTOR])
    if group is not None and k > group:  # a group's words and metadata are loaded and decoded once per run
        groups, kk = sch.split(kk, [None, group])
        sch.reorder(groups, runs, kk, lane)
    sch.vectorize(lane)
    sch.unroll(runs)
    if position is not None:
        rows, _ = sch.get_loops(sch.get_sblock(UNSHUFFLE))
        sch.parallel(rows)
    return sch.mod["main"]


def with_gemm(small: KernelCall, func: tirx.PrimFunc, kind: str) -> KernelCall:
    """``small`` (the one-row kernel) with ``func`` (a :func:`gemm` over the same constants) above one row."""
    small.large_batch = KernelCall(f"{kind}_gemm", func, small.constants)
    return small

"""How the GPU kernels map work to threads: one warp per output channel.

The bit-plane, index and tANS matmuls use the same grid (bbs has its own, see
``bbs_cuda``): ``blockIdx.x`` over the rows of activations, ``blockIdx.y`` over groups of CHANNELS_PER_BLOCK output
channels, ``threadIdx.y`` picks the channel (one warp each) and ``threadIdx.x``
the lane, which strides over that channel's encoding along K. The lanes'
partial sums are then reduced across the warp.

For TVMScript kernels, :func:`thread_loops` gives the loop kinds of this grid
and :func:`channel_warps` the whole grid with its reduction; with ``gpu=False``
the loops are serial and the buffers global, so the same loop nest runs on the
CPU for tests.
"""

from __future__ import annotations

from functools import partial

from tvm.script import tirx as T

WARP_SIZE = 32
CHANNELS_PER_BLOCK = 4  # warps per thread block: 128 threads

ROWS = "blockIdx.x"  # up to 2^31 - 1 rows
CHANNEL_GROUPS = "blockIdx.y"  # up to 65535 groups: N <= 262140
CHANNEL = "threadIdx.y"
LANE = "threadIdx.x"


def bound_to(gpu: bool):
    """``tag -> loop kind``: a loop bound to the thread tag, or a serial loop for the CPU."""
    return (lambda tag: partial(T.thread_binding, thread=tag)) if gpu else (lambda tag: T.serial)


def scopes(gpu: bool) -> tuple[str, str]:
    """The (shared, local) storage scopes: a thread block's and a thread's, or global memory for the CPU."""
    return ("shared", "local") if gpu else ("global", "global")


def thread_loops(gpu: bool):
    """(rows, groups, channels, lanes) loop kinds: thread-bound, or serial for the CPU."""
    bound = bound_to(gpu)
    return bound(ROWS), bound(CHANNEL_GROUPS), bound(CHANNEL), bound(LANE)


def channel_warps(gpu: bool, n: int):
    """The grid as a macro ``(m, out, scales, lane_sum)``: for every row ``i`` of activations and output channel
    ``c`` a warp whose lanes each run ``lane_sum(acc, i, c, lane)`` into a zeroed one-element ``acc``; the lanes'
    sums meet in shared memory and lane 0 writes ``out[i, c] = scales[c] * their sum``."""
    rows, groups, channels, lanes = thread_loops(gpu)
    shared, local = scopes(gpu)
    num_groups = -(-n // CHANNELS_PER_BLOCK)

    @T.macro
    def grid(m, out, scales, lane_sum):
        for i in rows(m):
            for group in groups(num_groups):
                partial_sums = T.decl_buffer((CHANNELS_PER_BLOCK, WARP_SIZE), "float32", scope=shared)
                for c in channels(CHANNELS_PER_BLOCK):
                    for lane in lanes(WARP_SIZE):
                        acc = T.decl_buffer((1,), "float32", scope=local)
                        acc[0] = T.float32(0)
                        if group * CHANNELS_PER_BLOCK + c < n:
                            lane_sum(acc, i, group * CHANNELS_PER_BLOCK + c, lane)
                        partial_sums[c, lane] = acc[0]
                if gpu:
                    T.tvm_storage_sync("shared")
                for c in channels(CHANNELS_PER_BLOCK):
                    for lane in lanes(WARP_SIZE):
                        if lane == 0 and group * CHANNELS_PER_BLOCK + c < n:
                            total = T.decl_buffer((1,), "float32", scope=local)
                            total[0] = T.float32(0)
                            for other in range(WARP_SIZE):
                                total[0] = total[0] + partial_sums[c, other]
                            out[i, group * CHANNELS_PER_BLOCK + c] = total[0] * scales[group * CHANNELS_PER_BLOCK + c]

    return grid

"""How the GPU kernels map work to threads: one warp per output channel.

The index and tANS matmuls use the same grid (bbs and the bit-plane tables have their own, see
``bbs_cuda``, ``bitplane_cuda``): ``blockIdx.x`` over tiles of rows of activations, ``blockIdx.y`` over groups of CHANNELS_PER_BLOCK output
channels, ``threadIdx.y`` picks the channel (one warp each) and ``threadIdx.x``
the lane, which strides over that channel's encoding along K, decoding each
entry once for the tile's rows. The lanes' partial sums are then reduced in shared memory.

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

ROWS = "blockIdx.x"  # up to 2^31 - 1 tiles of rows
ROWS_PER_TILE = 4  # rows of activations per thread block when m > 1 (one when m is 1)
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


def channel_warps(gpu: bool, n: int, rows: int = 1):
    """The grid as a macro ``(m, out, scales, lane_sum)`` over tiles of ``rows`` rows of activations: for every tile
    from row ``i0`` and output channel ``c`` a warp whose lanes each run ``lane_sum(acc, i0, c, lane)`` into a
    zeroed ``acc`` of one element per row of the tile (whatever each lane reads of the encoding serves every row);
    the lanes' sums meet in shared memory and lane 0 writes ``out[i0 + r, c] = scales[c] * their sum`` for the
    tile's rows below m (``lane_sum`` must read rows past m clamped, or not at all)."""
    tiles, groups, channels, lanes = thread_loops(gpu)
    shared, local = scopes(gpu)
    num_groups = -(-n // CHANNELS_PER_BLOCK)

    @T.macro
    def grid(m, out, scales, lane_sum):
        for tile in tiles((m + (rows - 1)) // rows):
            for group in groups(num_groups):
                partial_sums = T.decl_buffer((CHANNELS_PER_BLOCK, rows, WARP_SIZE), "float32", scope=shared)
                for c in channels(CHANNELS_PER_BLOCK):
                    for lane in lanes(WARP_SIZE):
                        acc = T.decl_buffer((rows,), "float32", scope=local)
                        for r in T.unroll(rows):
                            acc[r] = T.float32(0)
                        if group * CHANNELS_PER_BLOCK + c < n:
                            lane_sum(acc, tile * rows, group * CHANNELS_PER_BLOCK + c, lane)
                        for r in T.unroll(rows):
                            partial_sums[c, r, lane] = acc[r]
                if gpu:
                    T.tvm_storage_sync("shared")
                for c in channels(CHANNELS_PER_BLOCK):
                    for lane in lanes(WARP_SIZE):
                        if lane < rows and group * CHANNELS_PER_BLOCK + c < n and tile * rows + lane < m:
                            total = T.decl_buffer((1,), "float32", scope=local)
                            total[0] = T.float32(0)
                            for other in range(WARP_SIZE):
                                total[0] = total[0] + partial_sums[c, lane, other]
                            out[tile * rows + lane, group * CHANNELS_PER_BLOCK + c] = \
                                total[0] * scales[group * CHANNELS_PER_BLOCK + c]

    return grid

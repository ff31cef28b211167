"""Index-loop matmuls on the GPU (``bie-binary`` index layout, ``bie-blocked``): one warp per output channel.

The lanes of a channel's warp (see ``warp_layout``) stride over its non-zeros,
each adding or subtracting the activations its entries select; the 32 partial
sums meet in shared memory and lane 0 adds them and applies the scale. The
entries read by a warp's 32 lanes are consecutive, so the index stream is read
coalesced. ``bie-blocked`` walks the blocks of K in order, all lanes together
(they all read the block's count), and spreads each block's entries over the lanes.

``gpu=False`` builds the same loop nest with the thread loops serial and the
shared/local buffers global: it runs on the CPU, so tests can check the GPU
kernels' indexing and reduction against the reference decoders on a machine
without a GPU. (Serially, all lanes finish their partial sums before lane 0
reads them, which is what the barrier guarantees on the GPU.)
"""

from __future__ import annotations

from tvm.script import tirx as T

from .sparse_index import signed_sum
from .warp_layout import CHANNELS_PER_BLOCK, WARP_SIZE, thread_loops, warp_sum


def global_index(*, n: int, k: int, nnz: int, entry_dtype: str, sign_bit: int, gpu: bool = True):
    """out[m, n] = scale[n] * sum over entries e of channel n of (-1)^sign(e) * x[m, k(e)]; lanes over entries."""
    (rows, groups, channels, lanes), (shared, local) = thread_loops(gpu)
    store = warp_sum(gpu, n)
    accumulate = signed_sum(entry_dtype, sign_bit)
    num_groups = -(-n // CHANNELS_PER_BLOCK)

    @T.prim_func(private=True)
    def kernel(
        var_x: T.handle,
        indptr: T.Buffer((n + 1,), "uint32"),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        for i in rows(m):
            for group in groups(num_groups):
                partial_sums = T.decl_buffer((CHANNELS_PER_BLOCK, WARP_SIZE), "float32", scope=shared)
                for c in channels(CHANNELS_PER_BLOCK):
                    for lane in lanes(WARP_SIZE):
                        acc = T.decl_buffer((1,), "float32", scope=local)
                        acc[0] = T.float32(0)
                        if group * CHANNELS_PER_BLOCK + c < n:
                            start: T.let = T.Cast("int64", indptr[group * CHANNELS_PER_BLOCK + c])
                            count: T.let = T.Cast("int64", indptr[group * CHANNELS_PER_BLOCK + c + 1]) - start
                            accumulate(acc, x, entries, i, T.int64(0), start, count, lane, WARP_SIZE)
                        partial_sums[c, lane] = acc[0]
                store(partial_sums, out, scales, i, group)

    return kernel


def blocked_index(*, n: int, k: int, nnz: int, block_size: int, entry_dtype: str, count_dtype: str, gpu: bool = True):
    """As :func:`global_index`, with positions ``block * block_size + offset(e)``; lanes over each block's entries."""
    sign_bit = block_size.bit_length() - 1
    blocks = -(-k // block_size)
    (rows, groups, channels, lanes), (shared, local) = thread_loops(gpu)
    store = warp_sum(gpu, n)
    accumulate = signed_sum(entry_dtype, sign_bit)
    num_groups = -(-n // CHANNELS_PER_BLOCK)

    @T.prim_func(private=True)
    def kernel(
        var_x: T.handle,
        indptr: T.Buffer((n + 1,), "uint32"),
        counts: T.Buffer((n, blocks), count_dtype),
        entries: T.Buffer((nnz,), entry_dtype),
        scales: T.Buffer((n,), "float32"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        for i in rows(m):
            for group in groups(num_groups):
                partial_sums = T.decl_buffer((CHANNELS_PER_BLOCK, WARP_SIZE), "float32", scope=shared)
                for c in channels(CHANNELS_PER_BLOCK):
                    for lane in lanes(WARP_SIZE):
                        acc = T.decl_buffer((1,), "float32", scope=local)
                        start = T.decl_buffer((1,), "int64", scope=local)
                        acc[0] = T.float32(0)
                        if group * CHANNELS_PER_BLOCK + c < n:
                            start[0] = T.Cast("int64", indptr[group * CHANNELS_PER_BLOCK + c])
                            for blk in range(blocks):
                                count: T.let = T.Cast("int64", counts[group * CHANNELS_PER_BLOCK + c, blk])
                                first: T.let = start[0]
                                accumulate(acc, x, entries, i, blk * block_size, first, count, lane, WARP_SIZE)
                                start[0] = first + count
                        partial_sums[c, lane] = acc[0]
                store(partial_sums, out, scales, i, group)

    return kernel

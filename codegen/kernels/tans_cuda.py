"""tANS matmul on the GPU (codec ``tans``): one thread per stream decodes it, the decode table in shared memory.

The decoding is :func:`tans_matmul.macros`, the CPU kernels' code, with the
per-thread scratch in registers/local memory and the bit window assembled
from aligned 32-bit words (``aligned_words``: a GPU faults on the CPU
kernels' unaligned 8-byte loads).

* Decode: thread block ``blockIdx.x`` takes STREAMS_PER_BLOCK consecutive
  streams, thread ``threadIdx.x`` one of them. Thread 0 builds the decode table
  from the counts in dynamic shared memory (FSE's spread is sequential), the
  block meets at a barrier, then every thread decodes its stream, its ``S``
  interleaved states in one thread as they share one bit position. Each
  symbol's read sits behind the end-of-stream test of the CPU kernels.
* Batch 1: fused decode-and-GEMV. Each symbol is multiplied into its row's
  dot product as it is decoded (one accumulator per state); no weight is
  written anywhere.
* Larger batches: decode-to-buffer, then a matmul. The decode writes the
  levels ``q`` into a workspace ``[N, K]`` (allocated on this path only); a
  second kernel on the grid of :func:`warp_layout.channel_warps` (a warp per
  output channel, lanes over K, coalesced, each weight read once for a tile of
  rows) takes the dot products and scales them by the channel's step.

``gpu=False`` builds the same loop nest with the thread loops serial and the
buffers global: it runs on the CPU, so tests check the GPU kernel against the
reference decoder on a machine without a GPU. (Serially, thread 0 has built
the table before any thread reads it, which is what the barrier guarantees
on the GPU.)
"""

from __future__ import annotations

from typing import TypeVar

from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, tans

from ..kernel_registry import ConvSpec, KernelCall, register
from ..weights import TANS_ATTR
from . import tans_matmul
from .warp_layout import ROWS_PER_TILE, WARP_SIZE, bound_to, channel_warps, scopes

STREAMS_PER_BLOCK = 32  # one warp of streams shares a decode table (built once per block)


@T.macro
def store_level(decoded, steps, row, column, level):
    decoded[row, column] = level  # the step is applied to the dot product


def matmul(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int, num_words: int,
           gpu: bool = True):
    """``f(x [m, K], counts, offsets, words (uint32), steps, out [m, N])``: ``out = x @ (q * steps).T``, any m."""
    lay = tans_matmul.layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    shared, local = scopes(gpu)
    mac = tans_matmul.macros(**lay, scope=local, aligned_words=True)
    bound = bound_to(gpu)
    blocks, threads = bound("blockIdx.x"), bound("threadIdx.x")
    table_scope = "shared.dyn" if gpu else "global"  # 4 bytes a state: up to 128 KiB, above the static 48 KiB
    # (the symbols of the spread, 2^table_log bytes, fit the static 48 KiB)
    grid = channel_warps(gpu, n, ROWS_PER_TILE)
    streams, size = lay["streams"], lay["size"]
    table_elements, table_dtype = tans_matmul.table_length(table_log), tans_matmul.TABLE_DTYPE
    stream_blocks = -(-streams // STREAMS_PER_BLOCK)

    @T.macro
    def each_stream(counts, offsets, words, decode):
        """Per thread block: thread 0 builds the decode table (two steps, each behind a block barrier),
        then every thread runs ``decode(stream, table)`` on its stream."""
        for blk in blocks(stream_blocks):
            symbols = T.decl_buffer((size,), "uint8", scope=shared)
            table = T.decl_buffer((table_elements,), table_dtype, scope=table_scope)
            for t in threads(STREAMS_PER_BLOCK):
                if t == 0:
                    mac.spread(counts, symbols)
            if gpu:
                T.tvm_storage_sync("shared")
            for t in threads(STREAMS_PER_BLOCK):
                if t == 0:
                    mac.fill_table(counts, symbols, table)
            if gpu:
                T.tvm_storage_sync("shared")
            for t in threads(STREAMS_PER_BLOCK):
                if blk * STREAMS_PER_BLOCK + t < streams:
                    decode(blk * STREAMS_PER_BLOCK + t, table)

    @T.macro
    def dot_lanes(acc, x, m, decoded, i0, channel, lane):
        for step in range((k + (WARP_SIZE - 1) - lane) // WARP_SIZE):
            column: T.let = lane + WARP_SIZE * step
            weight: T.let = decoded[channel, column]  # read once for the tile's rows
            for r in T.unroll(ROWS_PER_TILE):
                acc[r] = acc[r] + x[T.min(i0 + r, m - 1), column] * weight

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), "float32"),
        counts: T.Buffer((levels,), "uint16"),
        offsets: T.Buffer((streams + 1,), "uint32"),
        words: T.Buffer((num_words,), "uint32"),
        steps: T.Buffer((n,), "float32"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        if m == T.int64(1):  # fused: nothing written but the outputs
            each_stream(counts, offsets, words,
                        lambda stream, table: mac.fused_stream(stream, 1, x, table, offsets, words, steps, out))
        else:  # decode the levels into a workspace, then a warp per channel multiplies
            decoded = T.decl_buffer((n, k), "float32")
            each_stream(counts, offsets, words,
                        lambda stream, table: mac.decode_stream(stream, table, offsets, words, store_level, decoded,
                                                                steps))
            grid(m, out, steps, lambda acc, i0, channel, lane: dot_lanes(acc, x, m, decoded, i0, channel, lane))

    return kernel


@register(tans.NAME, ops=("matmul",), target="cuda")
def cuda_call(enc: Encoded, conv: ConvSpec | None, tans_execution: str = "stream",
              lut_tables: str = tans.Config.lut_tables) -> KernelCall:
    """The fused kernel for every batch (``tans_execution`` and ``lut_tables`` are the CPU's choices: the GPU decodes
    on every call)."""
    layout = tans_matmul.checked_layout(enc)
    return KernelCall("tans", matmul(**layout).with_attr(TANS_ATTR, layout), tans_matmul.constants(enc, byte_words=False))

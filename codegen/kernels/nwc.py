"""The ``nwc`` layers: the codec's decoder run once when the artefact is loaded (the layer then dense), or on every call.

The artefact stores the encoding (the latents' tANS streams, column scales and quality levels) and the trained
synthesis network (shared: the build keeps one copy of identical constants for all layers). At load one
PrimFunc (:func:`decoder`, ``KernelCall.at_load``) decodes the weight in two parallel phases:

1. the latents: every (latent channel, stream) pair in parallel, with the tANS macros of
   :mod:`.tans_matmul` (each channel its own table or a row of the shared table bank, one constant for all
   layers; the streams of all channels are stored concatenated);
2. the synthesis network on tiles of ``TILE`` chunks (one chunk row ``j``, ``TILE`` columns): input layer,
   residual blocks times the quality embedding of each column's level, output layer, times the column scale,
   written as float32 straight into the dense kernels' layout.

The weight is decoded into float32, not re-encoded: the layer then runs the dense kernels of a weight left dense
(:mod:`.dense`, packed panels) for a matmul, and for a conv a copy of the decoded OIHW weight into the plain conv.
Everything the load reads is checked first (counts, alphabets, offsets, levels), so a malformed file fails with
an error instead of reading out of bounds.

``--nwc-decode per-call`` keeps only the coded bytes (and the network) in memory, for memory-bound use: every
call runs both phases again. A matmul of one row runs :func:`fused_matmul` (phase 2 by chunk rows, each tile's
weights multiplied into that row's outputs as they are made, the weight never stored whole); more rows, and a
conv, run the decoder as a decode kernel (:mod:`.decode`: the weight [K, N] or OIHW, then the plain op).

A scalar layer (the budget plan found ``tans``'s coding better there: ``nwc.scalar``) runs ``tans``'s kernels; a
float16 layer (``nwc.float16_weight``) is widened at load into the same dense layouts, or runs
:mod:`.nwc_float16`'s kernels per call.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tvm
from tvm import te, tirx
from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, nwc, nwc_network, nwc_tables, tans_coder

from ..kernel_registry import AtLoad, ConvSpec, KernelCall, register
from . import dense, nwc_float16, tans_matmul
from .decode import Layout, activation, destination, in_parallel_vectors

ALPHABET = 2 * nwc.LATENT_LIMIT + 1  # every channel's table is built over this many symbols (the rest count 0)
TILE = 16  # chunks (columns of one chunk row) per task of the synthesis phase
ROWS = 4  # rows of a register tile of the network's layers
OUT_LANES = 64  # outputs of a register tile: ROWS x 4 AVX-512 accumulators, 4 weight vectors, a broadcast


def stored(enc: Encoded, network: nwc_network.Network) -> list[np.ndarray]:
    """What the decoder reads, in its order: the latent streams concatenated (the channels' own counts, their
    alphabets (0: a bank row), each channel's table index, the shared table bank, offsets into the concatenated
    words, the words as bytes), the lowest latent per channel, scales, levels, then the network."""
    a = enc.arrays
    channels = len(a["crc32"])
    nwc.streams(enc)  # the bank and network the encoding names are the installed ones
    own = a["latent_tables"] == nwc_tables.OWN
    counts = [a[f"latent{c}.counts"] if own[c] else np.zeros(0, np.uint16) for c in range(channels)]
    words = [a[f"latent{c}.words"] for c in range(channels)]
    starts = np.cumsum([0] + [32 * w.size for w in words[:-1]], dtype=np.int64)
    offsets = np.stack([a[f"latent{c}.offsets"].astype(np.int64) + starts[c] for c in range(channels)])
    if offsets.max() >= tans_coder.OFFSET_LIMIT:
        raise NotImplementedError(f"{nwc.NAME}: a layer of more than 2^32 coded bits")
    p, blocks = network.params, int(network.config["blocks"])
    stacked = {name: np.stack([p[f"synthesis.block{b}.{name}"] for b in range(blocks)]) for name in ("w1", "b1", "w2", "b2")}
    return [np.concatenate(counts + [np.zeros(1, np.uint16)]), np.array([c.size for c in counts], np.uint8),
            a["latent_tables"], nwc_tables.bank().ravel(), offsets.astype(np.uint32),
            np.concatenate(words).view(np.uint8), a["latent_lowest"], a["scales"], a["levels"],
            p["synthesis.in.w"], p["synthesis.in.b"], stacked["w1"], stacked["b1"], stacked["w2"], stacked["b2"],
            p["synthesis.embedding"], p["synthesis.out.w"], p["synthesis.out.b"]]


def linear(inputs: int, outputs: int):
    """A TIR macro ``dst[TILE, outputs] = src[TILE, inputs] @ w[index] + bias[index]`` (``w`` and ``bias`` stacked
    over a leading ``index`` or not): register tiles of ROWS rows x OUT_LANES outputs, one broadcast and one
    weight vector per multiply-add of a row, as in the dense GEMM."""
    lanes = min(OUT_LANES, outputs)

    @T.macro
    def layer(src, w, bias, dst, index):
        weights = T.decl_buffer((inputs * outputs,), "float32", data=w.data, elem_offset=index * (inputs * outputs))
        biases = T.decl_buffer((outputs,), "float32", data=bias.data, elem_offset=index * outputs)
        for rows in range(TILE // ROWS):
            for block in range(outputs // lanes):
                acc = T.decl_buffer((ROWS * lanes,), "float32", scope="local")
                for rr in T.unroll(ROWS):
                    for o in T.vectorized(lanes):
                        acc[rr * lanes + o] = biases[block * lanes + o]
                for i in range(inputs):
                    for rr in T.unroll(ROWS):
                        for o in T.vectorized(lanes):
                            acc[rr * lanes + o] = acc[rr * lanes + o] + src[rows * ROWS + rr, i] * weights[
                                i * outputs + block * lanes + o]
                for rr in T.unroll(ROWS):
                    for o in T.vectorized(lanes):
                        dst[rows * ROWS + rr, block * lanes + o] = acc[rr * lanes + o]

    return layer


def packed_place(n: int, k: int):
    """Where weight (row, column) of [n, k] goes in :func:`.dense.pack`'s panels, as a flat index."""
    cols = dense.matmul.COLS
    return lambda row, column: (row // cols) * (k * cols) + column * cols + row % cols


class _Phases(NamedTuple):
    """The decoder's TIR macros for one layer shape and stream layout, and the sizes they work in."""

    decode_latents: object  # (counts, alphabets, offsets, words, lowest, column_levels, latents): checks, phase 1
    synthesise: object  # (row, first, latents, column_levels, *network, y): phase 2 on one tile, unscaled
    store: object  # (latents, scales, column_levels, *network, flat_out): phase 2 on every tile, into flat_out
    latent: int
    width: int
    blocks: int
    levels: int
    streams: int  # tANS streams per latent channel
    latent_size: int  # int8 latents the decoder keeps: [latent, J, K] (a quarter of the float32 weight)


def _phases(n: int, k: int, table_log: int, states: int, rows_per_stream: int, place) -> _Phases:
    """The two phases of the module docstring, ``store`` writing weight (row, column) at ``place(row, column)``, a
    flat index into its output (``place`` None: ``store`` is not used)."""
    network = nwc_network.load()
    chunk = nwc_network.CHUNK
    latent, width, blocks, levels = network.latent, int(network.config["width"]), int(network.config["blocks"]), network.levels
    j = -(-n // chunk)
    lay = tans_matmul.layout(j, k, ALPHABET, table_log, states, rows_per_stream, 0)
    mac = tans_matmul.macros(**lay)
    size, streams = lay["size"], lay["streams"]
    table_elements = tans_matmul.table_length(table_log)  # of a channel's decode table
    bank_rows = len(nwc_tables.bank())
    tiles_per_row = -(-k // TILE)

    input_layer, inner_layer, output_layer = (linear(i, o) for i, o in ((latent, width), (width, width),
                                                                          (width, chunk)))

    @T.macro
    def keep_latent(dest, shift, row, column, value):
        # an encoding's latents are within +-LATENT_LIMIT; the clamp keeps a malformed ``lowest`` from an
        # out-of-range float-to-int conversion (undefined in LLVM)
        dest[row * k + column] = T.Cast("int8", T.max(T.min(value + shift[0], T.float32(nwc.LATENT_LIMIT)),
                                                      T.float32(-nwc.LATENT_LIMIT)))

    @T.macro
    def decode_latents(counts, alphabets, table_index, bank, offsets, words, lowest, column_levels, latents):
        # checks: a table from counts summing to its size has every next state in range; a window load at a bit
        # position up to the last offset stays within the words (their 8 bytes of padding)
        start = T.decl_buffer((1,), "int64")
        start[0] = T.int64(0)
        for c in range(latent):
            start[0] = start[0] + T.Cast("int64", alphabets[c])
        assert start[0] <= counts.shape[0], "nwc: the latent alphabets exceed the stored counts"
        for c in range(latent):
            assert table_index[c] == T.uint8(nwc_tables.OWN) or T.Cast("int32", table_index[c]) < bank_rows, \
                "nwc: a latent table beyond the bank"
            assert table_index[c] == T.uint8(nwc_tables.OWN) or alphabets[c] == T.uint8(0), \
                "nwc: a latent channel with a bank row and its own counts"
        for c in range(latent):
            for s in range(streams):
                assert offsets[c, s] <= offsets[c, s + 1], "nwc: latent stream offsets decrease"
            assert T.Cast("int64", offsets[c, streams]) <= words.shape[0] * 8 - 64, "nwc: latent streams beyond the words"
        for i in range(k):
            assert column_levels[i] < T.uint8(levels), "nwc: a quality level beyond the codec's"
        # phase 1: tables, then every channel's streams in parallel into latents [latent, j, k]
        tables = T.decl_buffer((latent * table_elements,), tans_matmul.TABLE_DTYPE)
        shifts = T.decl_buffer((latent,), "float32")
        start[0] = T.int64(0)
        for c in range(latent):
            padded = T.decl_buffer((ALPHABET,), "uint16")
            total = T.decl_buffer((1,), "int64")
            total[0] = T.int64(0)
            row: T.let = T.Cast("int32", T.min(table_index[c], T.uint8(bank_rows - 1)))  # a bank row (unless OWN)
            for s in range(ALPHABET):
                padded[s] = T.if_then_else(
                    table_index[c] != T.uint8(nwc_tables.OWN), bank[row * ALPHABET + s],
                    T.if_then_else(s < T.Cast("int32", alphabets[c]), counts[T.min(start[0] + s, counts.shape[0] - 1)],
                                   T.uint16(0)))
                total[0] = total[0] + T.Cast("int64", padded[s])
            assert total[0] == T.int64(size), "nwc: latent counts do not sum to the table size"
            start[0] = start[0] + T.Cast("int64", alphabets[c])
            table = T.decl_buffer((table_elements,), tans_matmul.TABLE_DTYPE, data=tables.data,
                                  elem_offset=c * table_elements)
            mac.build_table(padded, table)
            shifts[c] = T.Cast("float32", T.Cast("int32", lowest[c]) + ALPHABET // 2)
        for task in T.parallel(latent * streams):
            c: T.let = task // streams
            table = T.decl_buffer((table_elements,), tans_matmul.TABLE_DTYPE, data=tables.data,
                                  elem_offset=c * table_elements)
            channel_offsets = T.decl_buffer((streams + 1,), "uint32", data=offsets.data, elem_offset=c * (streams + 1))
            dest = T.decl_buffer((j * k,), "int8", data=latents.data, elem_offset=c * (j * k))
            shift = T.decl_buffer((1,), "float32", data=shifts.data, elem_offset=c)
            mac.decode_stream(task % streams, table, channel_offsets, words, keep_latent, dest, shift)

    @T.macro
    def synthesise(row, first, latents, column_levels, in_w, in_b, w1, b1, w2, b2, embedding, out_w, out_b, y):
        # the synthesis network on the TILE chunks of chunk row ``row``, columns from ``first`` (past K: repeats of
        # the last column), into y [TILE, chunk], before the column scales
        x = T.decl_buffer((TILE, latent), "float32")
        h = T.decl_buffer((TILE, width), "float32")
        inner = T.decl_buffer((TILE, width), "float32")
        outer = T.decl_buffer((TILE, width), "float32")
        for r in range(TILE):
            for i in range(latent):
                x[r, i] = T.Cast("float32", latents[(i * j + row) * k + T.min(first + r, k - 1)])
        input_layer(x, in_w, in_b, h, 0)
        for b in range(blocks):
            inner_layer(h, w1, b1, inner, b)
            for r in range(TILE):
                for o in T.vectorized(width):
                    inner[r, o] = T.max(inner[r, o], T.float32(0))
            inner_layer(inner, w2, b2, outer, b)
            for r in range(TILE):
                level: T.let = T.Cast("int32", column_levels[T.min(first + r, k - 1)])
                for o in T.vectorized(width):
                    h[r, o] = (h[r, o] + outer[r, o]) * embedding[level, b, o]
        output_layer(h, out_w, out_b, y, 0)

    @T.macro
    def store(latents, scales, column_levels, in_w, in_b, w1, b1, w2, b2, embedding, out_w, out_b, flat_out):
        # phase 2: TILE columns of one chunk row per task, each weight times its column's scale at place(row, column)
        for i in range(flat_out.shape[0]):
            flat_out[i] = T.float32(0)
        for task in T.parallel(j * tiles_per_row):
            row: T.let = task // tiles_per_row
            first: T.let = task % tiles_per_row * TILE
            y = T.decl_buffer((TILE, chunk), "float32")
            synthesise(row, first, latents, column_levels, in_w, in_b, w1, b1, w2, b2, embedding, out_w, out_b, y)
            for r in range(TILE):
                if first + r < k:
                    scale: T.let = T.Cast("float32", scales[first + r])
                    for t in range(chunk):
                        if row * chunk + t < n:
                            flat_out[place(row * chunk + t, first + r)] = y[r, t] * scale

    return _Phases(decode_latents, synthesise, store, latent, width, blocks, levels, streams, latent * j * k)


def _output(n: int, k: int, conv_shape: tuple[int, int, int, int] | None, packed: bool):
    """(shape, place) of a decoder's output: the dense kernels' packed panels (:func:`packed_place`), the plain
    matmul's [K, N] or a conv's OIHW (:class:`.decode.Layout`)."""
    if conv_shape is not None:
        return conv_shape, Layout.conv2d(conv_shape).flat
    if packed:
        return (-(-n // dense.matmul.COLS), k, dense.matmul.COLS), packed_place(n, k)
    return (k, n), Layout.matmul(n, k).flat


@functools.cache
def decoder(n: int, k: int, table_log: int, states: int, rows_per_stream: int,
            conv_shape: tuple[int, int, int, int] | None = None, x_ndim: int = 0) -> tirx.PrimFunc:
    """The weight [n, k] decoded into ``out`` (zeroed first: padding stays zero). ``x_ndim`` 0: ``f(*stored(enc),
    out)``, run at load, into the dense kernels' packed panels or, for a conv, OIHW ``conv_shape``; else a decode
    kernel ``f(x, *stored(enc), out)`` run on every call (``x`` of that rank, not read: :mod:`.decode`), into
    the plain matmul's [K, N] or the conv's OIHW. One per layout: layers of one shape share it."""
    out_shape, place = _output(n, k, conv_shape, packed=not x_ndim)
    ph = _phases(n, k, table_log, states, rows_per_stream, place)
    latent, width, blocks, levels, chunk = ph.latent, ph.width, ph.blocks, ph.levels, nwc_network.CHUNK
    out_size = int(np.prod(out_shape))
    streams, bank_size = ph.streams, nwc_tables.bank().size
    x_shape = tuple(tirx.Var(f"d{i}", "int64") for i in range(x_ndim))

    @T.macro
    def body(counts, alphabets, tables, bank, offsets, words, lowest, scales, column_levels, in_w, in_b, w1, b1, w2,
             b2, embedding, out_w, out_b, out):
        latents = T.decl_buffer((ph.latent_size,), "int8")
        ph.decode_latents(counts, alphabets, tables, bank, offsets, words, lowest, column_levels, latents)
        ph.store(latents, scales, column_levels, in_w, in_b, w1, b1, w2, b2, embedding, out_w, out_b,
                 T.decl_buffer((out_size,), "float32", data=out.data))

    @T.prim_func(private=True)
    def at_load(var_counts: T.handle, alphabets: T.Buffer((latent,), "uint8"),
                tables: T.Buffer((latent,), "uint8"), bank: T.Buffer((bank_size,), "uint16"),
                offsets: T.Buffer((latent, streams + 1), "uint32"), var_words: T.handle,
                lowest: T.Buffer((latent,), "int16"), scales: T.Buffer((k,), "float16"),
                column_levels: T.Buffer((k,), "uint8"),
                in_w: T.Buffer((latent, width), "float32"), in_b: T.Buffer((width,), "float32"),
                w1: T.Buffer((blocks, width, width), "float32"), b1: T.Buffer((blocks, width), "float32"),
                w2: T.Buffer((blocks, width, width), "float32"), b2: T.Buffer((blocks, width), "float32"),
                embedding: T.Buffer((levels, blocks, width), "float32"),
                out_w: T.Buffer((width, chunk), "float32"), out_b: T.Buffer((chunk,), "float32"),
                out: T.Buffer(out_shape, "float32")):
        T.func_attr({"tirx.noalias": True})
        counts = T.match_buffer(var_counts, (T.int64(),), "uint16")
        words = T.match_buffer(var_words, (T.int64(),), "uint8")
        body(counts, alphabets, tables, bank, offsets, words, lowest, scales, column_levels, in_w, in_b, w1, b1, w2,
             b2, embedding, out_w, out_b, out)

    @T.prim_func(private=True)
    def per_call(var_x: T.handle, var_counts: T.handle, alphabets: T.Buffer((latent,), "uint8"),
                tables: T.Buffer((latent,), "uint8"), bank: T.Buffer((bank_size,), "uint16"),
                 offsets: T.Buffer((latent, streams + 1), "uint32"), var_words: T.handle,
                 lowest: T.Buffer((latent,), "int16"), scales: T.Buffer((k,), "float16"),
                 column_levels: T.Buffer((k,), "uint8"),
                 in_w: T.Buffer((latent, width), "float32"), in_b: T.Buffer((width,), "float32"),
                 w1: T.Buffer((blocks, width, width), "float32"), b1: T.Buffer((blocks, width), "float32"),
                 w2: T.Buffer((blocks, width, width), "float32"), b2: T.Buffer((blocks, width), "float32"),
                 embedding: T.Buffer((levels, blocks, width), "float32"),
                 out_w: T.Buffer((width, chunk), "float32"), out_b: T.Buffer((chunk,), "float32"),
                 out: T.Buffer(out_shape, "float32")):
        T.func_attr({"tirx.noalias": True})
        T.match_buffer(var_x, x_shape, "float32")
        counts = T.match_buffer(var_counts, (T.int64(),), "uint16")
        words = T.match_buffer(var_words, (T.int64(),), "uint8")
        body(counts, alphabets, tables, bank, offsets, words, lowest, scales, column_levels, in_w, in_b, w1, b1, w2,
             b2, embedding, out_w, out_b, out)

    return per_call if x_ndim else at_load


@functools.cache
def fused_matmul(n: int, k: int, table_log: int, states: int, rows_per_stream: int) -> tirx.PrimFunc:
    """``f(x [m, k], *stored(enc), out [m, n])``: the weight decoded on every call and multiplied as it is made,
    never stored whole: the latents (phase 1), then one task per chunk row, each the synthesis of its tiles (phase
    2) into the dot products of its ``CHUNK`` outputs (a task owns its outputs: no two write one)."""
    ph = _phases(n, k, table_log, states, rows_per_stream, None)
    latent, width, blocks, levels, chunk = ph.latent, ph.width, ph.blocks, ph.levels, nwc_network.CHUNK
    streams = ph.streams
    j, tiles_per_row = -(-n // chunk), -(-k // TILE)
    bank_size = nwc_tables.bank().size

    @T.prim_func(private=True)
    def kernel(var_x: T.handle, var_counts: T.handle, alphabets: T.Buffer((latent,), "uint8"),
                tables: T.Buffer((latent,), "uint8"), bank: T.Buffer((bank_size,), "uint16"),
               offsets: T.Buffer((latent, streams + 1), "uint32"), var_words: T.handle,
               lowest: T.Buffer((latent,), "int16"), scales: T.Buffer((k,), "float16"),
               column_levels: T.Buffer((k,), "uint8"),
               in_w: T.Buffer((latent, width), "float32"), in_b: T.Buffer((width,), "float32"),
               w1: T.Buffer((blocks, width, width), "float32"), b1: T.Buffer((blocks, width), "float32"),
               w2: T.Buffer((blocks, width, width), "float32"), b2: T.Buffer((blocks, width), "float32"),
               embedding: T.Buffer((levels, blocks, width), "float32"),
               out_w: T.Buffer((width, chunk), "float32"), out_b: T.Buffer((chunk,), "float32"),
               var_out: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        counts = T.match_buffer(var_counts, (T.int64(),), "uint16")
        words = T.match_buffer(var_words, (T.int64(),), "uint8")
        latents = T.decl_buffer((ph.latent_size,), "int8")
        ph.decode_latents(counts, alphabets, tables, bank, offsets, words, lowest, column_levels, latents)
        for row in T.parallel(j):
            acc = T.decl_buffer((m * chunk,), "float32")
            for i in range(m * chunk):
                acc[i] = T.float32(0)
            for tile in range(tiles_per_row):
                y = T.decl_buffer((TILE, chunk), "float32")
                ph.synthesise(row, tile * TILE, latents, column_levels, in_w, in_b, w1, b1, w2, b2, embedding,
                              out_w, out_b, y)
                for r in range(TILE):  # each column's x times its scale; past K, zero
                    column: T.let = T.min(tile * TILE + r, k - 1)
                    scale: T.let = T.if_then_else(tile * TILE + r < k, T.Cast("float32", scales[column]), T.float32(0))
                    for b in range(m):
                        weighted: T.let = x[b, column] * scale
                        for t in T.vectorized(chunk):
                            acc[b * chunk + t] = acc[b * chunk + t] + weighted * y[r, t]
            for b in range(m):
                for t in range(chunk):
                    if row * chunk + t < n:
                        out[b, row * chunk + t] = acc[b * chunk + t]

    return kernel


def _checked(enc: Encoded) -> nwc_network.Network:
    """The network ``enc`` was encoded with, after the structural checks of every latent stream."""
    for coded in nwc.streams(enc):
        tans_coder.validate(coded, len(coded.counts))
    return nwc_network.load()


def _layout_args(enc: Encoded) -> tuple[int, int, int, int, int]:
    """(n, k, table_log, states, rows_per_stream): what the decoders are generated for."""
    h = enc.header
    return (*enc.shape, int(h["table_log"]), int(h["states"]), int(h["rows_per_stream"]))


def copy_kernel(shape: tuple[int, ...], x_ndim: int) -> tirx.PrimFunc:
    """``f(x, W, out)``: the conv weight decoded at load handed to the plain conv (a decode kernel: ``x`` not read,
    the op needs its weight as a call's result), copied in parallel vectors."""
    held = te.placeholder(shape, "float32", "decoded_weight")
    copied = te.compute(shape, lambda *index: held[index], name="copied")
    return in_parallel_vectors([activation(x_ndim), held], copied)


@register(nwc.NAME, ops=("matmul", "conv2d"), target="llvm")
def llvm_call(enc: Encoded, conv: ConvSpec | None, nwc_decode: str = nwc.Config.nwc_decode) -> KernelCall:
    """``nwc_decode`` ``load``: the dense kernels (matmul) or the plain conv over the float32 weight that
    :func:`decoder` writes at load. ``per-call``: the stored arrays are the constants; a matmul of one row runs
    :func:`fused_matmul`, above one row (and a conv) a decode kernel (:func:`decoder` with ``x``) and the plain op.
    A scalar layer (``nwc.scalar``) runs ``tans``'s kernels (with the exact fp32 look-up tables): decoded at load, or
    streamed on every call. A float16
    layer: widened at load (:func:`.nwc_float16.widened`) into the same layouts, or :func:`.nwc_float16.per_call`."""
    if nwc.scalar(enc) is not None:  # the exact tables: nwc has no lut_tables option, its layers decode exactly
        return tans_matmul.llvm_call(nwc.scalar(enc), conv, "stream" if nwc_decode == "per-call" else "load",
                                     lut_tables="fp32")
    conv_shape = None if conv is None else tuple(conv.kernel_shape)
    if nwc.float16_weight(enc) is not None:
        if nwc_decode == "per-call":
            return nwc_float16.per_call(enc, conv)
        return _decoded_at_load(enc, conv, AtLoad(nwc_float16.widened(*enc.shape, conv_shape),
                                                  [nwc.float16_weight(enc)]))
    arrays = stored(enc, _checked(enc))
    args = _layout_args(enc)
    if nwc_decode == "per-call":
        decoding = KernelCall("nwc_decode", decoder(*args, conv_shape, destination(enc, conv)[1]), arrays,
                              decodes=True)
        if conv is not None:
            return decoding
        return KernelCall("nwc_fused_matmul", fused_matmul(*args), arrays, large_batch=decoding)
    return _decoded_at_load(enc, conv, AtLoad(decoder(*args, conv_shape), arrays))


def _decoded_at_load(enc: Encoded, conv: ConvSpec | None, at_load: AtLoad) -> KernelCall:
    """The dense kernels (matmul) or the plain conv over the float32 weight ``at_load`` writes: the matmul's packed
    panels or the conv's OIHW weight."""
    layout, x_ndim = destination(enc, conv)
    if conv is None:
        call = dense.dense_kernel(np.zeros(enc.shape, np.float32), tvm.target.Target.current())  # shapes only: the
        # values come at load
    else:
        call = KernelCall("nwc_conv_weight", copy_kernel(layout.shape, x_ndim), [np.zeros(layout.shape, np.float32)],
                          decodes=True)
    call.at_load = at_load
    return call

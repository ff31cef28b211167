"""Kernels that compute from tANS-coded weights (codec ``tans``; format in ``bie_compiler.codecs.tans_coder``).

All kernels first rebuild the decode table from the stored counts (FSE's
spread, then per state the entry ``bits | symbol << 8`` and, in a second
half, the base of its next states, uint16 each: the base is a load of its own
instead of a shift of the entry, one ALU operation less per symbol on the
ports that also run the shifts and branches): ``2^R`` steps, a few
microseconds, and it keeps the stored table at ``2 * levels`` bytes. Then the
streams (blocks of output channels) are decoded in parallel, one per task.
Within a stream, the ``S`` interleaved states are unrolled: their table
look-ups and bit reads are independent, so a core has ``S`` symbols in
flight; only the bit position is shared. Bits come from a
64-bit window loaded once per few symbols (see :func:`macros`, shared with the
GPU kernel of ``tans_cuda``; the format pads the words so that any position up
to the end can be loaded, and a window past its stream's end reads zeros, so
a malformed stream never reads out of bounds). Each symbol's decoding sits
behind a test that its state indexes the table (always true): being a branch,
it stops LLVM's SLP vectorizer from packing the states into one vector
register (then every table look-up needs a gather or lane extracts on the
state's critical path: measured 2-4x slower).

On a CPU with AVX-512 and either VBMI's byte permutes or fast gathers (LLVM's
``fast-gather`` tuning: Intel's AVX-512 cores, not AMD's Zen 4 and 5) and
states a multiple of 16 (the codec's default is 16), every CPU kernel decodes
with :func:`vector_macros` instead: a vector of 16 states per gather of table
entries, the lanes' bit positions from prefix sums of their bit counts, their
bits permuted out of one load (VBMI) or gathered, and a task decoding 4
streams interleaved so that their independent chains fill the gathers'
latency. Same format, same symbols.

* :func:`matmul` ``out[m, n] = step[n] * sum_k x[m, k] * q[n, k]``, one kernel
  choosing by batch at run time:

  - ``m <= FUSED_MAX_BATCH`` (batch 1 to a few): fused decode-and-GEMV. Each
    stream is decoded once and every symbol is multiplied into the ``m``
    dot products as it comes out (one accumulator per state and batch row);
    no weight is written anywhere, only the coded bytes are read. Each batch
    size has its own copy of the loop so its accumulators stay in registers.
  - larger ``m``: decode-to-buffer, then a dense matmul. Each stream decodes
    its output channels into a buffer of its own (``rows_per_stream * K``
    floats, cache-sized), then multiplies them with ``x`` with 16-lane vector
    accumulators, four batch rows at a time so each decoded weight vector is
    loaded once per four rows. Decoding is then paid once per channel block
    instead of ``m`` FMAs per symbol in the serial decode loop, and there is
    still no dense copy of the whole weight in memory.

  The choice is a branch on the symbolic batch inside the kernel rather than a
  Relax-level dispatch: the pass rewrites a matmul into one ``call_tir``, both
  paths share the table build and the decoding code, and the branch costs one
  comparison per call.
* :func:`decode_weights`: the decoder writing the dense weights ``q * step``
  in a dense op's layout (the decode kernel of convs and of matmuls above one
  row; exact against the reference decoder). A matmul's ``W [K, N]`` has a
  stream's channels as columns: its decoder is blocked (:func:`blocks`), each
  task decoding 64 channels into a buffer and writing whole cache lines of W.
* :func:`symbol_decoder`: the decoder alone, writing the symbols (the
  decode-throughput benchmark's kernel).
* :func:`int8_lut_weights`, :func:`lut_weights` and :func:`integer_weights`: the
  decoder writing the codes ``q`` as the ``bie-bitplane`` kernels take them: the
  look-up-table kernel's (:mod:`.bitplane_lut`, AVX-512; ``ceil(log2(m + 1)) + 1``
  planes for ``2m + 1`` levels, 2 for 3 levels, 4 for 15) int8 tables' bytes
  (up to 15 levels with AVX-512 VNNI, as ``lut_tables`` chooses) or two's
  complement planes (fp32 tables), else the integer kernels' codes (:mod:`.int8`:
  4-bit up to 15 levels, else 8-bit), the steps as channel scales.
  ``--tans-execution load`` (the default) runs it once, when
  the artefact is loaded (``KernelCall.at_load``): the artefact stores the
  streams, and every call runs that kernel, whose error against the fused one
  is float rounding only (same codes, same per-channel step, applied after the sum).
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from bie_compiler.codecs import Encoded, tans
from bie_compiler.codecs.lut_tables import chosen
from bie_compiler.codecs.tans_coder import spread_step
from bie_compiler.runtime.tans_streams import MAX_STATES, MAX_TABLE_LOG

from ..kernel_registry import AtLoad, ConvSpec, KernelCall, register
from ..target import make_target
from ..weights import TANS_ATTR
from . import bitplane_lut, int8, lut
from .decode import Layout, destination, with_decoder

# Up to this batch the fused decode-and-GEMV runs (one branch per batch size in ``matmul``); above it,
# decode-to-buffer + matmul. Measured on a 4096x4096 layer, one thread, ms (shared machine, +-20 %): fused 22-30
# (m=1), 26 (2); with a fused m=3 and m=4 it was about 10 % slower than decode-to-buffer, 24 (m=3), 27 (5), 42 (16):
# past m=2 the m FMAs per symbol in the serial decode loop cost more than writing the symbol to a cache-resident
# buffer and multiplying vectorized.
FUSED_MAX_BATCH = 2
LANES = 16  # float32 vector width of the dense matmul's accumulators
BATCH_BLOCK = 4  # batch rows per weight-vector load in the dense matmul
WINDOW_BITS = 57  # valid bits in a window: 64 minus the up to 7 of the byte's bits before the read position


TABLE_DTYPE = "uint16"  # decode tables: per state its entry (bits | symbol << 8), then per state its next states' base
PACKED_TABLE_DTYPE = "uint32"  # the vector decoder's: per state bits | symbol << 8 | base << 16, one gather a symbol


def table_length(table_log: int, packed: bool = False) -> int:
    """Elements of a decode table: the ``2^table_log`` states' entries, then their bases (``TABLE_DTYPE``), or the
    packed entries alone (``PACKED_TABLE_DTYPE``)."""
    return 1 << table_log if packed else 2 << table_log


def symbol_of(e):
    """The symbol of a decode-table entry."""
    return (e >> 8) & 255


def layout(n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int, num_words: int) -> dict:
    """The encoding's layout (as :func:`stream_layout` gives it) and the constants the macros derive from it."""
    size = 1 << table_log
    return dict(n=n, k=k, levels=levels, table_log=table_log, states=states, rows_per_stream=rows_per_stream,
                num_words=num_words, size=size, mask=size - 1, step=spread_step(table_log), half=levels // 2,
                streams=-(-n // rows_per_stream), groups=k // states, tail=k % states,
                per_window=WINDOW_BITS // table_log)


class Macros(NamedTuple):
    """The TIR macros of :func:`macros`: the table build (in two steps or in place), and the stream decoding."""

    spread: object
    fill_table: object
    build_table: object
    decode_symbols: object
    decode_stream: object
    decode_streams: object
    fused_stream: object


def macros(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int, size: int, mask: int,
           step: int, half: int, streams: int, groups: int, tail: int, per_window: int, scope: str = "global",
           aligned_words: bool = False, packed_table: bool = False, **_) -> Macros:
    """TIR macros shared by the CPU and GPU kernels; buffers come in as arguments, layout constants from here.

    ``scope`` is that of the per-stream scratch buffers (``local`` in a GPU
    thread). Bits are read through a 64-bit window holding at least
    WINDOW_BITS bits from a byte ``byte`` and bit offset ``used & 7`` there,
    enough for ``per_window`` symbols of at most ``table_log`` bits. With
    ``aligned_words=False`` ``words`` is the uint32 words as bytes and the
    window is one unaligned 8-byte load at ``byte``, shifted; with
    ``aligned_words=True`` (GPUs fault on unaligned wide loads) ``words`` is
    the uint32 words and the window is assembled from the three aligned words
    from ``byte // 4``. ``packed_table``: the table build writes the vector
    decoder's packed entries (:func:`table_length`). A symbol's read is then a mask of the window's low
    bits, which shift out (bzhi and shrx, counted by the entry's low byte): the
    only memory accesses on a state's critical path are its table look-ups.
    """
    rps = rows_per_stream

    @T.macro
    def spread(counts, symbols):
        # FSE's spread: symbol s takes counts[s] states, at successive steps through the table
        cursor = T.decl_buffer((1,), "int32", scope=scope)
        cursor[0] = 0
        for s in range(levels):
            for _i in range(T.Cast("int32", counts[s])):
                symbols[cursor[0]] = T.Cast(symbols.dtype, s)
                cursor[0] = (cursor[0] + step) & mask

    @T.macro
    def fill_table(counts, symbols, table):
        # the j-th state of s has n = counts[s] + j in [c, 2c): it reads R - floor(log2 n) bits
        following = T.decl_buffer((levels,), "uint32", scope=scope)
        for s in range(levels):
            following[s] = T.Cast("uint32", counts[s])
        for x_state in range(size):
            sym = T.Cast("uint32", symbols[x_state])
            nxt = following[sym]
            following[sym] = nxt + T.uint32(1)
            nbits = T.uint32(table_log) - (T.uint32(31) - T.Cast("uint32", T.clz(nxt)))
            if packed_table:
                table[x_state] = (sym << T.uint32(8)) | nbits | (((nxt << nbits) - T.uint32(size)) << T.uint32(16))
            else:
                table[x_state] = T.Cast("uint16", (sym << T.uint32(8)) | nbits)
                table[size + x_state] = T.Cast("uint16", (nxt << nbits) - T.uint32(size))

    @T.macro
    def build_table(counts, table):
        # in place: the spread's symbols become the table's entries
        spread(counts, table)
        fill_table(counts, table, table)

    @T.macro
    def refill(words, byte, used, window, end):
        # move the window past the bits given out since the last refill: ``used`` (a byte: the entries' symbol
        # bytes wrap away) is the window's bit offset in its first byte plus the entries' bit counts, at most
        # 7 + per_window * table_log < 256; its whole bytes go to ``byte``, the rest is the next window's offset
        # (fewer operations than a bit position split on every refill). A window starts at most at the byte of
        # the stream's end bit, within the format's padding; a stream past it (malformed) reads zeros. The
        # position does not wait for the window's last shift, only for the entries: the next window's load
        # overlaps the decoding of this one's symbols.
        byte[0] = byte[0] + T.Cast("int64", used[0] >> T.uint8(3))
        used[0] = used[0] & T.uint8(7)
        window[0] = T.uint64(0)
        if byte[0] <= end:
            if aligned_words:
                word: T.let = byte[0] >> T.int64(2)
                shift: T.let = T.Cast("uint64", (byte[0] & T.int64(3)) * T.int64(8)) + T.Cast("uint64", used[0])
                low: T.let = T.Cast("uint64", words[word]) | (T.Cast("uint64", words[word + T.int64(1)]) << T.uint64(32))
                high: T.let = T.Cast("uint64", words[word + T.int64(2)]) << T.uint64(32)
                # the third word's bits above the first two's 64 - shift; two shifts, as one by 64 (shift 0) is undefined
                window[0] = (low >> shift) | (high << (T.uint64(32) - shift))
            else:
                window[0] = T.reinterpret("uint64", words[T.Ramp(byte[0], T.int64(1), 8)]) >> T.Cast("uint64", used[0])

    @T.macro
    def start_stream(st, offsets, words, state, byte, used, window, end):
        # the stream's initial states, table_log bits each, from bit offsets[st]
        byte[0] = T.Cast("int64", offsets[st] >> T.uint32(3))
        used[0] = T.Cast("uint8", offsets[st] & T.uint32(7))
        for j in T.unroll(states):
            if j % per_window == 0:
                refill(words, byte, used, window, end)
            state[j] = window[0] & T.uint64(size - 1)
            window[0] = window[0] >> T.uint64(table_log)
            used[0] = used[0] + T.uint8(table_log)

    @T.macro
    def decode_symbol(j, table, words, state, byte, used, window, end, take):
        # take(e) gets state j's table entry e (symbol_of gives its symbol); state j moves on, reading the window's
        # lowest bits, which then shift out. The entry's low byte is the bit count, where BMI2's bzhi and shrx read
        # their count without a mask. The test (always true: the table's next states are in it) keeps the states'
        # chains in separate blocks, so LLVM's SLP vectorizer does not pack them into vectors (table gathers and
        # lane extracts on the critical path: measured 2-4x slower). take() inside it: no entry outlives the block.
        if j % per_window == 0:
            refill(words, byte, used, window, end)
        if state[j] < T.uint64(size):
            e: T.let = T.Cast("uint32", table[state[j]])
            nb: T.let = T.Cast("uint64", e & T.uint32(255))
            base: T.let = T.Cast("uint64", table[T.uint64(size) + state[j]])
            state[j] = base + (window[0] & ((T.uint64(1) << nb) - T.uint64(1)))
            window[0] = window[0] >> T.Cast("uint64", e & T.uint32(63))
            used[0] = used[0] + T.Cast("uint8", e)
            take(e)

    def level_of(e):
        return T.Cast("float32", T.Cast("int32", symbol_of(e)) - half)

    @T.macro
    def decode_symbols(st, table, offsets, words, emit, dest, steps):
        # decode stream st; emit(dest, steps, row, column, entry) takes each symbol's table entry in order
        state = T.decl_buffer((states,), "uint64", scope=scope)
        byte = T.decl_buffer((1,), "int64", scope=scope)  # the window's first byte
        used = T.decl_buffer((1,), "uint8", scope=scope)  # its bit offset there plus the entries read from it
        window = T.decl_buffer((1,), "uint64", scope=scope)
        end: T.let = T.Cast("int64", offsets[st + 1] >> T.uint32(3))  # the last byte a window may start at
        start_stream(st, offsets, words, state, byte, used, window, end)
        for r in range(T.min(rps, n - st * rps)):
            for g in range(groups):
                for j in T.unroll(states):
                    decode_symbol(j, table, words, state, byte, used, window, end,
                                  lambda e: emit(dest, steps, st * rps + r, g * states + j, e))
            for j in T.unroll(tail):
                decode_symbol(j, table, words, state, byte, used, window, end,
                              lambda e: emit(dest, steps, st * rps + r, groups * states + j, e))

    @T.macro
    def decode_stream(st, table, offsets, words, emit, dest, steps):
        # decode stream st; emit(dest, steps, row, column, level) takes each symbol's signed level (float32) in order
        decode_symbols(st, table, offsets, words,
                       lambda d, s, row, column, e: emit(d, s, row, column, level_of(e)), dest, steps)

    @T.macro
    def decode_streams(counts, offsets, words, emit, dest, steps):
        # the CPU decoders: one table, then every stream in parallel (emit as in decode_stream)
        table = T.decl_buffer((table_length(table_log),), TABLE_DTYPE)
        build_table(counts, table)
        for st in T.parallel(streams):
            decode_stream(st, table, offsets, words, emit, dest, steps)

    @T.macro
    def accumulate(acc, x, batch, j, column, e):
        # state j's accumulators of the batch rows take the symbol's level times x's column
        for b in range(batch):
            acc[b * states + j] = acc[b * states + j] + x[b, column] * level_of(e)

    @T.macro
    def fused_stream(st, batch, x, table, offsets, words, steps, out):
        # decode stream st once; every symbol goes straight into the dot products of the batch rows
        state = T.decl_buffer((states,), "uint64", scope=scope)
        byte = T.decl_buffer((1,), "int64", scope=scope)  # the window's first byte
        used = T.decl_buffer((1,), "uint8", scope=scope)  # its bit offset there plus the entries read from it
        window = T.decl_buffer((1,), "uint64", scope=scope)
        acc = T.decl_buffer((batch * states,), "float32", scope=scope)
        end: T.let = T.Cast("int64", offsets[st + 1] >> T.uint32(3))  # the last byte a window may start at
        start_stream(st, offsets, words, state, byte, used, window, end)
        for r in range(T.min(rps, n - st * rps)):
            row: T.let = st * rps + r
            for b in range(batch):
                for j in T.unroll(states):
                    acc[b * states + j] = T.float32(0)
            for g in range(groups):
                for j in T.unroll(states):
                    decode_symbol(j, table, words, state, byte, used, window, end,
                                  lambda e: accumulate(acc, x, batch, j, g * states + j, e))
            for j in T.unroll(tail):
                decode_symbol(j, table, words, state, byte, used, window, end,
                              lambda e: accumulate(acc, x, batch, j, groups * states + j, e))
            for b in range(batch):
                total = T.decl_buffer((1,), "float32", scope=scope)
                total[0] = T.float32(0)
                for j in T.unroll(states):
                    total[0] = total[0] + acc[b * states + j]
                out[b, row] = total[0] * steps[row]

    return Macros(spread, fill_table, build_table, decode_symbols, decode_stream, decode_streams, fused_stream)


LANES_PER_VECTOR = 16  # states decoded together: one AVX-512 vector of uint32
TASK_STREAMS = 4  # streams one task of the vector decoder runs interleaved: independent chains behind each gather
GATHER = "llvm.x86.avx512.mask.gather.dpi.512"  # vpgatherdd: 16 uint32 loads at a base plus scaled int32 offsets
PERMUTE_BYTES = "llvm.x86.avx512.permvar.qi.512"  # vpermb zmm (AVX-512 VBMI): 64 byte look-ups in a 64-byte register
READ_BYTES = 64  # bytes one vector's bit reads are permuted from: its 16 lanes' 4-byte reads lie within 33 of them


def vectorized(states: int) -> bool:
    """Whether the CPU kernels decode with :func:`vector_macros`: the states a multiple of a vector and the target
    (the current one, else this host) with AVX-512 and either byte permutes (:func:`byte_permutes`: one gather a
    vector) or gathers LLVM tunes as fast (``fast-gather``: two). On Zen 4 (VBMI, no fast gathers) the decoder
    with two gathers ran every kernel slower than the scalar one on the same 16 states, the one with a gather
    and a permute faster (benchmarks/README.md, tans_decode.py, stop 23)."""
    target = tvm.target.Target.current() or make_target()
    return (states % LANES_PER_VECTOR == 0 and lut.supported(target)
            and (byte_permutes(target) or fast_gathers(target)))


def byte_permutes(target) -> bool:
    """Whether ``target``'s CPU has AVX-512 VBMI (``vpermb``): the vector decoder then reads its lanes' bits with
    one load and a byte permutation instead of a second gather."""
    return lut.has_features(target, "avx512vbmi")


def fast_gathers(target) -> bool:
    """Whether LLVM tunes ``target``'s CPU for fast vector gathers (Intel's AVX-512 cores, not AMD's Zen 4 and 5;
    a target may ask for it with ``mattr`` ``+fast-gather``, as the tests do to run the two-gather decoder)."""
    return lut.has_features(target, "fast-gather")


class DotProducts(NamedTuple):
    """The vector decoder's fused GEMV: its row hooks and put (:func:`vector_macros`)."""

    clear: object
    accumulate: object
    total: object


class VectorMacros(NamedTuple):
    """The TIR macros of :func:`vector_macros`."""

    build_table: object
    tasks: int  # tasks over all streams, TASK_STREAMS each (the last fewer)
    decode_task: object
    decode_streams: object
    fused_task: object


def uint32s(value) -> tirx.PrimExpr:
    return T.Broadcast(T.uint32(value), LANES_PER_VECTOR)


def gather(first, offsets, scale: int) -> tirx.PrimExpr:
    """The 16 uint32 at byte ``offsets * scale`` (uint32x16, below 2^31) from the address of the load ``first``."""
    lanes = LANES_PER_VECTOR
    return T.reinterpret("uint32x16", tirx.call_llvm_pure_intrin(
        "int32x16", GATHER, T.Broadcast(T.int32(0), lanes), tirx.address_of(first),
        T.reinterpret("int32x16", offsets), T.Broadcast(T.bool(True), lanes), T.int32(scale)))


def lanes_up(v, by: int) -> tirx.PrimExpr:
    """``v``'s lanes moved ``by`` lanes up, zeros below."""
    lanes = LANES_PER_VECTOR
    return tirx.Shuffle([v, uint32s(0)], [lanes if j < by else j - by for j in range(lanes)])


def vector_macros(*, n: int, k: int, table_log: int, states: int, rows_per_stream: int, size: int, mask: int,
                  streams: int, **lay) -> VectorMacros:
    """The CPU decoder of :func:`macros`' format with AVX-512 (``states`` a multiple of LANES_PER_VECTOR).

    A vector of 16 states takes its 16 table entries with one gather (the
    packed table: bits, symbol and next states' base in 32 bits); the bit
    positions of its lanes are the stream's position plus the prefix sums of
    the entries' bit counts (the format's interleaved order), and each lane's
    bits are the 4 bytes at its position, shifted: with AVX-512 VBMI permuted
    out of one 64-byte load (``vpermb``), else a second gather. A vector's
    chain (gather, prefix sums, bytes, next state) is long, so a task runs
    TASK_STREAMS streams interleaved: their chains are independent. Bounds: a
    state indexes the table masked; the 64-byte load starts at most at the
    words' last 64 bytes, a gathered read at most at the byte of its stream's
    end bit (the format pads 8 bytes past it), so a malformed stream decodes
    to other symbols but reads only the words.

    ``put(dest, steps, g, row, column, e, lanes)`` takes the packed entries
    ``e`` (uint32x16; :func:`symbol_of` gives the symbols) of ``lanes`` (16, or
    fewer at the end of a row: its lanes from 0) symbols from ``column`` on of
    ``row``, decoded by the task's ``g``-th stream.
    """
    rps, lanes = rows_per_stream, LANES_PER_VECTOR
    vectors, groups, tail = states // lanes, k // states, k % states
    assert MAX_STATES <= 2 * lanes, "a row's tail is decoded as at most two vectors"
    assert (7 + (lanes - 1) * MAX_TABLE_LOG) // 8 + 4 <= READ_BYTES, "a vector's reads within its permuted bytes"
    tasks = -(-streams // TASK_STREAMS)
    mac = macros(n=n, k=k, table_log=table_log, states=states, rows_per_stream=rows_per_stream, size=size, mask=mask,
                 streams=streams, packed_table=True, **lay)
    word_bytes = 4 * lay["num_words"]
    permuted = word_bytes >= READ_BYTES and byte_permutes(tvm.target.Target.current() or make_target())  # else gathers

    def only(count: int, value, otherwise):
        """``value`` in the first ``count`` lanes, ``otherwise`` above."""
        if count == lanes:
            return value
        return T.Select(T.Ramp(0, 1, lanes) < T.Broadcast(count, lanes), value, otherwise)

    def vector_lanes(g, v):
        """The elements of ``state`` holding the task's g-th stream's v-th vector (an index expression, not a
        variable: TIR binds assigned vectors to variables, and loads at a variable vector index are no longer
        contiguous)."""
        return T.Ramp((g * vectors + v) * lanes, 1, lanes)

    def stream_lanes(g):
        """The elements of ``pos`` and ``end`` of the task's g-th stream: the same value in every lane."""
        return T.Ramp(g * lanes, 1, lanes)

    @T.macro
    def decode_vector(g, v, count, table, words, state, pos, end, put, dest, steps, row, column):
        # the task's g-th stream, its states' v-th vector, the first count lanes live
        e: T.let = gather(table[0], state[vector_lanes(g, v)] & uint32s(mask), 4)
        nb: T.let = e & uint32s(255)
        # per lane the bits of the lanes up to it (the lanes past count read bits too, but keep their states)
        sums_1: T.let = nb + lanes_up(nb, 1)
        sums_2: T.let = sums_1 + lanes_up(sums_1, 2)
        sums_4: T.let = sums_2 + lanes_up(sums_2, 4)
        ends: T.let = sums_4 + lanes_up(sums_4, 8)
        # (the exclusive sums in int32: the simplifier rejects uint32 differences it cannot prove non-negative)
        bit: T.let = pos[stream_lanes(g)] + T.reinterpret("uint32x16", T.reinterpret("int32x16", ends) - T.reinterpret("int32x16", nb))
        if permuted:
            # the READ_BYTES bytes from the vector's first byte (moved back to the words' last READ_BYTES: the load
            # stays within them whatever the position), each lane's 4 bytes permuted out of them. On a well-formed
            # stream a lane's 4 bytes lie below READ_BYTES (below 33 from the first byte, or below 59 from the
            # words' last READ_BYTES: its byte is at most the end byte, 8 before the words' end); vpermb takes an
            # index's low 6 bits, so on a malformed one a lane reads other bytes of the register
            first: T.let = T.min(pos[g * lanes] >> T.uint32(3), T.uint32(word_bytes - READ_BYTES))
            offset: T.let = (bit >> uint32s(3)) - T.Broadcast(first, lanes)
            indices: T.let = offset * uint32s(0x01010101) + uint32s(0x03020100)
            window: T.let = words[T.Ramp(T.Cast("int32", first), 1, READ_BYTES)]
            read: T.let = T.reinterpret("uint32x16", tirx.call_llvm_pure_intrin(
                "uint8x64", PERMUTE_BYTES, window, T.reinterpret("uint8x64", indices))) >> (bit & uint32s(7))
        else:
            read: T.let = gather(words[0], T.min(bit >> uint32s(3), end[stream_lanes(g)]), 1) >> (bit & uint32s(7))
        state[vector_lanes(g, v)] = only(count, (e >> uint32s(16)) + (read & ~(uint32s(0xFFFFFFFF) << nb)), state[vector_lanes(g, v)])
        pos[stream_lanes(g)] = pos[stream_lanes(g)] + tirx.Shuffle([ends], [count - 1] * lanes)
        put(dest, steps, g, row, column, e, count)

    @T.macro
    def start_stream(g, st, offsets, words, state, pos, end):
        # the stream's initial states, table_log bits each from bit offsets[st], a vector at a time
        end[stream_lanes(g)] = T.Broadcast(offsets[st + 1] >> T.uint32(3), lanes)
        for v in T.unroll(vectors):
            bit: T.let = T.Broadcast(offsets[st] + T.uint32(v * lanes * table_log), lanes) + T.Ramp(
                T.uint32(0), T.uint32(table_log), lanes)
            state[T.Ramp((g * vectors + v) * lanes, 1, lanes)] = (gather(
                words[0], T.min(bit >> uint32s(3), end[stream_lanes(g)]), 1) >> (bit & uint32s(7))) & uint32s(mask)
        pos[stream_lanes(g)] = T.Broadcast(offsets[st] + T.uint32(states * table_log), lanes)

    @T.macro
    def decode_task(first, last, table, offsets, words, put, dest, steps, begin_row, end_row):
        # streams first .. min(first + TASK_STREAMS, last) - 1, interleaved; begin_row and end_row (dest, steps, g,
        # row), if given, run before and after each row of each stream
        state = T.decl_buffer((TASK_STREAMS * states,), "uint32")
        pos = T.decl_buffer((TASK_STREAMS * lanes,), "uint32")
        end = T.decl_buffer((TASK_STREAMS * lanes,), "uint32")
        for g in T.unroll(TASK_STREAMS):
            start_stream(g, T.min(first + g, last - 1), offsets, words, state, pos, end)
        for r in range(T.min(rps, n - first * rps)):  # the first stream's rows: the others have as many or fewer
            for g in T.unroll(TASK_STREAMS):
                if first + g < last and (first + g) * rps + r < n:
                    if begin_row is not None:
                        begin_row(dest, steps, g, (first + g) * rps + r)
            for c in range(groups):
                for g in T.unroll(TASK_STREAMS):
                    if first + g < last and (first + g) * rps + r < n:
                        for v in T.unroll(vectors):
                            decode_vector(g, v, lanes, table, words, state, pos, end, put, dest, steps,
                                          (first + g) * rps + r, c * states + v * lanes)
            for g in T.unroll(TASK_STREAMS):
                if first + g < last and (first + g) * rps + r < n:
                    # the row's last tail < states symbols: at most two vectors (MAX_STATES), the last part-filled
                    if tail > 0:
                        decode_vector(g, 0, min(lanes, tail), table, words, state, pos, end, put, dest, steps,
                                      (first + g) * rps + r, groups * states)
                    if tail > lanes:
                        decode_vector(g, 1, tail - lanes, table, words, state, pos, end, put, dest, steps,
                                      (first + g) * rps + r, groups * states + lanes)
                    if end_row is not None:
                        end_row(dest, steps, g, (first + g) * rps + r)

    def level_of(e):
        return T.Cast("float32x16", T.reinterpret("int32x16", symbol_of(e)) - T.Broadcast(T.int32(lay["half"]), lanes))

    def dot_products(batch: int, x, out):
        """The fused GEMV's row hooks and put for ``batch`` rows of ``x`` into ``out``: per stream of the task and
        batch row a vector of accumulators in ``dest``, summed and scaled into ``out`` at the row's end."""

        def row_lanes(g, b):
            """The accumulators of the task's g-th stream and batch row b."""
            return T.Ramp((g * batch + b) * lanes, 1, lanes)

        @T.macro
        def clear(acc, steps, g, row):
            for b in range(batch):
                acc[row_lanes(g, b)] = T.Broadcast(T.float32(0), lanes)

        @T.macro
        def accumulate(acc, steps, g, row, column, e, count):
            # the symbols' levels times x's columns (0 past the row)
            for b in range(batch):
                if count == lanes:
                    acc[row_lanes(g, b)] = acc[row_lanes(g, b)] + x[b, T.Ramp(column, 1, lanes)] * level_of(e)
                else:
                    acc[row_lanes(g, b)] = acc[row_lanes(g, b)] + only(
                        count, x[b, T.min(T.Ramp(column, 1, lanes), T.Broadcast(k - 1, lanes))] * level_of(e),
                        T.Broadcast(T.float32(0), lanes))

        @T.macro
        def total(acc, steps, g, row):
            for b in range(batch):
                out[b, row] = lut.tree([acc[(g * batch + b) * lanes + j] for j in range(lanes)]) * steps[row]

        return DotProducts(clear, accumulate, total)

    @T.macro
    def decode_into(task, table, offsets, words, acc, steps, dots):
        # (a macro of its own: TVMScript binds no Python objects to names, so dots' fields are read here)
        decode_task(task * TASK_STREAMS, streams, table, offsets, words, dots.accumulate, acc, steps, dots.clear,
                    dots.total)

    @T.macro
    def fused_task(task, batch, x, table, offsets, words, steps, out):
        # the task's streams decoded once; every symbol goes straight into the dot products of the batch rows
        acc = T.decl_buffer((TASK_STREAMS * batch * lanes,), "float32")
        decode_into(task, table, offsets, words, acc, steps, dot_products(batch, x, out))

    @T.macro
    def decode_streams(counts, offsets, words, put, dest, steps):
        # one table, then every stream, TASK_STREAMS a task in parallel (put as above)
        table = T.decl_buffer((table_length(table_log, packed=True),), PACKED_TABLE_DTYPE)
        mac.build_table(counts, table)
        for task in T.parallel(tasks):
            decode_task(task * TASK_STREAMS, streams, table, offsets, words, put, dest, steps, None, None)

    return VectorMacros(mac.build_table, tasks, decode_task, decode_streams, fused_task)


def one_by_one(emit, whole=None):
    """The vector decoder's ``put`` from the scalar decoders' ``emit(dest, steps, row, column, e)``: the entries one
    by one, or ``whole(dest, steps, row, column, e)`` with the 16 of a whole vector at once if given."""

    @T.macro
    def put(dest, steps, g, row, column, e, count):
        if whole is not None and count == LANES_PER_VECTOR:
            whole(dest, steps, row, column, e)
        else:
            entries = T.decl_buffer((LANES_PER_VECTOR,), "uint32")
            entries[T.Ramp(0, 1, LANES_PER_VECTOR)] = e
            for j in range(count):
                emit(dest, steps, row, column + j, entries[j])

    return put



def decode_streams(lay: dict, counts, offsets, words, emit, dest, steps):
    """Every stream decoded in parallel, ``emit(dest, steps, row, column, level)`` taking each symbol's signed level
    (float32): with the vector decoder where :func:`vectorized`, else the scalar one (a TIR macro call)."""
    if not vectorized(lay["states"]):
        return macros(**lay).decode_streams(counts, offsets, words, emit, dest, steps)
    half = lay["half"]

    @T.macro
    def emit_entry(d, s, row, column, e):
        emit(d, s, row, column, T.Cast("float32", T.Cast("int32", symbol_of(e)) - half))

    return vector_macros(**lay).decode_streams(counts, offsets, words, one_by_one(emit_entry), dest, steps)

def decode_weights(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int,
                   num_words: int, into: Layout, x_ndim: int):
    """``f(x, counts, offsets, words, steps, W)``: ``q[n, k] * steps[n]`` stored in ``into`` (see :mod:`.decode`;
    ``x`` is not read), streams in parallel."""
    lay = layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    if not into.conv:
        return transposing_decoder(lay)
    streams = lay["streams"]
    x_shape = tuple(tirx.Var(f"d{i}", "int64") for i in range(x_ndim))

    @T.macro
    def store_scaled(out, steps, row, column, level):
        flat = T.decl_buffer((into.size,), "float32", data=out.data)
        flat[into.flat(row, column)] = level * steps[row]

    @T.prim_func(private=True)
    def kernel(
        _x: T.Buffer(x_shape, "float32"),
        counts: T.Buffer((levels,), "uint16"),
        offsets: T.Buffer((streams + 1,), "uint32"),
        words: T.Buffer((4 * num_words,), "uint8"),  # the uint32 words as bytes
        steps: T.Buffer((n,), "float32"),
        out: T.Buffer(into.shape, "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        decode_streams(lay, counts, offsets, words, store_scaled, out, steps)

    return kernel


def symbol_decoder(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int,
                   num_words: int):
    """``f(counts, offsets, words, symbols)``: the symbols ``q + levels // 2`` as uint8 [N, K], what the reference
    decoder gives: the decoding alone, each stream's symbols stored in order (its speed is the benchmark's decode
    rate; the other kernels add their writing to it)."""
    lay = layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    streams = lay["streams"]
    vector = vectorized(states)
    decoder = vector_macros(**lay) if vector else macros(**lay)

    @T.macro
    def store_symbol(out, steps, row, column, e):
        out[row, column] = T.Cast("uint8", symbol_of(e))

    @T.macro
    def store_symbols(out, steps, row, column, e):
        out[row, T.Ramp(column, 1, LANES_PER_VECTOR)] = T.Cast("uint8x16", symbol_of(e))

    @T.prim_func(private=True)
    def kernel(
        counts: T.Buffer((levels,), "uint16"),
        offsets: T.Buffer((streams + 1,), "uint32"),
        words: T.Buffer((4 * num_words,), "uint8"),  # the uint32 words as bytes
        symbols: T.Buffer((n, k), "uint8"),
    ):
        T.func_attr({"tirx.noalias": True})
        if vector:
            decoder.decode_streams(counts, offsets, words, one_by_one(store_symbol, store_symbols), symbols, None)
        else:
            table = T.decl_buffer((table_length(lay["table_log"]),), TABLE_DTYPE)
            decoder.build_table(counts, table)
            for st in T.parallel(streams):
                decoder.decode_symbols(st, table, offsets, words, store_symbol, symbols, None)

    return kernel


BLOCK_CHANNELS = 64  # channels a task of the blocked decoders writes out together: 256 bytes of each row of W


class Blocks(NamedTuple):
    """The blocked decoders' tasks: each decodes the ``group`` streams of ``channels`` channels (the last task
    fewer) into a buffer of their symbols, rows ``pitch`` entries apart, then writes its outputs from it."""

    group: int
    channels: int
    count: int
    pitch: int
    decode: object  # macro (counts, offsets, words, steps, write, dest): write(scratch, first, rows, dest) per task


def blocks(lay: dict) -> Blocks:
    """The decoders of a layout whose stores would cross a stream's channels (the matmul's ``W [K, N]``, the LUT
    planes): the decoding stores one 16-bit entry per symbol (symbol_of gives the symbol) along the buffer's row,
    and the writing visits each output cache line once, instead of each symbol touching its own line. With the
    vector decoder a task holds at least TASK_STREAMS streams, which it decodes interleaved."""
    k, rps, streams = lay["k"], lay["rows_per_stream"], lay["streams"]
    vector = vectorized(lay["states"])
    decoder = vector_macros(**lay) if vector else macros(**lay)
    group = max(TASK_STREAMS if vector else 1, BLOCK_CHANNELS // rps)
    channels = group * rps
    count = -(-streams // group)
    # the rows a cache line apart modulo 4 KiB: a writer reading one symbol per row in turn would otherwise find them
    # all in one L1 set; whole groups of 32 columns readable
    pitch = k + (-k) % 32 + 32

    @T.macro
    def keep_entry(scratch, steps, row, column, e):
        scratch[(row % channels) * pitch + column] = T.Cast("uint16", e)

    @T.macro
    def decode(counts, offsets, words, steps, write, dest):
        table = T.decl_buffer((table_length(lay["table_log"], packed=vector),),
                              PACKED_TABLE_DTYPE if vector else TABLE_DTYPE)
        decoder.build_table(counts, table)
        for blk in T.parallel(count):
            scratch = T.decl_buffer((channels * pitch,), "uint16")
            if vector:
                # entries stored one by one: after a vector store LLVM no longer vectorizes lut_weights' plane
                # builder over the buffer (measured: the whole decoder 2x slower)
                for s in range(-(-group // TASK_STREAMS)):
                    decoder.decode_task(blk * group + s * TASK_STREAMS, T.min(blk * group + group, streams), table,
                                        offsets, words, one_by_one(keep_entry), scratch, steps, None,
                                        None)
            else:
                for s in range(T.min(group, streams - blk * group)):
                    decoder.decode_symbols(blk * group + s, table, offsets, words, keep_entry, scratch, steps)
            write(scratch, blk * channels, T.min(channels, lay["n"] - blk * channels), dest)

    return Blocks(group, channels, count, pitch, decode)


def transposing_decoder(lay: dict):
    """The dense decoder for the matmul layout ``W [K, N]``, where a stream's channels are columns (:func:`blocks`:
    each row of ``W`` written over a task's channels, a few cache lines in one page, where a float per row of ``W``
    costs a cache line and a page per symbol)."""
    n, k, levels, streams, half = (lay[key] for key in ("n", "k", "levels", "streams", "half"))
    num_words = lay["num_words"]
    blocked = blocks(lay)

    @T.macro
    def write_rows(scratch, first, rows, dest):
        out, steps = dest
        for kk in range(k):
            for c in range(rows):
                out[kk, first + c] = T.Cast(
                    "float32", T.Cast("int32", symbol_of(scratch[c * blocked.pitch + kk])) - half) * steps[first + c]

    @T.prim_func(private=True)
    def kernel(
        _x: T.Buffer((T.int64(), T.int64()), "float32"),
        counts: T.Buffer((levels,), "uint16"),
        offsets: T.Buffer((streams + 1,), "uint32"),
        words: T.Buffer((4 * num_words,), "uint8"),  # the uint32 words as bytes
        steps: T.Buffer((n,), "float32"),
        out: T.Buffer((k, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        blocked.decode(counts, offsets, words, steps, write_rows, (out, steps))

    return kernel


def at_load_writer(lay: dict, out_shape: tuple, out_dtype: str, scales_shape: tuple, prepare, decode):
    """``f(counts, offsets, words, steps, out, scales)``, the skeleton of the decoders that run at load: first
    ``prepare(steps, out, scales)`` (the scales, and the padding past the channels), then ``decode(counts, offsets,
    words, steps, out)`` (TIR macros) decodes the streams into ``out``."""
    levels, streams, num_words, n = lay["levels"], lay["streams"], lay["num_words"], lay["n"]

    @T.prim_func(private=True)
    def kernel(
        counts: T.Buffer((levels,), "uint16"),
        offsets: T.Buffer((streams + 1,), "uint32"),
        words: T.Buffer((4 * num_words,), "uint8"),  # the uint32 words as bytes
        steps: T.Buffer((n,), "float32"),
        out: T.Buffer(out_shape, out_dtype),
        scales: T.Buffer(scales_shape, "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        prepare(steps, out, scales)
        decode(counts, offsets, words, steps, out)

    return kernel


NIBBLE_LEVELS = 15  # up to this many levels (codes in -7..7) the codes are 4-bit two's complement, two per byte


def integer_bits(levels: int) -> int:
    """Bits of the two's complement integers that hold the codes of ``levels`` levels (4 or 8)."""
    return 4 if levels <= NIBBLE_LEVELS else 8


def integer_weights(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int,
                    num_words: int):
    """``f(counts, offsets, words, steps, codes, scales)``: the codes as ``int8.Int8Weights.packed(q, steps,
    integer_bits(levels))`` lays them out (panels of ``matmul.COLS`` channels, K-major; two codes a byte up to
    NIBBLE_LEVELS levels, even ``k`` in the low nibble), the channels past ``n`` zero; ``scales`` = ``steps``."""
    lay = layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    cols = int8.matmul.COLS
    panels = -(-n // cols)
    nibbles = integer_bits(levels) == 4
    width = -(-k // 2) if nibbles else k

    @T.macro
    def store_nibble(out, steps, row, column, level):
        # the even weight of a byte first: it writes the byte, the odd one ORs its nibble in
        code: T.let = T.Cast("int32", level) & 15
        if column % 2 == 0:
            out[row // cols, column // 2, row % cols] = T.Cast("int8", code)
        else:
            out[row // cols, column // 2, row % cols] = T.Cast(
                "int8", T.Cast("int32", out[row // cols, column // 2, row % cols]) | (code << 4))

    @T.macro
    def store_code(out, steps, row, column, level):
        out[row // cols, column, row % cols] = T.Cast("int8", T.Cast("int32", level))

    @T.macro
    def prepare(steps, codes, scales):
        for c in range(n):
            scales[c] = steps[c]
        for r in range(panels * cols - n):  # the last panel's channels past n
            for kk in range(width):
                codes[panels - 1, kk, (n + r) % cols] = T.int8(0)

    @T.macro
    def decode(counts, offsets, words, steps, codes):
        decode_streams(lay, counts, offsets, words, store_nibble if nibbles else store_code, codes, steps)

    return at_load_writer(lay, (panels, width, cols), "int8", (n,), prepare, decode)


@T.macro
def lane_scales(n, steps, scales):
    # the steps as bitplane_lut.lanes_of_scales lays out per-channel scales, the last block's lanes past n zero
    for c in range(scales.shape[0] * scales.shape[2]):
        scales[c // scales.shape[2], 0, c % scales.shape[2]] = T.if_then_else(c < n, steps[T.min(c, n - 1)],
                                                                               T.float32(0))


def lut_weights(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int, num_words: int):
    """``f(counts, offsets, words, steps, planes, scales)``: the codes as ``bitplane_lut.twos_complement_planes(q,
    tans.lut_planes(levels))`` lays them out, and the steps as ``bitplane_lut.lanes_of_scales`` (padding zero).

    A blocked decoder (:func:`blocks`): each channel's word of a plane (32 weights) is built from the buffer at
    once, its bits or-reduced in vectors, and stored whole."""
    lay = layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    blocked = blocks(lay)
    half = lay["half"]
    magnitude = tans.lut_planes(levels)
    lanes, group = bitplane_lut.LANES, bitplane_lut.GROUP
    lane_blocks, kg = -(-n // lanes), -(-k // group)

    @T.macro
    def write_planes(scratch, first, rows, planes):
        bits = T.decl_buffer((magnitude + 1,), "uint32")
        for c in range(rows):
            row: T.let = first + c
            for g in range(kg):
                for b in T.unroll(magnitude + 1):
                    bits[b] = T.uint32(0)
                for j in range(group):
                    # plane b holds bit (magnitude - b) of the two's complement code; the weights past k are zero
                    code: T.let = T.Cast("int32", symbol_of(scratch[c * blocked.pitch + g * group + j])) - half
                    for b in T.unroll(magnitude + 1):
                        bits[b] = bits[b] | T.if_then_else(
                            g * group + j < k, T.Cast("uint32", (code >> (magnitude - b)) & 1) << T.Cast("uint32", j),
                            T.uint32(0))
                for b in T.unroll(magnitude + 1):
                    planes[b, row // lanes * kg + g, row % lanes] = bits[b]

    @T.macro
    def prepare(steps, planes, scales):
        lane_scales(n, steps, scales)
        for r in range(lane_blocks * lanes - n):  # the last block's channels past n
            for i in range(kg):
                for b in range(magnitude + 1):
                    planes[b, (lane_blocks - 1) * kg + i, (n + r) % lanes] = T.uint32(0)

    @T.macro
    def decode(counts, offsets, words, steps, planes):
        blocked.decode(counts, offsets, words, steps, write_planes, planes)

    return at_load_writer(lay, (magnitude + 1, lane_blocks * kg, lanes), "uint32", (lane_blocks, 1, lanes), prepare,
                          decode)


def int8_lut_weights(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int,
                     num_words: int):
    """``f(counts, offsets, words, steps, nibbles, scales)``: the codes as ``bitplane_lut.int8_nibbles(q,
    tans.lut_planes(levels))`` lays them out (the int8-table GEMV's look-up indices, up to INT8_TABLE_LEVELS levels),
    and the steps as ``bitplane_lut.lanes_of_scales`` (padding zero).

    A blocked decoder (:func:`blocks`), as :func:`lut_weights`: per channel and group of 32 codes, the offset codes
    ``u = q + 2^P`` give each byte (plane ``p`` of S, 8 weights of one table, nibble bit ``hi * 4 + i`` for weight
    ``16 hi + 4 t + i`` of table ``t``), built from the buffer at once and stored at its place in the row."""
    lay = layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    blocked = blocks(lay)
    half = lay["half"]
    magnitude = tans.lut_planes(levels)
    bitplane_lut.check_tables("int8", magnitude)
    span, stored = bitplane_lut.int8_planes(magnitude), bitplane_lut.int8_stored_planes(magnitude)
    per_vector = bitplane_lut.QUAD // span  # tables a vector's low nibbles hold
    lanes, group = bitplane_lut.LANES, bitplane_lut.GROUP
    lane_blocks, kg = -(-n // lanes), -(-k // group)
    tables = group // 8  # a group's tables of 4 weights in the low nibbles (weights 0-15; the high nibbles: 16-31)
    triple = stored == bitplane_lut.TRIPLE

    def vector_of(t, p):
        """The stored vector that plane ``p`` of table ``t``'s byte goes to (TIR expressions of unrolled loop
        variables): the tables a vector holds one after the other; at 3 planes vector 3's plane ``p`` is in vector
        ``p - 1`` (``bitplane_lut.triple_bytes``)."""
        return T.Select(t == bitplane_lut.TRIPLE, p - 1, t) if triple else t // per_vector

    def byte_of(channel, t, p):
        """Its byte in the vector: a channel's S planes in S consecutive bytes, the tables of a vector one after the
        other; at 3 planes (plane 0, zero, not stored) plane ``p`` of vector ``t`` < 3 in byte ``p - 1`` below byte
        ``t`` and in byte ``p`` from it on, vector 3's in byte ``p - 1`` (the byte its vector ``p - 1`` leaves free)."""
        if triple:
            return channel * span + p - T.Cast("int32", p - 1 < t)
        return (t % per_vector * lanes + channel) * span + p

    low = span - 1 - magnitude  # the planes below hold no bit (offset codes u < 2^(P + 1)): at 3 planes plane 0
    # a zero code's bytes (u = 2^P): plane p's all ones where bit S - 1 - p of 2^P is set, as a word's byte p
    padding_word = sum(255 << 8 * p for p in range(span) if (1 << magnitude) >> (span - 1 - p) & 1)

    @T.macro
    def write_nibbles(scratch, first, rows, nibbles):
        bytes_ = T.decl_buffer((tables * span,), "uint32")
        for c in range(rows):
            row: T.let = first + c
            for g in range(kg):
                for b in T.unroll(tables * span):
                    bytes_[b] = T.uint32(0)
                for j in T.unroll(group):
                    # the weights past k are zero: u = 2^P
                    u: T.let = T.if_then_else(g * group + j < k, T.Cast("int32", symbol_of(
                        scratch[c * blocked.pitch + g * group + j])) - half, T.int32(0)) + (1 << magnitude)
                    for p in T.unroll(low, span):
                        bytes_[j % 16 // 4 * span + p] = bytes_[j % 16 // 4 * span + p] | (
                            T.Cast("uint32", (u >> (span - 1 - p)) & 1) << T.Cast("uint32", j // 16 * 4 + j % 4))
                for t in T.unroll(tables):
                    for p in T.unroll(low, span):
                        nibbles[row // lanes * kg + g, vector_of(t, p), byte_of(row % lanes, t, p)] = T.Cast(
                            "uint8", bytes_[t * span + p])

    @T.macro
    def prepare(steps, nibbles, scales):
        lane_scales(n, steps, scales)
        for r in range(lane_blocks * lanes - n):  # the last block's channels past n: zero codes
            for i in range(kg):
                for t in T.unroll(tables):
                    for p in T.unroll(low, span):
                        nibbles[(lane_blocks - 1) * kg + i, vector_of(t, p), byte_of((n + r) % lanes, t, p)] = T.Cast(
                            "uint8", T.uint32(padding_word) >> T.Cast("uint32", 8 * p))

    @T.macro
    def decode(counts, offsets, words, steps, nibbles):
        blocked.decode(counts, offsets, words, steps, write_nibbles, nibbles)

    return at_load_writer(lay, (lane_blocks * kg, stored, lanes * bitplane_lut.QUAD), "uint8", (lane_blocks, 1, lanes),
                          prepare, decode)


def matmul(*, n: int, k: int, levels: int, table_log: int, states: int, rows_per_stream: int, num_words: int):
    """``out[m, n] = sum_k x[m, k] * q[n, k] * steps[n]`` for a symbolic batch m (see the module docstring)."""
    lay = layout(n, k, levels, table_log, states, rows_per_stream, num_words)
    vector = vectorized(states)
    decoder = vector_macros(**lay) if vector else macros(**lay)
    streams, rps = lay["streams"], rows_per_stream
    task_streams = TASK_STREAMS if vector else 1
    tasks = decoder.tasks if vector else streams
    block = task_streams * rps * k  # a task's decoded rows
    vectors, vector_tail = k // LANES, k % LANES

    @T.macro
    def keep(decoded, steps, row, column, level):
        decoded[(row % (task_streams * rps)) * k + column] = level  # the task's own buffer; scaled after the sum

    @T.macro
    def keep_entries(decoded, steps, row, column, e):
        decoded[T.Ramp((row % (task_streams * rps)) * k + column, 1, LANES)] = T.Cast(
            "float32x16", T.reinterpret("int32x16", symbol_of(e)) - T.Broadcast(T.int32(lay["half"]), LANES))

    @T.macro
    def keep_entry(decoded, steps, row, column, e):
        keep(decoded, steps, row, column, T.Cast("float32", T.Cast("int32", symbol_of(e)) - lay["half"]))

    @T.macro
    def multiply(x, m, decoded, first, rows, steps, out):
        # out's columns first .. first + rows - 1 from their decoded weights: 16-lane accumulators, BATCH_BLOCK batch
        # rows per weight load
        acc = T.decl_buffer((BATCH_BLOCK * LANES,), "float32", scope="global")
        total = T.decl_buffer((BATCH_BLOCK,), "float32", scope="global")
        for r in range(rows):
            row: T.let = first + r
            for bo in range((m + BATCH_BLOCK - 1) // BATCH_BLOCK):
                for bb in T.unroll(BATCH_BLOCK):
                    for lane in T.vectorized(LANES):
                        acc[bb * LANES + lane] = T.float32(0)
                for v in range(vectors):
                    for bb in T.unroll(BATCH_BLOCK):
                        for lane in T.vectorized(LANES):
                            acc[bb * LANES + lane] = acc[bb * LANES + lane] + x[
                                T.min(bo * BATCH_BLOCK + bb, m - 1), v * LANES + lane
                            ] * decoded[r * k + v * LANES + lane]
                for bb in T.unroll(BATCH_BLOCK):
                    total[bb] = T.float32(0)
                    for lane in range(LANES):
                        total[bb] = total[bb] + acc[bb * LANES + lane]
                    for kk in range(vector_tail):
                        total[bb] = total[bb] + x[T.min(bo * BATCH_BLOCK + bb, m - 1), vectors * LANES + kk] * decoded[r * k + vectors * LANES + kk]
                    if bo * BATCH_BLOCK + bb < m:
                        out[bo * BATCH_BLOCK + bb, row] = total[bb] * steps[row]

    m = TypeVar("m")  # in TVMScript signatures: the rows of x and out, an int64 variable matched at the call

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((m, k), "float32"),
        counts: T.Buffer((levels,), "uint16"),
        offsets: T.Buffer((streams + 1,), "uint32"),
        words: T.Buffer((4 * num_words,), "uint8"),  # the uint32 words as bytes
        steps: T.Buffer((n,), "float32"),
        out: T.Buffer((m, n), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        table = T.decl_buffer((table_length(table_log, packed=vector),), PACKED_TABLE_DTYPE if vector else TABLE_DTYPE)
        decoder.build_table(counts, table)
        # one copy of the fused loop per batch size up to FUSED_MAX_BATCH, so that its accumulators are registers
        if m == T.int64(1):
            for task in T.parallel(tasks):
                if vector:
                    decoder.fused_task(task, 1, x, table, offsets, words, steps, out)
                else:
                    decoder.fused_stream(task, 1, x, table, offsets, words, steps, out)
        elif m == T.int64(2):
            for task in T.parallel(tasks):
                if vector:
                    decoder.fused_task(task, 2, x, table, offsets, words, steps, out)
                else:
                    decoder.fused_stream(task, 2, x, table, offsets, words, steps, out)
        else:
            for task in T.parallel(tasks):
                # decode the task's channels into a buffer of its own ...
                decoded = T.decl_buffer((block,), "float32")
                if vector:
                    decoder.decode_task(task * TASK_STREAMS, streams, table, offsets, words,
                                        one_by_one(keep_entry, keep_entries), decoded, steps, None, None)
                else:
                    decoder.decode_stream(task, table, offsets, words, keep, decoded, steps)
                # ... then a dense matmul over it
                first: T.let = task * task_streams * rps
                multiply(x, m, decoded, first, T.min(task_streams * rps, n - first), steps, out)

    return kernel


def stream_layout(enc: Encoded) -> dict:
    """The compile-time layout of a ``tans`` encoding, as the tANS kernels take it."""
    n, k = enc.shape
    h = enc.header
    return dict(n=n, k=k, levels=int(h["levels"]), table_log=int(h["table_log"]), states=int(h["states"]),
                rows_per_stream=int(h["rows_per_stream"]), num_words=int(enc.arrays["words"].size))


def constants(enc: Encoded, byte_words: bool = True) -> list[np.ndarray]:
    """What the tANS kernels read: counts, offsets, the words, steps.

    The CPU kernels take the words as bytes (for unaligned 8-byte loads), the GPU kernel as the uint32 words.
    """
    a = enc.arrays
    return [a["counts"], a["offsets"], a["words"].view(np.uint8) if byte_words else a["words"], a["steps"]]


def checked_layout(enc: Encoded) -> dict:
    """:func:`stream_layout`, after checking the streams' counts and offsets: the kernels index their table by
    decoded states and trust them (the runtime checks them again at load, by the layout each kernel carries in
    ``TANS_ATTR``)."""
    tans.tans_coder.validate(tans.streams(enc), int(enc.header["levels"]))
    return stream_layout(enc)


@register(tans.NAME, ops=("matmul", "conv2d"), target="llvm")
def llvm_call(enc: Encoded, conv: ConvSpec | None, tans_execution: str = tans.Config.tans_execution,
              lut_tables: str = tans.Config.lut_tables) -> KernelCall:
    """``load``: the integer kernels over the codes decoded at load (the look-up-table GEMV's tables as
    ``lut_tables.chosen`` picks them for ``lut_tables``). ``stream``: the fused decode-and-GEMV for one row, decode
    to the dense weight above one row and for convs."""
    layout = checked_layout(enc)
    if tans_execution == "load":
        return _at_load_call(enc, conv, layout, lut_tables)
    tensors = constants(enc)
    small = None if conv else KernelCall("tans_matmul", matmul(**layout).with_attr(TANS_ATTR, layout), tensors)
    into, x_ndim = destination(enc, conv)
    decoder = decode_weights(**layout, into=into, x_ndim=x_ndim).with_attr(TANS_ATTR, layout)
    return with_decoder(small, decoder, "tans", tensors, conv)


def lut_layout(enc: Encoded) -> bitplane_lut.Layout:
    """The look-up-table kernels' layout of a ``tans`` encoding's codes: ``tans.lut_planes`` magnitude planes, the
    steps as per-channel scales."""
    n, k = enc.shape
    return bitplane_lut.Layout(n, k, tans.lut_planes(int(enc.header["levels"])), 0, 8 * -(-k // 8), 1)


def _at_load_call(enc: Encoded, conv: ConvSpec | None, layout: dict, asked: str) -> KernelCall:
    """A matmul on a CPU with AVX-512: the look-up-table kernels of ``bie-bitplane`` over the words
    :func:`int8_lut_weights` (int8 tables) or :func:`lut_weights` (fp32) writes at load. Else (and convs) the integer
    GEMV (one row) or decode kernel of its 4- and 8-bit encodings, over the codes :func:`integer_weights` writes."""
    n, k = enc.shape
    target = tvm.target.Target.current()
    if conv is None and lut.supported(target):
        shapes = lut_layout(enc)
        tables = chosen(asked, tans.int8_tables_fit(layout["levels"]), lut.int8_supported(target))
        planes, rows = shapes.magnitude_planes, -(-n // bitplane_lut.LANES) * -(-k // bitplane_lut.GROUP)
        words = (np.zeros((rows, bitplane_lut.int8_stored_planes(planes), 4 * bitplane_lut.LANES), np.uint8)
                 if tables == "int8" else np.zeros((planes + 1, rows, bitplane_lut.LANES), np.uint32))
        computed = [words,  # shapes only: the values come at load
                    bitplane_lut.lanes_of_scales(enc.arrays["steps"][:, None])]
        call = bitplane_lut.kernel_call(shapes, computed, "tans", tables)
        writer = int8_lut_weights if tables == "int8" else lut_weights
        call.at_load = AtLoad(writer(**layout).with_attr(TANS_ATTR, layout), constants(enc))
        return call
    shapes = int8.Int8Weights.packed(np.zeros((n, k), np.int8), enc.arrays["steps"], integer_bits(layout["levels"]))
    call = int8.kernel_call(shapes, enc, conv, "tans_integer")
    call.at_load = AtLoad(integer_weights(**layout).with_attr(TANS_ATTR, layout), constants(enc))
    return call

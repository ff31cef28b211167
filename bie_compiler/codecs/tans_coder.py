"""A tANS (table-based asymmetric numeral systems) coder for symbol matrices: the format and its reference decoder.

This is FSE's construction (zstd), written for matrices of small symbols
``[N, K]`` with alphabet ``0 .. A-1``, laid out so that a decoder can run many
streams in parallel and keep several symbols in flight within a stream.

Format (everything a decoder needs; :class:`TansStreams`):

* ``counts``: uint16 ``[A]``, the symbol counts normalized to ``2^R`` (``R`` =
  ``table_log``); every symbol that occurs gets at least 1. The decoder rebuilds
  its table from them (:func:`decode_table`), so only ``2 A`` bytes are stored.
* Streams: the rows are cut into blocks of ``rows_per_stream`` consecutive rows
  (the last one may be shorter); each block is one stream, coded on its own.
* Interleaving: within a stream, symbols are decoded in row-major order and
  symbol ``(r, k)`` belongs to state ``k % S`` (``S`` = ``states``); each state is
  an independent tANS state machine, all reading one shared bit sequence.
* A stream's bits: its ``S`` initial decoder states, ``R`` bits each, then for
  every symbol in decoding order the bits its state reads. Bits are LSB-first
  in little-endian uint32 words: bit ``p`` is bit ``p % 32`` of ``words[p // 32]``.
* ``offsets``: uint32 ``[streams + 1]``, the bit offset at which each stream
  starts; ``offsets[-1]`` is the total. ``words`` has ``total // 32 + 3``
  entries, the last zero padding: a decoder at any bit ``p <= total`` may load
  the 8 bytes from byte ``p // 8`` (or ``words[p // 32]`` and the next two) and
  shift, with no bounds test.
* ``checksum``: CRC-32 of counts, offsets and words, so a corrupted stream
  fails loudly instead of decoding to other symbols.

Decoding one symbol with state ``X`` in ``[0, 2^R)``: ``e = table[X]``; the symbol
is ``e.symbol``; ``X = e.base + read(e.bits)``. The encoder runs backwards from
state 0 in every lane, so a well-formed stream also ends with every state at 0
having consumed exactly its bits: the reference decoder checks that too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CodecError
from ..runtime import tans_streams
from ..runtime.tans_streams import checksum, words_for

MAX_ALPHABET = 256  # symbols fit a byte in the kernels' packed table entries
OFFSET_LIMIT = 2**32  # bit offsets are uint32
PACK_CHUNK = 1 << 20  # fields packed at a time


@dataclass(frozen=True)
class TansStreams:
    """A coded symbol matrix (see the module docstring for the format)."""

    shape: tuple[int, int]
    table_log: int
    states: int  # interleaved states per stream
    rows_per_stream: int
    counts: np.ndarray  # uint16 [alphabet], sum 2^table_log
    offsets: np.ndarray  # uint32 [streams + 1], bit offsets
    words: np.ndarray  # uint32 [words_for(total bits)]
    checksum: int  # CRC-32 of counts, offsets, words

    @property
    def num_streams(self) -> int:
        return num_streams(self.shape[0], self.rows_per_stream)

    @property
    def state_bits(self) -> int:
        """Bits spent on the streams' initial states."""
        return self.num_streams * self.states * self.table_log

    @property
    def payload_bits(self) -> int:
        """Bits spent on the symbols themselves (everything in the streams but the initial states)."""
        return int(self.offsets[-1]) - self.state_bits


def num_streams(rows: int, rows_per_stream: int) -> int:
    return -(-rows // rows_per_stream)


def check_layout(table_log: int, states: int, rows_per_stream: int) -> None:
    problem = tans_streams.layout_problem(table_log, states, rows_per_stream)
    if problem:
        raise CodecError(problem)


# --- the table -------------------------------------------------------------------------------------------------------


def normalize_counts(histogram: np.ndarray, table_log: int) -> np.ndarray:
    """Counts scaled to sum to ``2^table_log``, each occurring symbol >= 1, least coding cost.

    Start from proportional rounding, then move single slots where they cost
    the fewest bits: add a slot where ``h log2((c + 1) / c)`` gains most, or
    remove one where ``h log2(c / (c - 1))`` loses least.
    """
    hist = np.asarray(histogram, np.int64)
    size = 1 << table_log
    present = hist > 0
    if present.sum() > size:
        raise CodecError(f"{int(present.sum())} distinct symbols do not fit a table of 2^{table_log} states")
    total = hist.sum()
    counts = np.where(present, np.maximum(1, np.rint(hist * size / total)), 0).astype(np.int64)
    h = hist.astype(np.float64)
    while counts.sum() != size:
        if counts.sum() < size:
            gain = np.where(present, h * np.log2((counts + 1) / np.maximum(counts, 1)), -1.0)
            counts[np.argmax(gain)] += 1
        else:
            loss = np.where(counts > 1, h * np.log2(np.maximum(counts, 2) / np.maximum(counts - 1, 1)), np.inf)
            counts[np.argmin(loss)] -= 1
    return counts.astype(np.uint16)


def spread_step(table_log: int) -> int:
    """FSE's step through the table: odd, so it visits every state once."""
    size = 1 << table_log
    return (size >> 1) + (size >> 3) + 3


def spread(counts: np.ndarray, table_log: int) -> np.ndarray:
    """Symbol of each state: symbols in order, ``counts[s]`` states each, placed at successive steps."""
    size = 1 << table_log
    visit = (np.arange(size, dtype=np.int64) * spread_step(table_log)) & (size - 1)
    symbols = np.empty(size, np.int64)
    symbols[visit] = np.repeat(np.arange(len(counts)), counts.astype(np.int64))
    return symbols


@dataclass(frozen=True)
class DecodeTable:
    """Per state: the symbol, how many bits to read, and the base of the next state."""

    symbol: np.ndarray  # int64 [2^R]
    bits: np.ndarray  # int64 [2^R]
    base: np.ndarray  # int64 [2^R]
    states_by_symbol: np.ndarray  # int64 [2^R]: the states of symbol 0 in increasing order, then symbol 1, ...
    first: np.ndarray  # int64 [alphabet]: where each symbol's states start in states_by_symbol


def decode_table(counts: np.ndarray, table_log: int) -> DecodeTable:
    """The j-th state (in increasing order) of symbol s takes ``n = counts[s] + j`` in ``[c, 2c)``;
    it reads ``R - floor(log2 n)`` bits and moves to ``(n << bits) - 2^R + read value``."""
    size = 1 << table_log
    counts = counts.astype(np.int64)
    symbol = spread(counts, table_log)
    by_symbol = np.argsort(symbol, kind="stable")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(size, np.int64)
    rank[by_symbol] = np.arange(size) - first[symbol[by_symbol]]
    n = counts[symbol] + rank
    bits = table_log - floor_log2(n)
    base = (n << bits) - size
    return DecodeTable(symbol, bits, base, by_symbol, first)


def floor_log2(n: np.ndarray) -> np.ndarray:
    return (np.frexp(n.astype(np.float64))[1] - 1).astype(np.int64)


# --- encoding ----------------------------------------------------------------------------------------------------------


def _steps(a: np.ndarray, streams: int, rows_per_stream: int, states: int) -> np.ndarray:
    """[streams * rows_per_stream, groups * states] -> [rows_per_stream * groups, streams * states]:
    one row per decoding step, one column per state (lane), so that each step reads contiguous memory."""
    groups = a.shape[1] // states
    return np.ascontiguousarray(
        a.reshape(streams, rows_per_stream, groups, states).transpose(1, 2, 0, 3).reshape(rows_per_stream * groups, -1))


def encode(symbols: np.ndarray, alphabet: int, *, table_log: int, states: int, rows_per_stream: int,
           counts: np.ndarray | None = None) -> TansStreams:
    """Code ``symbols`` (ints in ``[0, alphabet)``, shape [N, K]) in the format of the module docstring, with the
    table normalised from their histogram or the given ``counts`` (uint16 [alphabet], summing to 2^table_log,
    non-zero for every symbol present: a table shared by several streams)."""
    check_layout(table_log, states, rows_per_stream)
    sym = np.asarray(symbols)
    if sym.ndim != 2 or 0 in sym.shape:
        raise CodecError(f"expected a non-empty [N, K] symbol matrix, got shape {sym.shape}")
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise CodecError(f"alphabet must be in 1..{MAX_ALPHABET}, got {alphabet}")
    if sym.min() < 0 or sym.max() >= alphabet:
        raise CodecError(f"symbols must lie in [0, {alphabet}), got [{sym.min()}, {sym.max()}]")
    n, k = sym.shape
    size = 1 << table_log
    histogram = np.bincount(sym.ravel(), minlength=alphabet)
    if counts is None:
        counts = normalize_counts(histogram, table_log)
    elif counts.shape != (alphabet,) or int(counts.sum()) != size or np.any(counts[histogram > 0] == 0):
        raise CodecError(f"given counts do not make a table of 2^{table_log} states for these symbols")
    table = decode_table(counts, table_log)
    c = counts.astype(np.int64)
    # Encoding s from state y = X + 2^R in [2^R, 2^(R+1)): emit the low ``nb`` bits of y where y >> nb is in
    # [c, 2c): nb is ``top`` or ``top - 1`` with top = R - floor(log2 c), the larger one iff y >= c << top.
    top = np.where(c > 0, table_log - floor_log2(np.maximum(c, 1)), 0)
    threshold = c << top
    offset = table.first - c  # states_by_symbol index of n is first[s] + n - c

    streams = num_streams(n, rows_per_stream)
    groups = -(-k // states)
    # Padding (short last stream, K not a multiple of S) takes a symbol that has states; it is masked out.
    padded = np.full((streams * rows_per_stream, groups * states), int(np.argmax(counts)), np.int32)
    padded[:n, :k] = sym
    valid = np.zeros(padded.shape, bool)
    valid[:n, :k] = True
    step_sym, step_valid = _steps(padded, streams, rows_per_stream, states), _steps(valid, streams, rows_per_stream, states)
    all_valid = step_valid.all(axis=1)
    values = np.zeros(step_sym.shape, np.int32)  # int32 halves the memory traffic of the big arrays
    nbits = np.zeros(step_sym.shape, np.int32)
    x = np.zeros(step_sym.shape[1], np.int64)  # every lane starts (ends, for the decoder) in state 0
    for t in range(step_sym.shape[0] - 1, -1, -1):
        s = step_sym[t]
        y = x + size
        nb = top[s] - (y < threshold[s])
        new_x = table.states_by_symbol[offset[s] + (y >> nb)]
        v = y & ((1 << nb) - 1)
        if all_valid[t]:
            x = new_x
        else:
            keep = step_valid[t]
            x, nb, v = np.where(keep, new_x, x), np.where(keep, nb, 0), np.where(keep, v, 0)
        values[t], nbits[t] = v, nb

    def decode_order(by_step: np.ndarray) -> np.ndarray:
        """[steps, lanes] -> [streams, rows_per_stream * groups * states], the decoder's reading order."""
        return by_step.reshape(rows_per_stream, groups, streams, states).transpose(2, 0, 1, 3).reshape(streams, -1)

    # Per stream: the S initial states (R bits each), then the symbols' bits in decoding order.
    field_values = np.concatenate([x.reshape(streams, states).astype(np.int32), decode_order(values)], axis=1).ravel()
    field_bits = np.concatenate([np.full((streams, states), table_log, np.int32), decode_order(nbits)], axis=1).ravel()
    ends = np.cumsum(field_bits, dtype=np.int64)
    positions = ends - field_bits
    total = int(ends[-1])
    if total >= OFFSET_LIMIT:
        raise CodecError(f"{total} coded bits exceed the format's 32-bit offsets; split the layer")
    fields_per_stream = field_bits.size // streams
    offsets = np.append(positions[::fields_per_stream], total).astype(np.uint32)
    words = pack_fields(field_values, field_bits, positions, total)
    return TansStreams((n, k), table_log, states, rows_per_stream, counts, offsets, words,
                       checksum(counts, offsets, words))


def pack_fields(values: np.ndarray, nbits: np.ndarray, positions: np.ndarray, total_bits: int) -> np.ndarray:
    """Bit fields (value, width, bit position; in position order) into LSB-first uint32 words, plus padding
    (:func:`words_for`). Fields never overlap, so summing those that land in one word equals OR-ing them.
    Done in chunks of PACK_CHUNK fields: the temporaries stay small and are reused, which is much faster than
    fresh arrays the size of the layer."""
    num_words = words_for(total_bits)
    words = np.zeros(num_words + 1, np.int64)
    for lo in range(0, positions.size, PACK_CHUNK):
        chunk = slice(lo, lo + PACK_CHUNK)
        used = nbits[chunk] > 0
        pos = positions[chunk][used]
        shifted = values[chunk][used].astype(np.int64) << (pos & 31)  # < 2^(15 + 31): int64 is enough
        for part, word in ((shifted & 0xFFFFFFFF, pos >> 5), (shifted >> 32, (pos >> 5) + 1)):
            if word.size:
                starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
                words[word[starts]] += np.add.reduceat(part, starts)
    return words[:num_words].astype(np.uint32)


# --- decoding ----------------------------------------------------------------------------------------------------------


def validate(coded: TansStreams, alphabet: int) -> None:
    """Every structural check that must hold before decoding reads anything; CodecError naming the first failure."""
    problem = tans_streams.check_streams(coded.counts, coded.offsets, coded.words, coded.table_log, coded.states,
                                         coded.shape[0], coded.rows_per_stream, alphabet, coded.checksum)
    if problem:
        raise CodecError(f"tANS {problem}" if not problem.startswith("corrupted") else f"tANS stream is {problem}")


def _read(words: np.ndarray, positions: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """The ``nbits``-bit fields at bit ``positions`` (callers keep positions + nbits within the words)."""
    w = positions >> 5
    pair = (words[w + 1].astype(np.uint64) << np.uint64(32)) | words[w].astype(np.uint64)
    return ((pair >> (positions & 31).astype(np.uint64)).astype(np.int64)) & ((1 << nbits) - 1)


def decode(coded: TansStreams, alphabet: int) -> np.ndarray:
    """The reference decoder: int64 symbols [N, K]. Raises CodecError on any malformed or corrupted stream."""
    validate(coded, alphabet)
    n, k = coded.shape
    r_log, states, rps = coded.table_log, coded.states, coded.rows_per_stream
    table = decode_table(coded.counts, r_log)
    words = coded.words.astype(np.int64)
    offsets = coded.offsets.astype(np.int64)
    streams = coded.num_streams
    ends = offsets[1:]
    starts = offsets[:-1]
    x = _read(words, starts[:, None] + r_log * np.arange(states), np.full(states, r_log))
    pos = starts + states * r_log
    groups = -(-k // states)
    out = np.empty((streams * rps, groups * states), np.int64)
    for r in range(rps):
        live = min(streams, num_streams(n - r, rps))  # streams that have a row r (only the last may lack it)
        for g in range(groups):
            lanes = min(states, k - g * states)
            xs = x[:live, :lanes]
            nb = table.bits[xs]
            after = pos[:live, None] + np.cumsum(nb, axis=1)
            if (after[:, -1] > ends[:live]).any():
                bad = int(np.argmax(after[:, -1] > ends[:live]))
                raise CodecError(f"tANS stream {bad} is corrupted or truncated: it reads past its end (row {r})")
            out[np.arange(live) * rps + r, g * states:g * states + lanes] = table.symbol[xs]
            x[:live, :lanes] = table.base[xs] + _read(words, after - nb, nb)
            pos[:live] = after[:, -1]
    if (pos != ends).any():
        bad = int(np.argmax(pos != ends))
        raise CodecError(f"tANS stream {bad} is corrupted: it ends at bit {pos[bad]}, not at {ends[bad]}")
    if x.any():
        bad = int(np.argmax(x.any(axis=1)))
        raise CodecError(f"tANS stream {bad} is corrupted: its states end at {x[bad].tolist()}, not at 0")
    return out[:n, :k]


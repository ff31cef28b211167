"""The structural checks of coded tANS streams (the ``tans`` codec's format), numpy only.

One definition for the encoder's own validation (``codecs/tans_coder.validate``) and for the runtime,
which checks an artefact's streams when it loads them: the kernels index their tables by decoded
states and read words at stream offsets, so these checks are what keeps them in bounds.
"""

from __future__ import annotations

import zlib

import numpy as np

MIN_TABLE_LOG, MAX_TABLE_LOG = 5, 15  # bases fit 16 bits in the kernels' packed table entries
MAX_STATES = 32


def words_for(total_bits: int) -> int:
    """Stored uint32 words for ``total_bits`` coded bits: the words holding them plus the padding of the format."""
    return total_bits // 32 + 3


def checksum(counts: np.ndarray, offsets: np.ndarray, words: np.ndarray) -> int:
    crc = 0
    for a in (counts, offsets, words):
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return crc


def layout_problem(table_log: int, states: int, rows_per_stream: int) -> str | None:
    if not MIN_TABLE_LOG <= table_log <= MAX_TABLE_LOG:
        return f"table_log must be in {MIN_TABLE_LOG}..{MAX_TABLE_LOG}, got {table_log}"
    if not 1 <= states <= MAX_STATES:
        return f"states (interleaved per stream) must be in 1..{MAX_STATES}, got {states}"
    if rows_per_stream < 1:
        return f"rows_per_stream must be >= 1, got {rows_per_stream}"
    return None


def check_streams(counts: np.ndarray, offsets: np.ndarray, words: np.ndarray, table_log: int, states: int,
                  rows: int, rows_per_stream: int, alphabet: int, crc32: int) -> str | None:
    """None if the streams of a ``rows``-row layer are well-formed, else the first problem found."""
    problem = layout_problem(table_log, states, rows_per_stream)
    if problem:
        return problem
    streams = -(-rows // rows_per_stream)
    for name, a, dtype, length in (("counts", counts, np.uint16, alphabet), ("offsets", offsets, np.uint32, streams + 1)):
        if a.dtype != dtype or a.shape != (length,):
            return f"{name}: expected {np.dtype(dtype).name} [{length}], got {a.dtype} {list(a.shape)}"
    if words.dtype != np.uint32 or words.ndim != 1:
        return f"words: expected a 1-D uint32 array, got {words.dtype} {list(words.shape)}"
    if checksum(counts, offsets, words) != crc32:
        return "corrupted: checksum mismatch"
    total = int(counts.astype(np.int64).sum())
    if total != 1 << table_log:
        return f"counts sum to {total}, not 2^{table_log}"
    bits = offsets.astype(np.int64)
    if bits[0] != 0 or (np.diff(bits) < states * table_log).any():
        return "offsets are malformed: streams must start at bit 0, in order, each holding its states"
    if words.size != words_for(int(bits[-1])):
        return f"truncated or padded: {words.size} words for {bits[-1]} bits (expected {words_for(int(bits[-1]))})"
    return None

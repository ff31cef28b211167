"""Large-layer encodings made by stacking copies of a small real one (numpy only: it also runs on the GPU machine).

An encoding of 8192x28672 weights is too large to carry to the GPU machine
and slow to make there (bbs's zps search, tANS), so the benchmark encodes a
block of ``R`` rows for real and stacks ``T`` copies along the output
channels: the result is a valid encoding, in every codec's own format, of
``np.tile(block, (T, 1))``, so the kernel's outputs are ``T`` copies of the
block's. Each copy lies at its own addresses, so no read is served by another
copy's cache lines.
"""

from __future__ import annotations

import numpy as np

from bie_compiler.codecs.base import Encoded


def _stack_index(indptr: np.ndarray, copies: int) -> np.ndarray:
    total = int(indptr[-1])
    parts = [indptr[:-1].astype(np.int64) + t * total for t in range(copies)] + [np.array([copies * total])]
    return np.concatenate(parts).astype(indptr.dtype)


def _stack_tans(a: dict, header: dict, copies: int) -> dict:
    """Copies of the block's bit streams, each starting on a word boundary (the gap is unused padding bits)."""
    from bie_compiler.codecs import tans_coder

    offsets = a["offsets"].astype(np.int64)
    total = int(offsets[-1])
    block_words = total // 32 + 1  # the words holding the block's bits
    starts = [offsets[:-1] + 32 * block_words * t for t in range(copies)]
    offsets = np.concatenate(starts + [np.array([32 * block_words * (copies - 1) + total])]).astype(np.uint32)
    words = np.concatenate([a["words"][:block_words]] * (copies - 1) + [a["words"]])
    assert words.size == tans_coder.words_for(int(offsets[-1]))
    header = {**header, "crc32": tans_coder.checksum(a["counts"], offsets, words)}
    return {"counts": a["counts"], "offsets": offsets, "words": words, "steps": np.tile(a["steps"], copies)}, header


def _stack_bbs(a: dict, header: dict, rows: int, copies: int) -> tuple[dict, dict]:
    """Stored rows are [sensitive rows, pruned rows (in blocks of 16)]: each kind stacks on its own."""
    s = int(header["sensitive"])
    p = rows - s
    if p % 16:
        raise ValueError(f"bbs block: {p} pruned rows, not whole blocks of 16")
    position = a["position"].astype(np.int64)
    stacked = []
    for t in range(copies):
        stacked.append(np.where(position < s, t * s + position, copies * s + t * p + (position - s)))
    arrays = {
        "scales": np.concatenate([np.tile(a["scales"][:s], copies), np.tile(a["scales"][s:], copies)]),
        "position": np.concatenate(stacked).astype(a["position"].dtype),
        "sensitive": np.concatenate([a["sensitive"]] * copies),
        "columns": np.concatenate([a["columns"]] * copies),
        "meta": np.concatenate([a["meta"]] * copies),
    }
    return arrays, {**header, "sensitive": copies * s}


def stack_k(enc: Encoded, copies: int) -> Encoded:
    """``bbs`` only: the encoding of ``np.tile(decode(enc), (1, copies))`` (groups of 32 along K are independent)."""
    rows, k = enc.shape
    if enc.codec != "bbs" or k % 32:
        raise ValueError("stacking along K: bbs with K a multiple of its 32-weight groups only")
    a = enc.arrays
    arrays = {**a, "sensitive": np.concatenate([a["sensitive"]] * copies, axis=1),
              "columns": np.concatenate([a["columns"]] * copies, axis=1), "meta": np.concatenate([a["meta"]] * copies, axis=1)}
    return Encoded(enc.codec, (rows, k * copies), arrays, dict(enc.header))


def stack(enc: Encoded, copies: int) -> Encoded:
    """The encoding of ``np.tile(decode(enc), (copies, 1))``, in ``enc``'s codec and layout."""
    rows, k = enc.shape
    a, header = enc.arrays, dict(enc.header)
    if enc.codec in ("bie-bitplane", "bie-binary") and "planes" in a:  # bit planes (binary: the bitmap layout)
        if int(header.get("group_size", 0)):
            raise ValueError("grouped bit planes are not stacked here")
        arrays = {"planes": np.concatenate([a["planes"]] * copies, axis=1), "signs": np.concatenate([a["signs"]] * copies),
                  "scales": np.concatenate([a["scales"]] * copies)}
    elif enc.codec in ("bie-binary", "bie-blocked"):  # index lists: global, or local to blocks of K
        arrays = {name: (_stack_index(v, copies) if name == "indptr" else np.concatenate([v] * copies))
                  for name, v in a.items()}
    elif enc.codec == "tans":
        if rows % int(header["rows_per_stream"]):
            raise ValueError("tans block: rows not a multiple of rows_per_stream (a short last stream)")
        arrays, header = _stack_tans(a, header, copies)
    elif enc.codec == "bbs":
        arrays, header = _stack_bbs(a, header, rows, copies)
    else:
        raise ValueError(f"no stacking for codec {enc.codec}")
    return Encoded(enc.codec, (rows * copies, k), arrays, header)

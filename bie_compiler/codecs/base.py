"""What every codec shares: the encoded container, bit accounting and bit packing.

Codecs are pure numpy. A codec encodes a weight matrix laid out as ``[N, K]``
(output channels by reduction axis, reduction contiguous) into an :class:`Encoded`:
named arrays plus a small JSON-able header. Its ``decode`` is the reference
decoder that defines the format; kernels must agree with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import CodecError

# Bytes of packed bits (or float32 values) the CPU kernels handle per vector.
PACK_LANES = 16


@dataclass(frozen=True)
class Encoded:
    """An encoded weight: arrays the kernel reads plus a header of small scalars."""

    codec: str
    shape: tuple[int, int]  # (N, K) of the weight in [out, reduction] layout
    arrays: dict[str, np.ndarray]
    header: dict[str, int | float | str] = field(default_factory=dict)

    @property
    def header_bytes(self) -> int:
        """The header as it would be stored: canonical JSON of codec, shape and header."""
        return len(self._header_json().encode())

    @property
    def nbytes(self) -> int:
        """Every stored byte: all arrays (padding included) and the header."""
        return sum(int(a.nbytes) for a in self.arrays.values()) + self.header_bytes

    @property
    def bits_per_weight(self) -> float:
        n, k = self.shape
        return 8.0 * self.nbytes / (n * k)

    def sha256(self) -> str:
        """Digest of the header and every array, in name order, to tie an artefact to its encoding."""
        h = hashlib.sha256(self._header_json().encode())
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def _header_json(self) -> str:
        return json.dumps({"codec": self.codec, "shape": list(self.shape), **self.header}, sort_keys=True)


def check_weight(weight: np.ndarray, name: str = "weight") -> np.ndarray:
    """Validate a weight given to an encoder and return it as float32 [N, K]."""
    w = np.asarray(weight)
    if w.ndim != 2 or 0 in w.shape:
        raise CodecError(f"{name}: expected a non-empty 2-D weight [N, K], got shape {tuple(w.shape)}")
    if not np.issubdtype(w.dtype, np.floating):
        raise CodecError(f"{name}: expected a floating-point weight, got {w.dtype}")
    if not np.all(np.isfinite(w)):
        bad = int(np.count_nonzero(~np.isfinite(w)))
        raise CodecError(f"{name}: {bad} non-finite value(s) (NaN or Inf) in the weight")
    return np.ascontiguousarray(w, dtype=np.float32)


def packed_width(k: int) -> int:
    """Bytes per packed bit-plane row for K weights: K padded to a whole byte column, so that a small layer's
    row costs what its weights do (the CPU kernel's last vector of a row overlaps the one before instead)."""
    return -(-k // 8)


def pack_bits(bits: np.ndarray, width: int | None = None) -> np.ndarray:
    """Pack a boolean [..., K] array into uint8 [..., KB], K-interleaved (KB: ``width`` bytes, default
    :func:`packed_width`).

    Weight k sits in byte ``k % KB``, bit ``k // KB``. With this layout, byte w
    of every bit position j is contiguous in w, so a kernel reads 16 contiguous
    bytes and tests one fixed bit in each: no variable shifts, no gathers.
    """
    *lead, k = bits.shape
    kb = width or packed_width(k)
    if kb < packed_width(k):
        raise CodecError(f"pack_bits: {k} weights do not fit in {kb} bytes")
    padded = np.zeros((*lead, 8 * kb), dtype=np.uint8)
    padded[..., :k] = bits
    by_bit = padded.reshape(*lead, 8, kb)
    weights = (np.uint8(1) << np.arange(8, dtype=np.uint8)).reshape(8, 1)
    return (by_bit * weights).sum(axis=-2, dtype=np.uint8)


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 [..., KB] to bool [..., K]."""
    shifts = np.arange(8, dtype=np.uint8).reshape(8, 1)
    by_bit = (packed[..., None, :] >> shifts) & 1
    return by_bit.reshape(*packed.shape[:-1], -1)[..., :k].astype(bool)

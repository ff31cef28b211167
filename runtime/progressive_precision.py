"""Progressive precision at load: a bie-bitplane artefact run with only the top P bits of every weight's magnitude.

The build lists the weights.bin tensors that hold bie-bitplane magnitudes and how (the manifest's
``weights.progressive``: bit planes most significant first, int8 codes, 4-bit codes two per byte, the
look-up-table kernel's two's complement planes, or its int8 tables' offset-binary planes);
cutting each magnitude to its top P bits gives the weights ``compile --planes P`` would store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bie_compiler.errors import ArtefactError, BieError

BIE_BITPLANE = "bie-bitplane"  # the codec's name in the manifest (the runtime imports no codec)
_DTYPES = {"planes": (np.uint8, np.uint32), "codes": (np.int8,), "nibbles": (np.int8, np.uint8),
           "lut_planes": (np.uint32,), "int8_nibbles": (np.uint8,)}  # each 3-D


def keep_top_planes(weights: list[np.ndarray], progressive: list[dict], planes: int, path: Path) -> list[np.ndarray]:
    """``weights`` with each bie-bitplane weight's magnitude cut to its top ``planes`` bits, as ``compile
    --planes`` would store it; ``progressive``: the manifest's list of tensors holding magnitudes and how."""
    if isinstance(planes, bool) or not isinstance(planes, int) or planes < 1:
        raise BieError(f"planes: expected a positive integer, got {planes!r}")
    if not progressive:
        raise BieError(f"{path}: planes: the artefact has no bie-bitplane layer")
    weights = list(weights)
    for entry in progressive:
        i, form, bits = entry["tensor"], entry["form"], entry["magnitude_bits"]
        if not 0 <= i < len(weights) or weights[i].ndim != 3 or weights[i].dtype not in _DTYPES[form]:
            raise ArtefactError(f"{path}: weights.progressive: tensor {i} does not hold {form}")
        if planes < bits:
            weights[i] = _cut(weights[i], form, bits, planes)
    return weights


def _cut(a: np.ndarray, form: str, bits: int, planes: int) -> np.ndarray:
    if form == "planes":  # most significant first: the lower planes zeroed
        a = a.copy()
        a[planes:] = 0
        return a
    mask = np.int16(((1 << planes) - 1) << (bits - planes))

    def signed_cut(q: np.ndarray) -> np.ndarray:
        return np.sign(q) * (np.abs(q) & mask)

    if form == "codes":
        return signed_cut(a.astype(np.int16)).astype(np.int8)
    if form == "lut_planes":
        return _cut_twos_complement_planes(a, bits, signed_cut)
    if form == "int8_nibbles":
        return _cut_offset_binary_planes(a, bits, signed_cut)
    u = a.view(np.uint8)  # two 4-bit two's complement codes a byte
    low, high = ((signed_cut((v.astype(np.int16) ^ 8) - 8) & 0xF) for v in (u & 0xF, u >> 4))
    return (low | (high << 4)).astype(np.uint8).view(a.dtype)


def _cut_twos_complement_planes(a: np.ndarray, bits: int, signed_cut) -> np.ndarray:
    """``a`` uint32 [bits + 1, R, 16]: plane 0 the sign (significance -2^bits), plane b of significance 2^(bits - b),
    bit j of a word the weight j of its 32 (``codegen/kernels/bitplane_lut.py``); the integers cut, packed again."""
    bit = np.unpackbits(a.view(np.uint8).reshape(*a.shape, 4), axis=-1, bitorder="little").astype(np.int16)
    value = sum(bit[b] << (bits - b) for b in range(1, bits + 1)) - (bit[0] << bits)
    unsigned = signed_cut(value) & ((1 << (bits + 1)) - 1)
    planes = [np.packbits(((unsigned >> (bits - b)) & 1).astype(np.uint8), axis=-1, bitorder="little")
              for b in range(bits + 1)]
    return np.ascontiguousarray(np.stack(planes)).view(np.uint32).reshape(a.shape)


# At 3 planes the int8 tables' bytes hold 4 vectors of a channel's planes in 3 vectors' words: (vector, byte) of
# plane 1 to 3 of vector h < 3, its own words' bytes but h; of vector 3, byte j of vector j (bitplane_lut.triple_bytes)
_TRIPLE = 3
_TRIPLE_WORD, _TRIPLE_BYTE = np.array([[(h, q) for q in range(4) if q != h] for h in range(_TRIPLE)]
                                      + [[(j, j) for j in range(_TRIPLE)]]).transpose(2, 0, 1)  # each [vector, plane]


def _cut_offset_binary_planes(a: np.ndarray, bits: int, signed_cut) -> np.ndarray:
    """``a`` uint8 [R, S, 64], the int8 tables' bytes (``codegen/kernels/bitplane_lut.py``, ``int8_nibbles``): each
    weight's code ``q`` stored as ``u = q + 2^bits`` in S planes (S = ``a.shape[1]``, plane 0 the most significant),
    a channel's S planes S consecutive bytes of the last axis (at S = 3 four vectors' planes in the 4 bytes of 3
    vectors' words, see ``_TRIPLE_WORD``), a weight's bit at the same bit position of each; the codes cut, stored
    again. Which weight a bit position is does not matter: each is cut alone."""
    if a.shape[1] != _TRIPLE:
        return _cut_plane_bytes(a.reshape(len(a), -1, a.shape[1]), bits, signed_cut).reshape(a.shape)
    words = a.reshape(len(a), _TRIPLE, 16, 4)  # [row, vector, channel, byte]
    cut = words.copy()
    planes = np.moveaxis(words[:, _TRIPLE_WORD, :, _TRIPLE_BYTE], 1, -1)  # [vector, row, channel, plane]
    cut[:, _TRIPLE_WORD, :, _TRIPLE_BYTE] = np.moveaxis(_cut_plane_bytes(planes, bits, signed_cut), -1, 1)
    return cut.reshape(a.shape)


def _cut_plane_bytes(planes: np.ndarray, bits: int, signed_cut) -> np.ndarray:
    """``planes`` uint8 [..., S]: the S planes of 8 weights' codes, plane 0 the most significant, each weight at its
    bit position of the S bytes; the codes cut, stored again."""
    span = planes.shape[-1]
    bit = (planes[..., None] >> np.arange(8, dtype=np.uint8)) & 1  # [..., S, 8]
    significance = (1 << (span - 1 - np.arange(span, dtype=np.int16)))[:, None]
    unsigned = signed_cut((bit.astype(np.int16) * significance).sum(axis=-2) - (1 << bits)) + (1 << bits)
    bits_back = (unsigned[..., None, :] >> (span - 1 - np.arange(span))[:, None]) & 1  # [..., S, 8]
    return (bits_back << np.arange(8)).sum(axis=-1).astype(np.uint8)

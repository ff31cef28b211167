"""Progressive precision at load: a bie-bitplane artefact run with only the top P bits of every weight's magnitude.

The build lists the weights.bin tensors that hold bie-bitplane magnitudes and how (the manifest's
``weights.progressive``: bit planes most significant first, int8 codes, 4-bit codes two per byte, or the
look-up-table kernel's two's complement planes);
cutting each magnitude to its top P bits gives the weights ``compile --planes P`` would store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bie_compiler.errors import ArtefactError, BieError

BIE_BITPLANE = "bie-bitplane"  # the codec's name in the manifest (the runtime imports no codec)
_DTYPES = {"planes": (np.uint8, np.uint32), "codes": (np.int8,), "nibbles": (np.int8, np.uint8),
           "lut_planes": (np.uint32,)}  # each 3-D


def keep_top_planes(weights: list[np.ndarray], progressive: list[dict], planes: int, path: Path,
                    layers: list[dict] = ()) -> list[np.ndarray]:
    """``weights`` with each bie-bitplane weight's magnitude cut to its top ``planes`` bits, as ``compile
    --planes`` would store it; ``progressive``: the manifest's list of tensors holding magnitudes and how;
    ``layers``: the manifest's layers (which say why none holds them)."""
    if isinstance(planes, bool) or not isinstance(planes, int) or planes < 1:
        raise BieError(f"planes: expected a positive integer, got {planes!r}")
    if not progressive and any(_int8_tables(layer) for layer in layers):
        raise BieError(f"{path}: planes: the artefact's bie-bitplane layers use int8 look-up tables, whose planes "
                       "cannot be cut at load; compile with --lut-tables fp32 for progressive precision")
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


def _int8_tables(layer: dict) -> bool:
    """Whether ``layer`` is a bie-bitplane layer compiled with int8 look-up tables (``lut_tables``) and not given fp32
    ones instead (the kernel's fallback, ``kernel.lut_tables`` in its details): its weight words are the tables'
    bytes of codes, not planes (``codegen/kernels/bitplane.py``)."""
    return layer["codec"] == BIE_BITPLANE and not layer["fallback_reason"] \
        and (layer["config"] or {}).get("lut_tables") == "int8" and "kernel.lut_tables" not in layer["details"]


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

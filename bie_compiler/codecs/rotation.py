"""Randomized Hadamard rotation of a matmul's reduction axis (incoherence processing, as in QuIP#).

Trained weights have outlier columns and rows; a uniform grid then spends its range on a few
weights. ``R = D S``, ``S`` a seeded diagonal of random signs and ``D`` block-diagonal Walsh-Hadamard
matrices normalised by ``1 / sqrt(b)`` (blocks of the powers of two in K's binary expansion, largest
first: 384 = 256 + 128), is orthogonal, so ``y = x W^T = (x R^T)(W R^T)^T``: the codec encodes
``W' = W R^T`` (each row's K axis rotated, its outliers spread over their block) and the compiled model
multiplies it with ``x' = x R^T``, a fast Walsh-Hadamard transform of each activation row
(``codegen/hadamard.py``). Error feedback sees the rotated problem: ``R X^T X R^T``.

The encoding of a rotated weight is the codec's encoding of ``W'`` plus the sign vector (one bit per
input, packed as :func:`.base.pack_bits` packs, counted in its bytes) and ``header["rotation"]``;
:func:`unrotated` splits the two, :func:`restore` turns decoded ``W'`` back into ``W``.
"""

from __future__ import annotations

from dataclasses import Field, field, replace
from typing import Callable

import numpy as np

from ..errors import CodecError
from . import feedback
from .base import Encoded, pack_bits, unpack_bits

SEED = 20231  # the signs are a function of K alone: layers reading the same activation share its rotation
SIGNS = "rotation_signs"  # the array of a rotated encoding holding the packed signs
KIND = "hadamard"  # header["rotation"] of a rotated encoding


def option() -> Field:
    """The ``rotate`` field of the Config of every codec (each Config needs a field object of its own)."""
    return field(default=False, metadata={
        "help": "rotate each matmul weight's K axis by a seeded randomized Hadamard transform before encoding, "
                "the activations by a fast Walsh-Hadamard transform before the matmul (convs and tables are not "
                "rotated)"})


def blocks(k: int) -> list[int]:
    """The Hadamard block sizes along K: the powers of two of K's binary expansion, largest first."""
    return [1 << b for b in reversed(range(k.bit_length())) if k >> b & 1]


def signs(k: int) -> np.ndarray:
    """The seeded random signs of ``S``, bool [K] (True: negated)."""
    return np.random.default_rng(SEED).integers(0, 2, k).astype(bool)


def _hadamard_blocks(rows: np.ndarray) -> np.ndarray:
    """``rows`` [M, K] times ``D`` (symmetric), float64: a normalised in-place-style butterfly per block."""
    m, k = rows.shape
    out = np.empty((m, k), np.float64)
    start = 0
    for b in blocks(k):
        y = rows[:, start:start + b].astype(np.float64)
        h = 1
        while h < b:  # pairs (j, j + h) in each group of 2h
            y = y.reshape(m, b // (2 * h), 2, h)
            y = np.stack([y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]], axis=2)
            h *= 2
        out[:, start:start + b] = y.reshape(m, b) / np.sqrt(b)
        start += b
    return out


def rotate(rows: np.ndarray, negated: np.ndarray) -> np.ndarray:
    """``rows R^T`` (each row's K axis rotated), float64 [M, K]: signs first, then the Hadamard blocks."""
    rows = np.asarray(rows, np.float64)
    return _hadamard_blocks(np.where(negated, -rows, rows))


def restore(rows: np.ndarray, negated: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotate`: ``rows R``, float64 [M, K]."""
    y = _hadamard_blocks(np.asarray(rows, np.float64))
    return np.where(negated, -y, y)


def matrix(k: int) -> np.ndarray:
    """``R`` itself, float64 [K, K] (for tests and references: ``x @ matrix(k).T`` is ``rotate(x, signs(k))``)."""
    return rotate(np.eye(k), signs(k)).T


def rotated_hessian(xtx: np.ndarray, negated: np.ndarray) -> np.ndarray:
    """``R X^T X R^T``: the statistics of the rotated inputs ``X R^T``."""
    return rotate(rotate(xtx, negated).T, negated)


def rotated_calibration(calibration: feedback.Calibration) -> feedback.Calibration:
    return replace(calibration, xtx=rotated_hessian(calibration.xtx, signs(len(calibration.xtx))))


def encode(encode_plain: Callable, weight: np.ndarray, calibration: feedback.Calibration | None) -> Encoded:
    """``encode_plain(W', calibration')``, the codec's encoding of the rotated weight with the rotated statistics,
    with the signs attached."""
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise CodecError(f"rotation: expected a 2-D weight [N, K], got shape {list(weight.shape)}")
    negated = signs(weight.shape[1])
    return with_signs(encode_plain(rotate(weight, negated).astype(np.float32),
                                   None if calibration is None else rotated_calibration(calibration)))


def with_signs(enc: Encoded) -> Encoded:
    """The codec's encoding of ``W'`` as a rotated encoding: the signs of its K attached (what a budget planner,
    which sees ``W'``, adds to a layer's size)."""
    negated = signs(enc.shape[1])
    return Encoded(enc.codec, enc.shape, {**enc.arrays, SIGNS: pack_bits(negated)}, {**enc.header, "rotation": KIND})


def unrotated(enc: Encoded) -> tuple[Encoded, np.ndarray | None]:
    """(the codec's own encoding of ``W'``, the signs bool [K]); the signs are None for an encoding not rotated."""
    if "rotation" not in enc.header:
        return enc, None
    if enc.header["rotation"] != KIND or SIGNS not in enc.arrays:
        raise CodecError(f"rotation: unknown rotation {enc.header['rotation']!r} or no {SIGNS} array")
    header = {k: v for k, v in enc.header.items() if k != "rotation"}
    arrays = {k: v for k, v in enc.arrays.items() if k != SIGNS}
    return Encoded(enc.codec, enc.shape, arrays, header), unpack_bits(enc.arrays[SIGNS], enc.shape[1])

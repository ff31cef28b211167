"""``int8``: symmetric per-output-channel INT8, the baseline that ``bbs`` and ``bitwave`` prune.

Each output channel ``n`` gets the scale ``s[n] = max|w[n]| / 127`` and each weight
the code ``q = round(w / s)`` in ``[-127, 127]`` (-128 is not used, so the code
range is symmetric). A channel of zeros gets the scale 0 and codes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import feedback, rotation, uniform
from .base import Encoded, check_weight

NAME = "int8"
QMAX = 127
FULL_RANGE = np.ones(1, np.float32)  # the scale is always max|w| / 127


@dataclass(frozen=True)
class Config:
    """8 bits, one scale per output channel (BBS with no pruned columns); the one option is the rotation."""
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given


def quantize(weight: np.ndarray, calibration: feedback.Calibration | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes int32 [N, K] in [-127, 127] and float32 scales [N] (with ``calibration``: by error feedback)."""
    w = check_weight(weight)
    if calibration is not None:
        codes, scales = uniform.quantize_with_feedback(w, calibration, QMAX, FULL_RANGE, w.shape[1])
        return codes.astype(np.int32), scales[:, 0]
    scales = (np.abs(w).max(axis=1) / np.float32(QMAX)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))[:, None]
    codes = np.clip(np.rint(w / safe), -QMAX, QMAX).astype(np.int32)
    return codes, scales


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    codes, scales = quantize(weight, calibration)
    return Encoded(NAME, codes.shape, {"codes": codes.astype(np.int8), "scales": scales})


def decode(enc: Encoded) -> np.ndarray:
    return (enc.arrays["codes"].astype(np.float32) * enc.arrays["scales"][:, None]).astype(np.float32)

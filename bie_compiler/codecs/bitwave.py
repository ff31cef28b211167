"""``bitwave``: BitWave's zero-column bit-flip pruning of INT8 weights, the baseline BBS is compared with.

Per group of 32 weights along K (as in :mod:`.bbs`), in sign-magnitude: the ``z``
leading magnitude columns that are all-zero across the group are free (at most
N), then every magnitude is rounded to the nearest multiple of ``2^(N - z)``
(ties down, no spill into the zero columns), so ``8 - N`` columns are kept per
weight. Unlike BBS there is no offset and no averaging: only zero columns can
be pruned, which costs quantization levels. There are no sensitive channels.

Stored as :mod:`.bbs` stores its pruned chunk: the kept columns as ``8 - N``-bit
two's complement words (``columns``), a metadata byte per group holding ``z``
(``meta``), and the per-channel ``scales``; the same bit budget per group,
``(8 - N) + 8 / 32`` bits per weight, so fidelity compares at equal bits.

With calibration statistics, groups are rounded in K order with error feedback
(:mod:`.feedback`): each group's ``z`` from its updated weights, then each weight to
the nearest kept level (:class:`.bbs.PrunedGrid`, with no offset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CodecError
from . import bbs, feedback, int8, rotation
from .base import Encoded, check_weight

NAME = "bitwave"


@dataclass(frozen=True)
class Config:
    pruned_columns: int = field(default=4, metadata={  # N: magnitude columns rounded or found zero per group
        "help": "bit columns pruned per group of 32 (1..6; default: the preset's, 4 for bitwave)"})
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given

    def __post_init__(self):
        if not 1 <= self.pruned_columns <= bbs.MAX_PRUNED:
            raise CodecError(f"{NAME}: pruned_columns must be in 1..{bbs.MAX_PRUNED}, got {self.pruned_columns}")


def prune(weight: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pruned INT8-domain values [N, K], scales [N], kept ints [N, KG, G], z [N, KG])."""
    codes, scales = int8.quantize(weight)
    n, k = codes.shape
    padded, valid = bbs.grouped(codes)
    kg = padded.shape[1] // bbs.GROUP
    mask = np.broadcast_to(valid.reshape(kg, bbs.GROUP), (n, kg, bbs.GROUP)).reshape(-1, bbs.GROUP)
    kept, z, shift = bbs.round_magnitudes(padded.reshape(-1, bbs.GROUP), mask, config.pruned_columns,
                                          config.pruned_columns)
    values = (kept << shift).reshape(n, -1)[:, :k]
    return values, scales, kept.reshape(n, kg, bbs.GROUP), z.reshape(n, kg)


def prune_with_feedback(weight: np.ndarray, config: Config,
                        calibration: feedback.Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scales [N], kept ints [N, KG, G], z [N, KG]) of :func:`prune` with error feedback."""
    _, scales = int8.quantize(weight)
    n, k = weight.shape
    pruned = config.pruned_columns
    limit = (1 << (7 - pruned)) - 1

    def constants(q: np.ndarray, valid: np.ndarray):
        _, z, shift = bbs.round_magnitudes(q, valid, pruned, pruned)
        return z.astype(np.uint8), shift[:, 0], np.zeros(len(q), np.int32)

    grid = bbs.PrunedGrid(scales, np.arange(n), k, (-limit, limit), constants)
    feedback.quantize(weight, calibration, grid)
    return scales, grid.kept, grid.meta


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    w = check_weight(weight)
    if calibration is None:
        _, scales, kept, z = prune(w, config)
    else:
        scales, kept, z = prune_with_feedback(w, config, calibration)
    arrays = {
        "scales": scales,
        "columns": bbs.pack_columns(kept, 8 - config.pruned_columns),
        "meta": bbs.to_lanes(z.astype(np.uint8)),
    }
    return Encoded(NAME, w.shape, arrays, {"pruned_columns": config.pruned_columns, "group": bbs.GROUP})


def decode_stored(enc: Encoded) -> np.ndarray:
    """The INT8-domain values [N, KG * G] (K padded to whole groups), before scales: each group's kept columns
    shifted back over its zero columns."""
    n, _ = enc.shape
    kept = bbs.unpack_columns(enc.arrays["columns"], n)
    z = bbs.from_lanes(enc.arrays["meta"], n).astype(np.int32)
    return (kept << (int(enc.header["pruned_columns"]) - z)[..., None]).reshape(n, -1)


def decode(enc: Encoded) -> np.ndarray:
    values = decode_stored(enc)[:, :enc.shape[1]]
    return (values.astype(np.float32) * enc.arrays["scales"][:, None]).astype(np.float32)


def report(enc: Encoded) -> dict[str, float]:
    return {"paper_bits_per_weight": bbs.paper_bits_per_weight(int(enc.header["pruned_columns"])),
            "honest_bits_per_weight": enc.bits_per_weight}

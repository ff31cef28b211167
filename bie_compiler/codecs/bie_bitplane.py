"""``bie-bitplane``: symmetric k-bit quantization stored as sign and magnitude bit planes.

Each weight becomes ``q = round(w / s)`` in ``[-(2^(k-1)-1), 2^(k-1)-1]`` with one
scale ``s`` per output channel (or per group of ``group_size`` weights along K).
The scale is the one among ``CLIP_RATIOS * max|w| / qmax`` with the least squared
error: trained weights are heavy-tailed, and letting a few outliers clip buys a
finer step for all the others (the largest ratio wins ties, so weights that
are exact multiples of ``max|w| / qmax`` round-trip exactly).
``|q|`` is split into ``k - 1`` magnitude planes, most significant first, plus one
sign plane, each packed K-interleaved (:func:`pack_bits`). Keeping only the top
``p`` planes truncates ``|q|`` to its ``p`` leading bits: a coarser model from a
prefix of the same encoding (progressive precision), no re-encoding needed.

With ``bits_per_weight`` set, :func:`plan` picks each layer's ``bits`` so that the model's
``bie-bitplane`` layers together fit the budget with the least distortion (weighted by each
layer's measured sensitivity when there is calibration data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CodecError
from . import budget_split, feedback, lut_tables, rotation, uniform
from .base import PACK_LANES, Encoded, check_weight, pack_bits, packed_width, unpack_bits
from .parallel import SERIAL, Workers

NAME = "bie-bitplane"
DEFAULT_BITS = 4
BITS_CHOICES = range(2, 9)  # what the budget planner tries
CLIP_RATIOS = np.linspace(1.0, 0.5, 11, dtype=np.float32)
INT8_TABLE_PLANES = 4  # the most planes (sign included) the int8-table GEMV takes: the bytes vpdpbusd sums


@dataclass(frozen=True)
class Config:
    bits: int = field(default=DEFAULT_BITS, metadata={"help": "bits per weight, sign included (2..8; default 4)"})
    group_size: int = field(default=0, metadata={  # 0: one scale per output channel
        "help": "weights per scale along K (default: one scale per channel)"})
    planes: int = field(default=0, metadata={  # most significant first; 0: all
        "help": "keep only the top P magnitude planes (progressive precision)"})
    bits_per_weight: float = field(default=0.0, metadata={  # 0: fixed bits
        "help": "bits/weight budget over the whole model; each layer's precision chosen to meet it "
                "(instead of --levels, --bits or --quality)"})
    # the kernel, not the encoding: int8 tables for at most INT8_TABLE_PLANES planes, fp32 above (int8_tables_fit)
    lut_tables: str = lut_tables.option()
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given

    def __post_init__(self):
        lut_tables.check(NAME, self.lut_tables)
        if not 2 <= self.bits <= 8:
            raise CodecError(f"{NAME}: bits must be in 2..8, got {self.bits}")
        if self.group_size < 0:
            raise CodecError(f"{NAME}: group_size must be positive (or 0 for per-channel), got {self.group_size}")
        if not 0 <= self.planes <= self.bits - 1:
            raise CodecError(f"{NAME}: planes must be in 1..{self.bits - 1} for {self.bits} bits, got {self.planes}")
        if self.bits_per_weight < 0:
            raise CodecError(f"{NAME}: bits_per_weight must be positive, got {self.bits_per_weight}")
        if self.bits_per_weight and (self.bits != DEFAULT_BITS or self.planes):
            raise CodecError(f"{NAME}: give either bits (and planes) or bits_per_weight, not both")

    @property
    def magnitude_bits(self) -> int:
        return self.bits - 1

    @property
    def kept_planes(self) -> int:
        return self.planes or self.magnitude_bits

    @property
    def kernel_fallbacks(self) -> dict[str, str]:
        """The kernel fields asked for that this layer's kernel cannot honour, each with what it does instead."""
        planes = self.kept_planes + 1
        if self.lut_tables != "int8" or int8_tables_fit(planes):
            return {}
        return {"lut_tables": f"fp32: int8 tables take at most {INT8_TABLE_PLANES} planes (the bytes vpdpbusd sums "
                              f"per channel), this layer has {planes} (sign included)"}


def int8_tables_fit(planes: int) -> bool:
    """Whether ``planes`` (sign included) fit the int8 tables' bytes: 2 planes the byte pairs vpmaddubsw sums, 3 and
    4 the quads vpdpbusd sums (3 stored in 3 bytes a channel, ``codegen/kernels/bitplane_lut.py``)."""
    return planes <= INT8_TABLE_PLANES


def row_bytes(k: int, group_size: int) -> int:
    """Bytes per packed plane row: K padded to a whole byte; with scale groups, to whole 16-byte vectors, so that
    no vector of the CPU kernel straddles two groups (one scale per vector, not a gather of 16)."""
    return packed_width(k) if not group_size else -(-k // (8 * PACK_LANES)) * PACK_LANES


def scale_group(k: int, group_size: int) -> int:
    """Weights per scale along the padded K axis (per-channel: the whole padded row)."""
    return group_size or 8 * row_bytes(k, group_size)


def quantize(weight: np.ndarray, config: Config,
             calibration: feedback.Calibration | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization: integer codes [N, K] and float32 scales [N, groups over padded K].

    With ``calibration``, the codes come from error feedback (:mod:`.feedback`), each group's
    scale searched when the feedback reaches it.
    """
    w = check_weight(weight)
    n, k = w.shape
    group = scale_group(k, config.group_size)
    groups = -(-8 * row_bytes(k, config.group_size) // group)
    qmax = 2 ** config.magnitude_bits - 1
    if calibration is not None:
        codes, scales = uniform.quantize_with_feedback(w, calibration, qmax, CLIP_RATIOS, group, groups)
        return codes.astype(np.int32), scales
    padded = np.zeros((n, groups * group), np.float32)
    padded[:, :k] = w
    best_scales = uniform.clip_search(padded.reshape(n, groups, group), qmax, CLIP_RATIOS)
    per_weight = np.repeat(best_scales, group, axis=1)[:, :k]
    safe = np.where(per_weight > 0, per_weight, np.float32(1))
    codes = np.clip(np.rint(w / safe), -qmax, qmax).astype(np.int32)
    return codes, best_scales


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    if config.bits_per_weight:
        config = plan({"weight": weight}, {"weight": config})["weight"]
    codes, scales = quantize(weight, config, calibration)
    magnitude = np.abs(codes)
    m = config.magnitude_bits
    width = row_bytes(codes.shape[1], config.group_size)
    planes = np.stack([pack_bits((magnitude >> (m - 1 - b)) & 1, width) for b in range(config.kept_planes)])
    return Encoded(
        codec=NAME,
        shape=codes.shape,
        arrays={"planes": planes, "signs": pack_bits(codes < 0, width), "scales": scales},
        header={"bits": config.bits, "group_size": config.group_size, "planes": config.kept_planes},
    )


def truncate_planes(enc: Encoded, planes: int) -> Encoded:
    """The same encoding with only its top ``planes`` magnitude planes (progressive precision)."""
    stored = enc.header["planes"]
    if not 1 <= planes <= stored:
        raise CodecError(f"{NAME}: can keep 1..{stored} planes of this encoding, not {planes}")
    arrays = dict(enc.arrays, planes=enc.arrays["planes"][:planes])
    return Encoded(enc.codec, enc.shape, arrays, dict(enc.header, planes=planes))


def decode(enc: Encoded) -> np.ndarray:
    """Reference decoder: float32 [N, K] from the stored planes."""
    n, k = enc.shape
    top = enc.header["bits"] - 2  # significance of the first stored plane
    magnitude = np.zeros((n, k), np.int64)
    for b, plane in enumerate(enc.arrays["planes"]):
        magnitude += unpack_bits(plane, k).astype(np.int64) << (top - b)
    signed = np.where(unpack_bits(enc.arrays["signs"], k), -magnitude, magnitude)
    group = scale_group(k, enc.header["group_size"])
    per_weight = np.repeat(enc.arrays["scales"], group, axis=1)[:, :k]
    return (signed * per_weight).astype(np.float32)


def plan(matrices: Mapping[str, np.ndarray], configs: dict[str, Config],
         calibrations: dict[str, feedback.Calibration] | None = None, workers: Workers = SERIAL) -> dict[str, Config]:
    """Per-layer bits for the layers given a budget (:func:`.budget_split.plan`); the others kept as they are.

    Each of ``BITS_CHOICES`` is encoded with round-to-nearest to measure its bytes and its distortion
    (:func:`.feedback.distortion`), also for layers then encoded with error feedback.
    """
    return budget_split.plan(NAME, matrices, configs, calibrations, _options,
                             lambda config, bits: replace(config, bits=bits, bits_per_weight=0.0), workers)


def _options(weight: np.ndarray, config: Config,
             calibration: feedback.Calibration | None) -> list[tuple[int, int, float]]:
    """(bits, stored bits, distortion) for each bit width, fewest bits first."""
    options = []
    for bits in BITS_CHOICES:
        enc = encode(weight, replace(config, bits=bits, bits_per_weight=0.0))
        options.append((bits, 8 * enc.nbytes, feedback.distortion(weight, decode(enc), calibration)))
    return sorted(options, key=lambda o: (o[1], o[2]))

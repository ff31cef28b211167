"""``bbs``: binary pruning of INT8 weights, with sensitive channels kept at 8 bits.

From "BBS: Bi-Directional Bit-Level Sparsity for Deep Learning Acceleration" (Chen et al., MICRO 2024).

Weights are quantized symmetrically per output channel to INT8 (:mod:`.int8`),
then cut into groups of ``GROUP = 32`` along the reduction axis (a conv's K runs
over (kh, kw, in_channel), channel fastest, so a group is 32 input channels at
one kernel position when C >= 32; smaller C lets a group span positions). In
every group of a pruned channel, ``N`` of the 8 bit columns are made constant
(all-0 or all-1), so only ``8 - N`` columns and one metadata byte are stored:

* rounded averaging (``avg``, the ``conservative`` preset, N = 2): ``r`` columns
  after the sign that merely repeat it (at most 3, and at most N) count as pruned;
  the ``N - r`` low columns are replaced by the constant
  ``c = round_half_even(mean(low bits))``, so ``w' = w - low + c``.
* zero-point shifting (``zps``, ``moderate``, N = 4): for every 6-bit offset
  ``c`` in [-32, 31], ``s = clip(w + c)`` in sign-magnitude; its ``z`` leading
  all-zero magnitude columns are free (at most 3, and at most N), the ``N - z``
  low ones are rounded away (nearest multiple of ``2^(N-z)``, ties down, no spill
  into the zero columns); the ``c`` with the least squared error wins and
  ``w' = s' - c``.

Either way a pruned weight is ``w' = u * 2^shift + offset`` with ``u`` an
``(8 - N)``-bit two's complement integer (the kept columns), ``shift = N - r`` (or
``N - z``) and ``offset = c`` (or ``-c``) per group. Storing ``u`` in two's
complement for zps too (the paper keeps zps columns in sign-magnitude) is
lossless: the rounded magnitudes are multiples of ``2^shift`` below ``2^(7 - z)``,
so ``s' / 2^shift`` fits in ``8 - N`` bits either way; one kernel serves both.

Sensitive channels: the output channels with the largest scales stay INT8. Which
ones is decided over the whole model by :func:`plan` (top ``sensitive_fraction``
of all the model's bbs channels, each layer's count rounded up to a multiple of
``SENSITIVE_MULTIPLE``), recorded per layer in ``Config.sensitive_channels`` so that
re-encoding a layer alone reproduces it. Stored rows are the sensitive
channels then the pruned ones, each chunk in channel order; ``position[n]`` is
the stored row of output channel ``n`` (the kernels' output unshuffle).

Arrays (the format; :func:`decode` is its reference decoder):

* ``scales`` float32 [N]: per stored row.
* ``position`` int32 [N]: stored row of each output channel.
* ``sensitive`` int8 [S, KG * 32]: the sensitive rows, K zero-padded to whole groups.
* ``columns`` uint32 [PB, KG, 8 - N, LANES]: bit ``j`` of word ``[pb, g, b, lane]``
  is column ``b`` (0 = sign, weight ``-2^(7-N)``; ``b`` > 0 weight ``2^(7-N-b)``) of
  weight ``j`` of group ``g`` of pruned row ``pb * LANES + lane``. Sixteen channels
  share a group's 64-byte vector, so a kernel loads one bit column of one group
  for sixteen channels at once; pruned rows are zero-padded to a multiple of 16.
* ``meta`` uint8 [PB, KG, LANES]: per group, ``r`` (or ``z``) in bits 7..6 and ``c``
  in bits 5..0 (unsigned for avg, two's complement for zps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CodecError
from . import feedback, int8, lut_tables, rotation
from .base import Encoded, check_weight
from .parallel import SERIAL, Workers
from .stored import loaded

NAME = "bbs"
GROUP = 32  # weights per group along K; also the bits of one stored column word
LANES = 16  # pruned channels per stored vector
SENSITIVE_MULTIPLE = 32  # each layer's sensitive-channel count is rounded up to this (BitVert's channel parallelism)
MAX_PRUNED = 6
MAX_FREE_COLUMNS = 3  # the 2-bit metadata field: redundant (avg) or zero (zps) columns counted as pruned
OFFSETS = range(-32, 32)  # zps: the 6-bit constant

# The central preset table: the paper's two design points. The CLI and the docs read it.
PRESETS = {
    "conservative": {"method": "avg", "pruned_columns": 2, "sensitive_fraction": 0.10},
    "moderate": {"method": "zps", "pruned_columns": 4, "sensitive_fraction": 0.20},
}
METHODS = ("avg", "zps")
INT8_TABLE_COLUMNS = 4  # the kept columns the int8-table GEMV takes: the bytes vpdpbusd sums per channel


@dataclass(frozen=True)
class Config:
    preset: str = field(default="moderate", metadata={  # fills the fields below that are left as None
        "help": "conservative (avg, N=2, beta 10%) or moderate (zps, N=4, beta 20%; default)"})
    pruned_columns: int | None = field(default=None, metadata={  # N
        "help": "bit columns pruned per group of 32 (1..6; default: the preset's, 4 for bitwave)"})
    method: str | None = field(default=None, metadata={
        "help": "avg (rounded averaging) or zps (zero-point shifting); default: the preset's"})
    sensitive_fraction: float | None = field(default=None, metadata={  # beta
        "help": "fraction beta of the model's output channels (largest scales) kept INT8; default: the preset's"})
    # this layer's INT8 channels; -1: from beta over this layer alone
    sensitive_channels: int = field(default=-1, metadata={"set_by_plan": True})
    # the kernel, not the encoding: int8 tables for INT8_TABLE_COLUMNS kept columns, fp32 else (int8_tables_fit)
    lut_tables: str = lut_tables.option()
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise CodecError(f"{NAME}: unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if not (isinstance(self.pruned_columns, int) and 1 <= self.pruned_columns <= MAX_PRUNED):
            raise CodecError(f"{NAME}: pruned_columns must be in 1..{MAX_PRUNED} (0 is the int8 codec), "
                             f"got {self.pruned_columns}")
        if self.method not in METHODS:
            raise CodecError(f"{NAME}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.sensitive_fraction <= 1.0:
            raise CodecError(f"{NAME}: sensitive_fraction must be in [0, 1], got {self.sensitive_fraction}")
        lut_tables.check(NAME, self.lut_tables)
        if self.sensitive_channels < -1:
            raise CodecError(f"{NAME}: sensitive_channels must be >= 0 (or -1: from sensitive_fraction), "
                             f"got {self.sensitive_channels}")

    @property
    def kept_columns(self) -> int:
        return 8 - self.pruned_columns

    @property
    def kernel_fallbacks(self) -> dict[str, str]:
        """The kernel fields asked for that this layer's kernel cannot honour, each with what it does instead."""
        if self.lut_tables != "int8" or int8_tables_fit(self.kept_columns):
            return {}
        return {"lut_tables": f"fp32: int8 tables take {INT8_TABLE_COLUMNS} kept columns (the bytes vpdpbusd sums "
                              f"per channel), this layer keeps {self.kept_columns}"}


def int8_tables_fit(kept_columns: int) -> bool:
    """Whether a pruned channel's ``kept_columns`` fit the int8 tables' bytes: the GEMV takes exactly the
    INT8_TABLE_COLUMNS bytes vpdpbusd sums."""
    return kept_columns == INT8_TABLE_COLUMNS


def paper_bits_per_weight(pruned_columns: int) -> float:
    """The paper's figure for a pruned channel: kept columns plus 8 metadata bits per group."""
    return (8 - pruned_columns) + 8 / GROUP


# --- pruning one group at a time (vectorized over groups) -------------------------------------------------------------


@dataclass
class PrunedGroups:
    """Pruned groups: ``values = kept * 2^shift + offset`` exactly; ``meta`` is the stored byte."""

    values: np.ndarray  # int32 [g, G]: the pruned INT8-domain weights
    kept: np.ndarray  # int32 [g, G]: the (8 - N)-bit two's complement integers the columns hold
    meta: np.ndarray  # uint8 [g]


def _bounds(q: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.where(valid, q, 127).min(axis=1), np.where(valid, q, -128).max(axis=1)


def round_average(q: np.ndarray, valid: np.ndarray, pruned_columns: int) -> PrunedGroups:
    """Rounded averaging of INT8 groups ``q`` [g, G] (``valid`` marks real weights, not K padding)."""
    lo, hi = _bounds(q, valid)
    r = np.zeros(len(q), np.int32)
    for cand in range(1, MAX_FREE_COLUMNS + 1):  # columns 1..r equal the sign column: q in [-2^(7-r), 2^(7-r))
        fits = (lo >= -(1 << (7 - cand))) & (hi < (1 << (7 - cand))) & (r == cand - 1)
        r = np.where(fits, cand, r)
    r = np.minimum(r, pruned_columns)
    step = (1 << (pruned_columns - r))[:, None]
    low = np.mod(q, step)
    c = np.rint((low * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)).astype(np.int32)
    kept = (q - low) // step
    return PrunedGroups(kept * step + c[:, None], kept, ((r << 6) | c).astype(np.uint8))


_BIT_LENGTH = np.array([int(v).bit_length() for v in range(128)], np.int32)


def round_magnitudes(s: np.ndarray, valid: np.ndarray, pruned_columns: int, max_zero: int):
    """Sign-magnitude groups ``s`` [g, G] (|s| <= 127) with their leading zero columns free and N - z rounded away.

    Returns ``(kept, z, shift)``: ``kept << shift`` is the rounded group, ``shift = N - z``;
    magnitudes go to the nearest multiple of ``2^shift`` (ties down), capped below
    ``2^(7 - z)`` so the zero columns stay zero. ``z`` is at most ``max_zero``.
    """
    magnitude = np.abs(s)
    z = np.minimum(7 - _BIT_LENGTH[np.where(valid, magnitude, 0).max(axis=1)], max_zero)
    shift = (pruned_columns - z)[:, None]
    half_down = (1 << shift) - 1 >> 1
    units = np.minimum((magnitude + half_down) >> shift, (1 << (7 - pruned_columns)) - 1)
    return np.where(s < 0, -units, units), z, shift


_INT8_VALUES = np.arange(-128, 128)  # what a group's INT8-domain weight can be
_CHUNK = 8192  # groups per offset search: bounds its [groups, 256] histograms


@functools.lru_cache(maxsize=None)
def _rounding_errors(pruned_columns: int, shift: int) -> np.ndarray:
    """float64 [256, offsets]: the squared error of ``v + c`` clipped and rounded at ``shift`` as
    :func:`round_magnitudes` rounds it, for every INT8 value ``v`` and offset ``c``."""
    v = _INT8_VALUES[:, None] + np.arange(OFFSETS.start, OFFSETS.stop)
    s = np.clip(v, -127, 127)
    half_down = (1 << shift) - 1 >> 1
    units = np.minimum((np.abs(s) + half_down) >> shift, (1 << (7 - pruned_columns)) - 1)
    return (((np.where(s < 0, -units, units) << shift) - v) ** 2).astype(np.float64)


def _best_offsets(q: np.ndarray, valid: np.ndarray, pruned_columns: int, max_zero: int) -> np.ndarray:
    """Per group, the offset with the least squared error (the first on ties).

    A group's error at offset ``c`` only depends on how many of its weights hold each value and
    on its shift, which its extreme values fix; so it is the group's value histogram times a
    table per shift (integers, exact in float64), not a rounding of every weight per offset.
    """
    offsets = np.arange(OFFSETS.start, OFFSETS.stop)
    lo, hi = _bounds(q, valid)
    top = np.maximum(np.abs(np.clip(lo[:, None] + offsets, -127, 127)), np.abs(np.clip(hi[:, None] + offsets, -127, 127)))
    shift = pruned_columns - np.minimum(7 - _BIT_LENGTH[top], max_zero)  # [g, offsets], as round_magnitudes
    g = len(q)
    slot = np.arange(g)[:, None] * len(_INT8_VALUES) + (q.astype(np.int64) - _INT8_VALUES[0])
    counts = np.bincount(slot.ravel(), np.broadcast_to(valid, q.shape).ravel(), g * len(_INT8_VALUES))
    counts = counts.reshape(g, len(_INT8_VALUES))
    error = np.zeros(shift.shape)
    for s in np.unique(shift):
        error = np.where(shift == s, counts @ _rounding_errors(pruned_columns, int(s)), error)
    return offsets[np.argmin(error, axis=1)]


def shift_zero_point(q: np.ndarray, valid: np.ndarray, pruned_columns: int) -> PrunedGroups:
    """Zero-point shifting: the 6-bit offset with the least squared error (the first on ties) per group."""
    max_zero = min(MAX_FREE_COLUMNS, pruned_columns)
    valid = np.broadcast_to(valid, q.shape)
    c = np.zeros(len(q), np.int32)
    for i in range(0, len(q), _CHUNK):
        c[i:i + _CHUNK] = _best_offsets(q[i:i + _CHUNK], valid[i:i + _CHUNK], pruned_columns, max_zero)
    kept, z, shift = round_magnitudes(np.clip(q + c[:, None], -127, 127), valid, pruned_columns, max_zero)
    meta = ((z << 6) | (c & 63)).astype(np.uint8)
    kept = kept.astype(np.int32)
    return PrunedGroups((kept << shift) - c[:, None], kept, meta)


PRUNE = {"avg": round_average, "zps": shift_zero_point}


def group_offsets(meta: np.ndarray, pruned_columns: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(shift, offset) int32 per group from its metadata byte: ``value = kept * 2^shift + offset``."""
    free = (meta >> 6).astype(np.int32)
    c = (meta & 63).astype(np.int32)
    if method == "zps":
        return pruned_columns - free, -np.where(c >= 32, c - 64, c)
    return pruned_columns - free, c


# --- the stored layout --------------------------------------------------------------------------------------------


def to_lanes(a: np.ndarray) -> np.ndarray:
    """[P, ...] -> [ceil(P / LANES), ..., LANES], rows zero-padded: sixteen channels side by side."""
    blocks = -(-len(a) // LANES)
    padded = np.zeros((blocks * LANES, *a.shape[1:]), a.dtype)
    padded[: len(a)] = a
    return np.moveaxis(padded.reshape(blocks, LANES, *a.shape[1:]), 1, -1)


def from_lanes(a: np.ndarray, rows: int) -> np.ndarray:
    """Inverse of :func:`to_lanes`."""
    return np.moveaxis(a, -1, 1).reshape(-1, *a.shape[1:-1])[:rows]


def pack_columns(kept: np.ndarray, bits: int) -> np.ndarray:
    """int [P, KG, G] of ``bits``-bit two's complement -> uint32 [PB, KG, bits, LANES] column words."""
    unsigned = (kept & ((1 << bits) - 1)).astype(np.uint32)
    significance = np.arange(bits - 1, -1, -1, dtype=np.uint32)  # column 0 is the sign (top bit)
    column_bits = (unsigned[:, :, None, :] >> significance[None, None, :, None]) & 1  # [P, KG, bits, G]
    words = (column_bits << np.arange(GROUP, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return to_lanes(words)


def unpack_columns(columns: np.ndarray, rows: int) -> np.ndarray:
    """Inverse of :func:`pack_columns`: int32 [P, KG, G]."""
    words = from_lanes(columns, rows)  # [P, KG, bits]
    bits = words.shape[2]
    column_bits = ((words[..., None] >> np.arange(GROUP, dtype=np.uint32)) & 1).astype(np.int32)
    weights = np.array([-(1 << (bits - 1))] + [1 << (bits - 1 - b) for b in range(1, bits)], np.int32)
    return np.einsum("pgbj,b->pgj", column_bits, weights)


# --- the codec ----------------------------------------------------------------------------------------------------


def sensitive_count(config: Config, scales: np.ndarray) -> int:
    """INT8 channels of a layer: from the plan, else the top fraction of this layer; a multiple of 32, at most N."""
    n = len(scales)
    count = config.sensitive_channels
    if count < 0:
        count = math.ceil(config.sensitive_fraction * n)
    if count > 0:
        count = -(-count // SENSITIVE_MULTIPLE) * SENSITIVE_MULTIPLE
    return min(count, n)


def grouped(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes zero-padded to whole groups [N, KG * G] and the mask of real weights [KG * G]."""
    n, k = codes.shape
    kg = -(-k // GROUP)
    padded = np.zeros((n, kg * GROUP), np.int32)
    padded[:, :k] = codes
    return padded, np.arange(kg * GROUP) < k


def prune(weight: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, PrunedGroups]:
    """The pruning alone: (pruned INT8-domain values [N, K] in channel order, scales [N], stored rows, groups).

    Sensitive channels keep their INT8 codes. ``stored`` lists the channels in
    storage order (sensitive first); the groups are those of the pruned rows.
    """
    codes, scales = int8.quantize(weight)
    n, k = codes.shape
    count = sensitive_count(config, scales)
    by_scale = np.argsort(-scales, kind="stable")
    sensitive, pruned = np.sort(by_scale[:count]), np.sort(by_scale[count:])
    padded, valid = grouped(codes)
    kg = padded.shape[1] // GROUP
    groups = padded[pruned].reshape(-1, GROUP)
    mask = np.broadcast_to(valid.reshape(kg, GROUP), (len(pruned), kg, GROUP)).reshape(-1, GROUP)
    result = PRUNE[config.method](groups, mask, config.pruned_columns)
    values = codes.copy()
    values[pruned] = result.values.reshape(len(pruned), kg * GROUP)[:, :k]
    return values, scales, np.concatenate([sensitive, pruned]), result


class PrunedGrid:
    """A :class:`feedback.Grid` for pruned INT8 groups (``bbs``, ``bitwave``): INT8 codes on the rows not pruned;
    on pruned rows, per group of 32, the constants (``constants``: metadata byte, shift, offset per row) chosen
    from the updated weights when the group is reached, then each column rounded to ``kept * 2^shift + offset``
    with ``kept`` in ``kept_range`` (the (8 - N)-bit range the format stores)."""

    group = GROUP

    def __init__(self, scales: np.ndarray, pruned: np.ndarray, k: int, kept_range: tuple[int, int], constants):
        self.scales, self.pruned, self.kept_range, self.constants = scales.astype(np.float64), pruned, kept_range, constants
        self.divisors = np.where(self.scales > 0, self.scales, 1.0)
        kg = -(-k // GROUP)
        self.values = np.zeros((len(scales), kg * GROUP), np.int32)
        self.kept = np.zeros((len(pruned), kg, GROUP), np.int32)
        self.meta = np.zeros((len(pruned), kg), np.uint8)

    def _int8(self, values: np.ndarray) -> np.ndarray:
        return values / self.divisors

    def start_group(self, columns: np.ndarray, weights: np.ndarray, importance: np.ndarray) -> None:
        g = int(columns[0]) // GROUP
        q = np.zeros((len(self.pruned), GROUP), np.int32)
        q[:, : len(columns)] = np.clip(np.rint(self._int8(weights.T).T[self.pruned]), -int8.QMAX, int8.QMAX)
        valid = np.broadcast_to(np.arange(GROUP) < len(columns), q.shape)
        self.meta[:, g], shift, self.offset = self.constants(q, valid)
        self.step = (1 << shift).astype(np.float64)

    def round(self, column: int, values: np.ndarray) -> np.ndarray:
        x = self._int8(values)
        codes = np.clip(np.rint(x), -int8.QMAX, int8.QMAX).astype(np.int32)
        kept = np.clip(np.rint((x[self.pruned] - self.offset) / self.step), *self.kept_range).astype(np.int32)
        codes[self.pruned] = kept * self.step.astype(np.int32) + self.offset
        g, j = divmod(column, GROUP)
        self.kept[:, g, j] = kept
        self.values[:, column] = codes
        return codes * self.scales


def prune_with_feedback(weight: np.ndarray, config: Config, calibration: feedback.Calibration):
    """:func:`prune` with error feedback (:mod:`.feedback`): the same results, the groups rounded in K order."""
    _, scales = int8.quantize(weight)
    n, k = weight.shape
    count = sensitive_count(config, scales)
    by_scale = np.argsort(-scales, kind="stable")
    sensitive, pruned = np.sort(by_scale[:count]), np.sort(by_scale[count:])
    limit = 1 << (7 - config.pruned_columns)
    kept_range = (-(limit - 1), limit - 1) if config.method == "zps" else (-limit, limit - 1)

    def constants(q: np.ndarray, valid: np.ndarray):
        meta = PRUNE[config.method](q, valid, config.pruned_columns).meta
        return (meta, *group_offsets(meta, config.pruned_columns, config.method))

    grid = PrunedGrid(scales, pruned, k, kept_range, constants)
    feedback.quantize(weight, calibration, grid)
    groups = PrunedGroups(grid.values[pruned].reshape(-1, GROUP), grid.kept.reshape(-1, GROUP), grid.meta.reshape(-1))
    return grid.values[:, :k], scales, np.concatenate([sensitive, pruned]), groups


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    w = check_weight(weight)
    n, k = w.shape
    values, scales, stored, groups = prune(w, config) if calibration is None else prune_with_feedback(w, config,
                                                                                                       calibration)
    count = sensitive_count(config, scales)
    padded, _ = grouped(values)
    kg = padded.shape[1] // GROUP
    pruned_rows = n - count
    position = np.empty(n, np.int32)
    position[stored] = np.arange(n, dtype=np.int32)
    arrays = {
        "scales": scales[stored],
        "position": position,
        "sensitive": padded[stored[:count]].astype(np.int8),
        "columns": pack_columns(groups.kept.reshape(pruned_rows, kg, GROUP), config.kept_columns),
        "meta": to_lanes(groups.meta.reshape(pruned_rows, kg)),
    }
    header = {"pruned_columns": config.pruned_columns, "method": config.method, "sensitive": count, "group": GROUP}
    return Encoded(NAME, (n, k), arrays, header)


def decode_stored(enc: Encoded) -> np.ndarray:
    """The INT8-domain values [N, KG * G] of the stored rows (sensitive then pruned), before scales and unshuffle."""
    n, _ = enc.shape
    count = int(enc.header["sensitive"])
    kept = unpack_columns(enc.arrays["columns"], n - count)  # [P, KG, G]
    shift, offset = group_offsets(from_lanes(enc.arrays["meta"], n - count), int(enc.header["pruned_columns"]),
                                  str(enc.header["method"]))
    pruned = (kept << shift[..., None]) + offset[..., None]
    sensitive = enc.arrays["sensitive"].astype(np.int32)
    return np.concatenate([sensitive, pruned.reshape(n - count, sensitive.shape[1])])


def decode(enc: Encoded) -> np.ndarray:
    """Reference decoder: float32 [N, K] in output-channel order."""
    n, k = enc.shape
    stored = decode_stored(enc).astype(np.float32) * enc.arrays["scales"][:, None]
    return np.ascontiguousarray(stored[enc.arrays["position"], :k])


def report(enc: Encoded) -> dict[str, int | float]:
    """Bits per weight two ways (the paper's, for a pruned channel; ours, everything) and the channel split."""
    n, k = enc.shape
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    payload = count * k * 8 + (n - count) * k * paper_bits_per_weight(pruned_columns)
    return {
        "paper_bits_per_weight": paper_bits_per_weight(pruned_columns),
        "paper_bits_per_weight_with_sensitive": payload / (n * k),
        "honest_bits_per_weight": enc.bits_per_weight,
        "sensitive_channels": count,
        "pruned_channels": n - count,
    }


def plan(matrices: Mapping[str, np.ndarray], configs: dict[str, Config],
         calibrations: dict | None = None, workers: Workers = SERIAL) -> dict[str, Config]:
    """Sensitive channels over the whole model: the top ``sensitive_fraction`` of all channels by scale
    (by the weights alone: ``calibrations`` are not used; nor are ``workers``: one pass over each weight).

    Layers sharing one fraction are ranked together; a layer whose config
    already fixes ``sensitive_channels`` is left as it is. Each layer's share of
    the top channels is then rounded up to a multiple of 32 by :func:`sensitive_count`.
    """
    out = dict(configs)
    fractions = sorted({c.sensitive_fraction for c in configs.values() if c.sensitive_channels < 0})
    for fraction in fractions:
        names = [name for name, c in configs.items() if c.sensitive_channels < 0 and c.sensitive_fraction == fraction]
        scales = [int8.quantize(loaded(matrices[name]))[1] for name in names]
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(scales)])
        ranked = np.argsort(-np.concatenate(scales), kind="stable")
        top = ranked[: math.ceil(fraction * len(owner))]
        counts = np.bincount(owner[top], minlength=len(names))
        for i, name in enumerate(names):
            share = replace(configs[name], sensitive_channels=int(counts[i]))
            out[name] = replace(share, sensitive_channels=sensitive_count(share, scales[i]))
    return out

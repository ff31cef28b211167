"""A BitVert program: one offloaded layer as the accelerator consumes it, and how it is built.

The layer computes ``acc[m, n] = sum_k xq[m, k] * w[n, k]`` on INT8 activations ``xq``
and BBS-pruned integer weights ``w`` (int32 accumulation), then ``acc * x_scale * scales[n]``.

Layout (the BBS paper, MICRO 2024, section IV):

- Channels are reordered into a *sensitive* chunk (all 8 bit columns kept) and a
  *pruned* chunk (8 - N columns kept); each chunk is padded to whole tiles of 32
  channels. ``channel_index[i]`` is the original channel of reordered row i: the
  output unshuffle index.
- Weight bit columns in the order the PEs consume them: ``*_bits[tile, k_tile, cycle, row]``
  is a uint16 holding bit ``cycle``'s column of the 16 weights (bit l = lane l) that
  PE row ``row`` of channel tile ``tile`` processes at k tile ``k_tile``. K is padded
  to a multiple of 16 (padded lanes meet zero activations).
- Sensitive rows: cycle c is two's complement column c (significance -2^7 for c = 0,
  2^(7-c) otherwise).
- Pruned rows, per group of ``group`` weights along K, 8 bits of metadata: ``redundant``
  r (0..3) columns after the sign column that equal it (dropped; the sign column's
  significance becomes -2^(7-r)), and ``constant``, the signed multiple of sum(a)
  that stands for the pruned low columns and the zero point:
  ``w = v - offset`` with v's low L = N - r columns equal to the same value ``low``
  for every weight of the group, so ``constant = low - offset``. Cycle 0 is the sign
  column, cycle i >= 1 is column r + i with significance 2^(7-r-i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bie_compiler.errors import CodecError

ROWS = 32  # channels per tile (PE rows)
LANES = 16  # reduction elements per tile (weights per PE)
BITS = 8
MAX_REDUNDANT = 3  # 2 bits of metadata


@dataclass(frozen=True)
class Program:
    n: int
    k: int
    group: int
    pruned_columns: int  # N: bit columns pruned from every pruned channel
    channel_index: np.ndarray  # int32 [sensitive + pruned rows]: original channel per reordered row
    sensitive_rows: int
    sensitive_bits: np.ndarray  # uint16 [TS, TK, 8, 32]
    pruned_bits: np.ndarray  # uint16 [TP, TK, 8 - N, 32]
    redundant: np.ndarray  # uint8 [pruned rows, groups]
    constant: np.ndarray  # int8 [pruned rows, groups]
    scales: np.ndarray  # float32 [n]: per original channel
    x_scale: float  # the calibrated activation scale (per tensor, symmetric INT8)

    ARRAYS = ("channel_index", "sensitive_bits", "pruned_bits", "redundant", "constant", "scales")

    @property
    def k_tiles(self) -> int:
        return -(-self.k // LANES)

    def kept_columns(self) -> np.ndarray:
        """Bit columns the PE processes per original channel: 8 sensitive, 8 - N pruned."""
        kept = np.full(self.n, BITS - self.pruned_columns, np.int64)
        kept[self.channel_index[: self.sensitive_rows]] = BITS
        return kept

    def header(self) -> np.ndarray:
        """The scalars as an int64 array (a constant of the artefact); x_scale as its float32 bits."""
        scale_bits = int(np.float32(self.x_scale).view(np.int32))
        return np.array([self.n, self.k, self.group, self.pruned_columns, self.sensitive_rows, scale_bits], np.int64)

    def arrays(self) -> list[np.ndarray]:
        return [self.header(), *(getattr(self, name) for name in self.ARRAYS)]

    @classmethod
    def from_arrays(cls, header: np.ndarray, *arrays: np.ndarray) -> "Program":
        n, k, group, pruned, sensitive, scale_bits = (int(v) for v in header)
        x_scale = float(np.int32(scale_bits).view(np.float32))
        return cls(
            n=n, k=k, group=group, pruned_columns=pruned, sensitive_rows=sensitive, x_scale=x_scale,
            **dict(zip(cls.ARRAYS, arrays)))


def _columns(v: np.ndarray) -> np.ndarray:
    """[..., 8] two's complement bits, column 0 the sign."""
    return (v.astype(np.int16).astype(np.uint8)[..., None] >> np.arange(BITS - 1, -1, -1, dtype=np.uint8)) & 1


def _pack_lanes(bits: np.ndarray) -> np.ndarray:
    """[..., 16] bits -> uint16 words, lane l at bit l."""
    return (bits.astype(np.uint16) << np.arange(LANES, dtype=np.uint16)).sum(axis=-1, dtype=np.uint16)


def _tile_words(columns: np.ndarray) -> np.ndarray:
    """[rows, K_pad, C] bits (rows a multiple of 32) -> uint16 [T, TK, C, 32] in PE consumption order."""
    rows, kp, c = columns.shape
    words = _pack_lanes(columns.reshape(rows, kp // LANES, LANES, c).transpose(0, 1, 3, 2))  # [rows, TK, C]
    return words.reshape(rows // ROWS, ROWS, kp // LANES, c).transpose(0, 2, 3, 1).copy()


def _pad_rows(a: np.ndarray) -> np.ndarray:
    rows = -(-a.shape[0] // ROWS) * ROWS
    return np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), a.dtype)])


def build(weights: np.ndarray, scales: np.ndarray, sensitive: np.ndarray, pruned_columns: int, group: int,
          offsets: np.ndarray | None, x_scale: float, name: str = "layer") -> Program:
    """The program of a layer whose BBS-pruned integer weights are ``weights`` [N, K].

    ``sensitive`` [N] bool: channels kept at 8 bits; ``offsets`` [N, groups]: the zero
    point added before pruning (None: 0); each pruned group's ``weights + offset`` must
    have the BBS structure (up to 3 redundant columns, then constant low columns
    filling N pruned columns), or CodecError names the layer and the group.
    """
    w = np.asarray(weights, np.int64)
    n, k = w.shape
    if not 0 <= pruned_columns <= 6:
        raise CodecError(f"{name}: BitVert prunes 0..6 bit columns, got {pruned_columns}")
    if group % LANES and group < k:
        raise CodecError(f"{name}: BBS group of {group} weights does not align with BitVert's 16-lane tiles")
    groups = -(-k // group)
    kp = -(-k // LANES) * LANES
    sens_idx, pruned_idx = np.flatnonzero(sensitive), np.flatnonzero(~np.asarray(sensitive, bool))
    padded = np.zeros((n, kp), np.int64)
    padded[:, :k] = w

    sens_cols = _columns(padded[sens_idx])  # [S, K_pad, 8]
    if np.abs(w[sens_idx]).max(initial=0) > 127:
        raise CodecError(f"{name}: sensitive channel weights must lie in [-127, 127]")

    offs = np.zeros((pruned_idx.size, groups), np.int64) if offsets is None else np.asarray(offsets, np.int64)[pruned_idx]
    group_of_lane = np.minimum(np.arange(kp) // group, groups - 1)
    v = padded[pruned_idx] + offs[:, group_of_lane]  # stored values, [P, K_pad]
    if v.size and (v.min() < -128 or v.max() > 127):
        raise CodecError(f"{name}: weight + zero point leaves the 8-bit range")
    cols = _columns(v)  # [P, K_pad, 8]
    real = np.arange(kp) < k
    redundant, low = _group_structure(cols, real, group, groups, pruned_columns, name)
    keep = np.concatenate([np.zeros_like(redundant)[..., None],
                           redundant[..., None] + np.arange(1, BITS - pruned_columns)], axis=-1)  # [P, groups, C]
    kept = np.take_along_axis(cols, keep[:, group_of_lane, :], axis=-1)  # [P, K_pad, 8 - N]
    constant = low - offs

    sens_bits = _tile_words(_pad_rows(sens_cols)) if sens_idx.size else np.zeros((0, kp // LANES, BITS, ROWS), np.uint16)
    pruned_bits = (_tile_words(_pad_rows(kept)) if pruned_idx.size
                   else np.zeros((0, kp // LANES, BITS - pruned_columns, ROWS), np.uint16))
    return Program(
        n=n, k=k, group=group, pruned_columns=pruned_columns,
        channel_index=np.concatenate([sens_idx, pruned_idx]).astype(np.int32), sensitive_rows=int(sens_idx.size),
        sensitive_bits=sens_bits, pruned_bits=pruned_bits, redundant=redundant.astype(np.uint8),
        constant=constant.astype(np.int8), scales=np.asarray(scales, np.float32),
        x_scale=float(np.float32(x_scale)))  # stored as float32 in the header


def _group_structure(cols, real, group, groups, pruned_columns, name):
    """Per pruned group: the redundant columns r used (the most that work) and the low value
    shared by every weight of the group in the L = N - r low columns."""
    starts = np.arange(groups) * group  # a group's first lane is always a real weight
    fits, lows = [], []
    for r in range(min(MAX_REDUNDANT, pruned_columns) + 1):
        low_cols = pruned_columns - r
        same = np.all(cols[:, :, 1: r + 1] == cols[:, :, :1], axis=-1)  # columns 1..r equal the sign column
        low = (cols[:, :, BITS - low_cols:].astype(np.int64) << np.arange(low_cols - 1, -1, -1)).sum(-1)
        shared = low == np.repeat(low[:, starts], np.diff(np.append(starts, cols.shape[1])), axis=1)
        fits.append(np.logical_and.reduceat((same & shared) | ~real, starts, axis=1))
        lows.append(low[:, starts])
    fits, lows = np.stack(fits), np.stack(lows)  # [choices of r, pruned rows, groups]
    if fits.shape[1] and not fits.any(axis=0).all():
        row, g = np.argwhere(~fits.any(axis=0))[0]
        raise CodecError(f"{name}: group {g} of pruned row {row} lacks the BBS structure for {pruned_columns} "
                         "pruned columns (up to 3 redundant columns, then low columns shared by the group)")
    best = fits.shape[0] - 1 - np.argmax(fits[::-1], axis=0)
    return best, np.take_along_axis(lows, best[None], axis=0)[0]

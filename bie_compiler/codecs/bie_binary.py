"""``bie-binary``: ternary weights ``{-s, 0, +s}`` with one scale per output channel.

Which weights survive: those above ``threshold`` in magnitude, or the top
``density`` fraction of each channel, or by default the ternary-weight-network
rule ``|w| > 0.7 * mean|w|`` per channel. The scale is the mean magnitude of the
survivors, the least-squares optimum for a fixed mask.

With calibration statistics the weights are rounded with error feedback
(:mod:`.feedback`) onto each channel's ``{-s, 0, +s}``: the rule above gives the
starting scale, which is then searched (output-error proxy); each weight rounds
to the nearest level, and ``threshold`` and ``density`` only raise the cut
(``density`` then sets the survivors' share only approximately: the updated
weights decide).

Positions are stored in whichever layout is smaller for the layer:

* ``bitmap``: a non-zero plane and a sign plane, packed K-interleaved
  (:func:`pack_bits`); the same arrays as a 1-plane ``bie-bitplane`` encoding.
* ``index``: per output channel, a run of entries ``k | negative << top``
  (uint16 with ``top = 15`` when K <= 2^15, else uint32 with ``top = 31``),
  delimited by ``indptr`` (uint32, N + 1 entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CodecError
from . import feedback, rotation
from .base import Encoded, check_weight, pack_bits, unpack_bits

NAME = "bie-binary"
LAYOUTS = ("auto", "bitmap", "index")


@dataclass(frozen=True)
class Ternary:
    """Which weights survive ternarization (shared with ``bie-blocked``)."""

    threshold: float = field(default=0.0, metadata={  # 0: use density or the 0.7 * mean|w| rule
        "help": "keep weights with |w| > T"})
    density: float = field(default=0.0, metadata={  # by magnitude; 0: unused
        "help": "keep this fraction of each channel's weights"})
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given

    def __post_init__(self):
        if self.threshold < 0:
            raise CodecError(f"threshold must be >= 0, got {self.threshold}")
        if not 0 <= self.density <= 1:
            raise CodecError(f"density must be in (0, 1], got {self.density}")
        if self.threshold and self.density:
            raise CodecError("give either threshold or density, not both")


@dataclass(frozen=True)
class Config(Ternary):
    layout: str = field(default="auto", metadata={"help": "bitmap, index or auto (the smaller; default)"})

    def __post_init__(self):
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise CodecError(f"{NAME}: layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")


SCALE_RATIOS = np.linspace(1.4, 0.6, 17)  # feedback's scale candidates, times the rule's scale


def ternarize(weight: np.ndarray, config: Ternary,
              calibration: feedback.Calibration | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ternary approximation: (kept mask [N, K], negative mask [N, K], scales float32 [N]); with
    ``calibration``, by error feedback."""
    w = check_weight(weight)
    if calibration is not None:
        grid = TernaryGrid(*w.shape, config)
        feedback.quantize(w, calibration, grid)
        return grid.codes != 0, grid.codes < 0, grid.scales
    return _ternarize_rule(w, config)


def _ternarize_rule(w: np.ndarray, config: Ternary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data-free rule (threshold, density or 0.7 * mean|w|) on a float32 weight."""
    magnitude = np.abs(w)
    if config.density:
        keep_per_row = int(np.ceil(config.density * w.shape[1]))
        order = np.argsort(-magnitude, axis=1, kind="stable")[:, :keep_per_row]
        keep = np.zeros(w.shape, bool)
        np.put_along_axis(keep, order, True, axis=1)
        keep &= magnitude > 0
    elif config.threshold:
        keep = magnitude > config.threshold
    else:
        keep = magnitude > 0.7 * magnitude.mean(axis=1, keepdims=True)
    counts = keep.sum(axis=1)
    sums = np.where(keep, magnitude, 0).sum(axis=1, dtype=np.float64)
    scales = np.where(counts > 0, sums / np.maximum(counts, 1), 0).astype(np.float32)
    return keep, keep & (w < 0), scales


class TernaryGrid:
    """A :class:`feedback.Grid` for ternary weights: codes [N, K] in {-1, 0, 1}, one float32 scale per channel.

    A weight rounds to the nearest level, but never survives at or below the rule's cut (``threshold``, or the
    largest magnitude ``density`` drops): cutting at more than half the scale makes errors that feedback
    piles onto the later columns, which then pass the cut more often than the rule meant. The scale is the
    candidate around the rule's with the least error on the weights, weighted by the feedback's per-column
    importance.
    """

    def __init__(self, n: int, k: int, config: Ternary):
        self.group, self.config = k, config
        self.codes = np.zeros((n, k), np.int8)

    def start_group(self, columns: np.ndarray, weights: np.ndarray, importance: np.ndarray) -> None:
        keep, _, rule_scales = _ternarize_rule(weights.astype(np.float32), self.config)
        magnitude = np.abs(weights)
        if self.config.threshold:
            rule_cut = np.full(len(weights), self.config.threshold)
        elif self.config.density:
            rule_cut = np.where(keep, 0.0, magnitude).max(axis=1)  # the largest magnitude the rule dropped
        else:
            rule_cut = np.zeros(len(weights))
        best_error = None
        for ratio in SCALE_RATIOS:
            scales = (rule_scales * np.float32(ratio)).astype(np.float32)
            cut = np.maximum(rule_cut, scales / 2.0)
            error = ((np.where(magnitude > cut[:, None], scales[:, None], 0.0) - magnitude) ** 2) @ importance
            if best_error is None:
                self.scales, self.cut, best_error = scales, cut, error
            else:
                better = error < best_error
                self.scales = np.where(better, scales, self.scales)
                self.cut, best_error = np.where(better, cut, self.cut), np.where(better, error, best_error)

    def round(self, column: int, values: np.ndarray) -> np.ndarray:
        codes = np.where(np.abs(values) > self.cut, np.sign(values), 0.0)
        self.codes[:, column] = codes
        return codes * self.scales


def index_entry_dtype(k: int) -> tuple[np.dtype, int]:
    """Entry dtype for global indices into K, and the bit that holds the sign."""
    if k <= 2**15:
        return np.dtype(np.uint16), 15
    if k <= 2**31:
        return np.dtype(np.uint32), 31
    raise CodecError(f"{NAME}: reduction length {k} is too long for 32-bit indices")


def index_layout_nbytes(nonzeros: int, n: int, k: int) -> int:
    """Bytes of the index layout's position arrays (entries and indptr)."""
    return nonzeros * index_entry_dtype(k)[0].itemsize + 4 * (n + 1)


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    keep, negative, scales = ternarize(weight, config, calibration)
    n, k = keep.shape
    bitmap = {"planes": pack_bits(keep)[None], "signs": pack_bits(negative), "scales": scales[:, None]}
    layout = config.layout
    if layout == "auto":
        bitmap_bytes = bitmap["planes"].nbytes + bitmap["signs"].nbytes
        layout = "index" if index_layout_nbytes(int(keep.sum()), n, k) < bitmap_bytes else "bitmap"
    if layout == "bitmap":
        return Encoded(NAME, (n, k), bitmap, {"layout": "bitmap"})
    dtype, sign_bit = index_entry_dtype(k)
    rows, cols = np.nonzero(keep)  # row-major: each channel's entries are contiguous and ascending
    entries = cols.astype(np.uint64) | (negative[rows, cols].astype(np.uint64) << sign_bit)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.uint32)
    arrays = {"indptr": indptr, "entries": entries.astype(dtype), "scales": scales}
    return Encoded(NAME, (n, k), arrays, {"layout": "index"})


def decode(enc: Encoded) -> np.ndarray:
    n, k = enc.shape
    if enc.header["layout"] == "bitmap":
        sign = np.where(unpack_bits(enc.arrays["signs"], k), -1.0, 1.0)
        return (unpack_bits(enc.arrays["planes"][0], k) * sign * enc.arrays["scales"]).astype(np.float32)
    _, sign_bit = index_entry_dtype(k)
    entries = enc.arrays["entries"].astype(np.uint64)
    rows = np.repeat(np.arange(n), np.diff(enc.arrays["indptr"].astype(np.int64)))
    cols = (entries & ((1 << sign_bit) - 1)).astype(np.int64)
    values = np.where(entries >> sign_bit, -1.0, 1.0) * enc.arrays["scales"][rows]
    dense = np.zeros((n, k), np.float32)
    dense[rows, cols] = values
    return dense

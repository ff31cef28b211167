"""Symmetric uniform grids ``q * s``, ``|q| <= qmax``: the scale search and the feedback grid that
``bie-bitplane``, ``tans`` and ``int8`` share.
"""

from __future__ import annotations

import numpy as np

from . import feedback


BLOCK_ELEMENTS = 1 << 15  # rows searched together: their one scratch buffer stays in a core's L2


def clip_search(values: np.ndarray, qmax: int, ratios: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``values`` [..., G], the scale among ``ratios * max|v| / qmax`` with the least squared error.

    ``importance`` [G] weighs each position's error (the feedback's cost of rounding that
    column, so the search minimises an output-error proxy, not the weight error); ties keep
    the earlier ratio (list the largest first: weights already on its grid round-trip exactly).
    Rows are searched in blocks of about ``BLOCK_ELEMENTS`` values: a whole layer's temporaries,
    one per ratio and step, would stream through memory, which two encoding processes share.
    """
    rows = values.reshape(-1, values.shape[-1])
    block = max(1, BLOCK_ELEMENTS // max(1, rows.shape[1]))
    scales = np.empty(rows.shape[0], np.float32)
    for start in range(0, rows.shape[0], block):
        scales[start:start + block] = _search_rows(rows[start:start + block], qmax, ratios, importance)
    return scales.reshape(values.shape[:-1])


def _search_rows(rows: np.ndarray, qmax: int, ratios: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """:func:`clip_search` of ``rows`` [R, G], every step computed in place in one scratch buffer."""
    dtype = rows.dtype
    full_range = np.abs(rows).max(axis=-1) / dtype.type(qmax)
    squared = np.empty_like(rows)
    best_scales, best_error = None, None
    for ratio in ratios:
        scales = (full_range * ratio).astype(np.float32)
        safe = np.where(scales > 0, scales, np.float32(1))[..., None].astype(dtype)
        np.divide(rows, safe, out=squared)
        np.rint(squared, out=squared)
        np.clip(squared, -qmax, qmax, out=squared)
        squared *= safe
        squared -= rows
        squared *= squared
        error = squared.sum(axis=-1) if importance is None else squared @ importance
        if best_error is None:
            best_scales, best_error = scales, error
        else:
            better = error < best_error
            best_scales, best_error = np.where(better, scales, best_scales), np.where(better, error, best_error)
    return best_scales


class UniformGrid:
    """A :class:`feedback.Grid`: codes [N, K] in [-qmax, qmax], one float32 scale per row and group of ``group`` columns.

    Each group's scales are searched when feedback reaches it, on the updated weights,
    weighted by the feedback's per-column importance.
    """

    def __init__(self, n: int, k: int, qmax: int, ratios: np.ndarray, group: int, groups: int):
        """``groups`` scales per row (more than K needs when the format pads K; those stay 0)."""
        self.qmax, self.ratios, self.group = qmax, ratios, group
        self.codes = np.zeros((n, k), np.int64)
        self.scales = np.zeros((n, groups), np.float32)

    def start_group(self, columns: np.ndarray, weights: np.ndarray, importance: np.ndarray) -> None:
        self.scales[:, int(columns[0]) // self.group] = clip_search(weights, self.qmax, self.ratios, importance)

    def round(self, column: int, values: np.ndarray) -> np.ndarray:
        scale = self.scales[:, column // self.group].astype(np.float64)
        codes = np.clip(np.rint(values / np.where(scale > 0, scale, 1.0)), -self.qmax, self.qmax)
        self.codes[:, column] = codes
        return codes * scale


def quantize_with_feedback(weight: np.ndarray, calibration: feedback.Calibration, qmax: int, ratios: np.ndarray,
                           group: int, groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(codes int64 [N, K], scales float32 [N, groups]) of ``weight`` rounded with error feedback."""
    n, k = weight.shape
    grid = UniformGrid(n, k, qmax, ratios, group, groups)
    feedback.quantize(weight, calibration, grid)
    return grid.codes, grid.scales

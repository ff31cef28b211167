"""Error feedback: quantize a weight column by column, feeding each column's rounding error forward.

GPTQ (Frantar et al., 2023); LDLQ (Chee et al., 2023, QuIP; used by NWC) is the same
update written with the LDL decomposition of H. For a layer ``y = x W^T`` with
calibration inputs ``X`` and ``H = X^T X``, the output error ``tr((W - Q) H (W - Q)^T)``
is reduced by rounding column ``k`` and spreading its error over the columns not yet
rounded, in proportion to the inverse Hessian: with ``U`` the upper Cholesky factor of
``H^-1``, ``e_k = (w_k - q_k) / U[k, k]`` and ``w_j -= e_k U[k, j]`` for ``j > k``.
Columns go in blocks (lazy batch updates: within a block at once, beyond it after the
block), ``H`` is damped by ``damping * mean(diag H)``, and ``act_order`` rounds the
columns with the largest ``diag H`` first.

Codecs plug in through a :class:`Grid`: ``start_group`` is called when the first
column of each group of ``grid.group`` columns is reached, with the weights of the
group as updated so far (the codec picks its scales or constants there), and
``round`` puts one column on the codec's grid (the codec keeps the codes it chose).
Everything is float64 numpy, deterministic for a given weight, ``H`` and settings,
so an encoding made with feedback is reproduced exactly by encoding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import CodecError

BLOCK = 128  # columns per lazy batch update
# GPTQ damps by 1 % with 128 x 2048 calibration tokens; with the hundreds to thousands of rows a compile
# usually gets, X^T X is near rank-deficient and 1 % let feedback push error into directions the data never
# showed (all-MiniLM-L6-v2, 1024 rows: embedding cosine 0.969 at 1 %, 0.975 at 10 %, 0.972 at 50 %).
DAMPING = 0.1


@dataclass(frozen=True)
class Calibration:
    """One layer's calibration statistics and the feedback settings."""

    xtx: np.ndarray  # float64 [K, K]: sum of x^T x over the input rows the layer saw (K order as the codec's)
    rows: int  # how many input rows were summed
    damping: float = DAMPING  # added to diag H, relative to mean(diag H)
    act_order: bool = False  # round columns by decreasing diag H
    # the model's relative output error per unit of this layer's relative weight error (bie_compiler.sensitivity):
    # weighs the layer's distortion when a bits budget is split over layers; 1 where it was not measured
    sensitivity: float = 1.0


class Grid(Protocol):
    group: int  # columns per group; start_group is called at each group's first column

    def start_group(self, columns: np.ndarray, weights: np.ndarray, importance: np.ndarray) -> None:
        """Group of original column indices ``columns``, its current weights [N, len], per-column importance."""

    def round(self, column: int, values: np.ndarray) -> np.ndarray:
        """Column ``column``'s current values [N] -> the nearest values on the grid (float [N]), recorded."""


def prepared_hessian(calibration: Calibration, k: int) -> np.ndarray:
    """Damped H [K, K] float64. An input never non-zero on the calibration data is decoupled from the others and
    weighed as an average input in the scale search: its weights are rounded to nearest, keeping their values.

    GPTQ zeroes such weights, as if the input never mattered; with few calibration samples it does (a
    squeeze-excitation conv sees one pooled row per sample, and a post-ReLU channel dead on those is live on others).
    """
    h = np.array(calibration.xtx, np.float64)
    if h.shape != (k, k) or not np.all(np.isfinite(h)):
        raise CodecError(f"feedback: calibration statistics of shape {list(h.shape)} for K = {k}, or not finite")
    diag = np.diag(h)
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = float(np.mean(diag[~dead])) if not dead.all() else 1.0
    h[np.diag_indices(k)] += calibration.damping * float(np.mean(np.diag(h)))
    return h


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper U with ``H^-1 = U^T U``; more damping (x10, deterministic) until H is numerically positive definite."""
    extra = 0.0
    mean_diag = float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            damped = h + extra * mean_diag * np.eye(len(h)) if extra else h
            lower = np.linalg.cholesky(damped)
            inverse_lower = np.linalg.solve(lower, np.eye(len(h)))
            return np.linalg.cholesky(inverse_lower.T @ inverse_lower).T
        except np.linalg.LinAlgError:
            extra = 0.01 if not extra else extra * 10
    raise CodecError("feedback: the calibration Hessian stays singular after damping")


def quantize(weight: np.ndarray, calibration: Calibration, grid: Grid, block: int = BLOCK) -> np.ndarray:
    """The weight [N, K] rounded column by column onto ``grid`` with error feedback; returns the rounded float64 [N, K].

    BLAS runs on one thread here: the same sums in the same order on any machine (so ``check`` re-encodes
    bit for bit), and LAPACK's Cholesky on two contended threads was 5-30x slower than on one.
    """
    with threadpool_limits(1, "blas"):
        return _quantize(weight, calibration, grid, block)


def _quantize(weight: np.ndarray, calibration: Calibration, grid: Grid, block: int) -> np.ndarray:
    n, k = weight.shape
    h = prepared_hessian(calibration, k)
    w = np.array(weight, np.float64)
    if calibration.act_order:
        if grid.group < k:
            raise CodecError("feedback: act_order needs one scale per output channel (the grid is group-wise)")
        order = np.argsort(-np.diag(h), kind="stable")
    else:
        order = np.arange(k)
    w, h = w[:, order], h[np.ix_(order, order)]
    u = inverse_cholesky(h)
    importance = 1.0 / np.diag(u) ** 2  # the cost of rounding error in column k is err^2 / U[k, k]^2
    group, per_channel = grid.group, grid.group >= k
    if per_channel:
        grid.start_group(order, w.copy(), importance)
    elif group > block or block % group:
        block = group  # a group then never straddles a block, so start_group sees fully updated weights
    rounded = np.zeros_like(w)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        part = w[:, b0:b1].copy()
        errors = np.zeros_like(part)
        for i in range(b1 - b0):
            col = b0 + i
            if not per_channel and col % group == 0:
                end = min(col + group, b1)
                grid.start_group(order[col:end], part[:, i:end - b0].copy(), importance[col:end])
            q = grid.round(int(order[col]), part[:, i])
            rounded[:, col] = q
            errors[:, i] = (part[:, i] - q) / u[col, col]
            part[:, i + 1:] -= errors[:, i, None] * u[col, col + 1:b1]
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    out = np.empty_like(rounded)
    out[:, order] = rounded
    return out


def output_error(weight: np.ndarray, approx: np.ndarray, xtx: np.ndarray) -> float:
    """Relative output error ``tr(E H E^T) / tr(W H W^T)`` with ``E = W - approx``: what feedback minimises."""
    w = np.asarray(weight, np.float64)
    e = w - np.asarray(approx, np.float64)
    energy = float(np.einsum("nk,nk->", w @ xtx, w))
    return float(np.einsum("nk,nk->", e @ xtx, e)) / energy if energy > 0 else 0.0


def distortion(weight: np.ndarray, approx: np.ndarray, calibration: Calibration | None) -> float:
    """What a bits-budget planner minimises for one layer: the relative squared weight error, times the layer's
    measured sensitivity when there is calibration data."""
    w = np.asarray(weight, np.float64)
    energy = float((w**2).sum())
    error = float(((w - np.asarray(approx, np.float64)) ** 2).sum()) / energy if energy > 0 else 0.0
    return error * (calibration.sensitivity if calibration is not None else 1.0)

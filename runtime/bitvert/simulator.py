"""Bit-serial execution of BitVert programs, in integer arithmetic, vectorized over the array.

Every cycle a PE takes one weight bit column of its 16 lanes. The scheduler inverts a
column with more ones than zeros (bi-directional bit sparsity), so at most 8 lanes are
added: the partial sum is ``sum_{b=1} a`` or ``sum(a) - sum_{b=0} a``; it is shifted to
the column's significance and accumulated. A pruned group adds ``constant * sum(a)``
from its metadata. All tiles, rows and outputs of one cycle run as one batched
product; float64 products of 0/1 masks and INT8 sums are exact (well below 2^53), and
accumulators are checked to fit int32 as the hardware's do.
"""

from __future__ import annotations

import numpy as np

from bie_compiler.errors import BieError

from .program import BITS, LANES, ROWS, Program

INT8_MAX = 127


def quantize_activations(x: np.ndarray, scale: float) -> np.ndarray:
    """Per-tensor symmetric INT8: round(x / scale) (float32 division, ties to even) clipped to [-127, 127]."""
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)


def calibrate_scale(samples: list[np.ndarray]) -> float:
    """The symmetric INT8 scale that maps the largest |value| seen to 127 (1.0 for all-zero samples)."""
    peak = max((float(np.max(np.abs(s))) for s in samples if s.size), default=0.0)
    return peak / INT8_MAX if peak > 0 else 1.0


def _chunk(bits: np.ndarray, redundant: np.ndarray, constant: np.ndarray, lanes_f: np.ndarray,
           lane_sums: np.ndarray, group_sums: np.ndarray, group_of_tile: np.ndarray) -> np.ndarray:
    """int64 [M, rows] accumulators of one chunk; bits [T, TK, C, 32], metadata per real row."""
    tiles, k_tiles, cycles, _ = bits.shape
    rows = tiles * ROWS
    words = bits.transpose(0, 3, 1, 2).reshape(rows, k_tiles, cycles)  # row-major over reordered rows
    r = np.zeros((rows, group_sums.shape[1]), np.int64)
    r[: redundant.shape[0]] = redundant
    r_tile = r[:, group_of_tile]  # [rows, TK]
    acc = np.zeros((lanes_f.shape[1], rows), np.int64)
    shifts = np.arange(LANES, dtype=np.uint16)
    for c in range(cycles):
        column = ((words[:, :, c, None] >> shifts) & 1).astype(np.float64)  # [rows, TK, 16]
        invert = column.sum(axis=-1) > LANES // 2  # the scheduler's choice
        selected = np.where(invert[..., None], 1.0 - column, column)  # at most 8 effectual lanes
        partial = np.matmul(lanes_f, selected.transpose(1, 2, 0))  # [TK, M, rows]
        partial = np.where(invert.T[:, None, :], lane_sums.T[:, :, None] - partial, partial)
        significance = -(1 << (BITS - 1 - r_tile)) if c == 0 else 1 << (BITS - 1 - r_tile - c)  # [rows, TK]
        acc += np.einsum("tmr,rt->mr", np.rint(partial).astype(np.int64), significance)
    k_const = np.zeros((rows, group_sums.shape[1]), np.int64)
    k_const[: constant.shape[0]] = constant
    return acc + group_sums @ k_const.T


def execute(program: Program, xq: np.ndarray) -> np.ndarray:
    """int32 accumulators [M, N] (original channel order) of INT8 activations ``xq`` [M, K]."""
    xq = np.asarray(xq)
    m, k = xq.shape
    if k != program.k or xq.dtype != np.int8:
        raise BieError(f"BitVert program expects int8 activations [M, {program.k}], got {xq.dtype} {list(xq.shape)}")
    k_tiles = program.k_tiles
    padded = np.zeros((m, k_tiles * LANES), np.int64)
    padded[:, :k] = xq
    lanes = padded.reshape(m, k_tiles, LANES)
    lanes_f = lanes.transpose(1, 0, 2).astype(np.float64)  # [TK, M, 16]
    lane_sums = lanes.sum(axis=-1).astype(np.float64)  # [M, TK]
    groups = -(-k // program.group)
    group_of_tile = np.minimum(np.arange(k_tiles) * LANES // program.group, groups - 1)
    group_sums = np.zeros((m, groups), np.int64)
    np.add.at(group_sums, (slice(None), group_of_tile), lanes.sum(axis=-1))

    no_meta = np.zeros((0, groups), np.int64)
    sensitive = _chunk(program.sensitive_bits, no_meta, no_meta, lanes_f, lane_sums, group_sums, group_of_tile)
    pruned = _chunk(program.pruned_bits, program.redundant.astype(np.int64), program.constant.astype(np.int64),
                    lanes_f, lane_sums, group_sums, group_of_tile)
    reordered = np.concatenate([sensitive[:, : program.sensitive_rows],
                                pruned[:, : program.n - program.sensitive_rows]], axis=1)
    if reordered.size and np.abs(reordered).max() > np.iinfo(np.int32).max:
        raise BieError("BitVert accumulator overflow: a dot product left the int32 range")
    out = np.empty_like(reordered)
    out[:, program.channel_index] = reordered  # the output unshuffle
    return out.astype(np.int32)


def run_layer(program: Program, x: np.ndarray) -> np.ndarray:
    """float32 [M, N]: quantize ``x`` with the program's activation scale, execute, dequantize."""
    acc = execute(program, quantize_activations(x, program.x_scale))
    return (acc * (np.float64(program.x_scale) * program.scales.astype(np.float64))).astype(np.float32)

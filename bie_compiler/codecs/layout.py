"""Between an ONNX weight's layout and the [N, K] matrix codecs take.

A MatMul weight is [K, N] (Gemm with transB = 1: [N, K] already), a Gather table [N, K] (a row per index); a conv weight
OIHW becomes [O, kh * kw * I / groups] with K ordered (kh, kw, in_channel),
channel fastest, as the calibration's im2col rows and the decode kernels order it.
"""

from __future__ import annotations

import numpy as np


def codec_matrix(weight: np.ndarray, op: str, transposed: bool = False) -> np.ndarray:
    """The ONNX weight of a ``matmul``, ``conv2d`` or ``gather`` as codecs take it, [N, K], contiguous."""
    if op == "conv2d":
        return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1))
    return np.ascontiguousarray(weight if transposed or op == "gather" else weight.T)


def onnx_layout(matrix: np.ndarray, shape: tuple, op: str, transposed: bool = False) -> np.ndarray:
    """Inverse of :func:`codec_matrix`: a [N, K] matrix back in the ONNX weight's layout and ``shape``."""
    if op == "conv2d":
        o, i, kh, kw = shape
        return np.ascontiguousarray(matrix.reshape(o, kh, kw, i).transpose(0, 3, 1, 2))
    return np.ascontiguousarray(matrix if transposed or op == "gather" else matrix.T)

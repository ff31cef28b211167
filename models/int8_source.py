"""`int8_source`: a quantized export: weights stored as integers and dequantized in the graph, one
as `Cast -> Mul(scale)` (int8, per output channel), one as `DequantizeLinear` (uint8, zero point 128).

`x` [batch, 256] gives `y` [batch, 16].
"""

import numpy as np
import onnx
from onnx import TensorProto

from .common import GraphBuilder, layer_rng, trained_weight


def _quantized(g: GraphBuilder, name: str, shape: tuple[int, int], axis_scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """A trained-like [K, N] weight rounded to 8 bits: (int8 values, scale per output channel or one)."""
    w = trained_weight(layer_rng(g.seed, name), shape, shape[0], 1)
    peak = np.abs(w).max(axis=0) if axis_scale else np.abs(w).max()
    scale = np.asarray(peak / 127, np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    q, scale = _quantized(g, "fc1.weight", (256, 128), axis_scale=True)
    w = g.op("Cast", [g.stored("fc1.weight_quantized", q)], "fc1.dequant.cast", to=TensorProto.FLOAT)
    w = g.op("Mul", [w, g.const("fc1.weight_scale", scale)], "fc1.dequant")
    h = g.op("Relu", [g.op("MatMul", ["x", w], "fc1")], "fc1.relu")
    q, scale = _quantized(g, "fc2.weight", (128, 16), axis_scale=False)
    w = g.op("DequantizeLinear", [g.stored("fc2.weight_quantized", (q.astype(np.int16) + 128).astype(np.uint8)),
                                  g.const("fc2.weight_scale", scale),
                                  g.stored("fc2.weight_zero_point", np.uint8(128))], "fc2.dequant")
    g.op("MatMul", [h, w], "fc2", output="y")
    return g.model("int8_source", __doc__, {"x": ["batch", 256]}, {"y": ["batch", 16]})

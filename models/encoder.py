"""`encoder`: a BERT-style encoder shaped like all-MiniLM-L6-v2 on hidden states `x` [batch, seq, 384]
giving `y` [batch, seq, 384]: 6 post-LayerNorm layers, 12-head self-attention (head size 32), a
1536-wide GELU feed-forward, every projection MatMul + Add with W [K, N] as exporters emit them.

The sequence length is symbolic (`seq`): fix it with `compile --input-shape x:1x128x384` (or `--dim
seq=128`). The head reshapes use 0 (copy) and -1 (infer) so they stay valid for any batch and
sequence. Weights are trained-like random values (no real training): right for speed, not for accuracy.
"""

import math

import numpy as np
import onnx

from .common import GraphBuilder

LAYERS, D_MODEL, HEADS, FFN = 6, 384, 12, 1536
HEAD = D_MODEL // HEADS


def _layer_norm(g: GraphBuilder, x: str, prefix: str) -> str:
    inputs = [x, g.gain(f"{prefix}.weight", D_MODEL), g.bias(f"{prefix}.bias", D_MODEL)]
    return g.op("LayerNormalization", inputs, prefix, axis=-1, epsilon=1e-12)


def _attention(g: GraphBuilder, x: str, p: str) -> str:
    split = g.const(f"{p}.split_heads_shape", np.array([0, -1, HEADS, HEAD], np.int64))
    merge = g.const(f"{p}.merge_heads_shape", np.array([0, -1, D_MODEL], np.int64))

    def heads(name: str, perm: list[int]) -> str:
        h = g.matmul_linear(x, f"{p}.{name}", D_MODEL, D_MODEL)
        h = g.op("Reshape", [h, split], f"{p}.{name}.split_heads")
        return g.op("Transpose", [h], f"{p}.{name}.transpose", perm=perm)

    q, k_t, v = heads("query", [0, 2, 1, 3]), heads("key", [0, 2, 3, 1]), heads("value", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k_t], f"{p}.scores")
    scores = g.op("Mul", [scores, g.const(f"{p}.scale", np.float32(1 / math.sqrt(HEAD)))], f"{p}.scale_scores")
    probs = g.op("Softmax", [scores], f"{p}.softmax", axis=-1)
    h = g.op("MatMul", [probs, v], f"{p}.context")
    h = g.op("Transpose", [h], f"{p}.context.transpose", perm=[0, 2, 1, 3])
    h = g.op("Reshape", [h, merge], f"{p}.merge_heads")
    return g.matmul_linear(h, f"{p}.output", D_MODEL, D_MODEL)


def _gelu(g: GraphBuilder, x: str, p: str) -> str:
    h = g.op("Div", [x, g.const(f"{p}.sqrt2", np.float32(math.sqrt(2)))], f"{p}.div")
    h = g.op("Erf", [h], f"{p}.erf")
    h = g.op("Add", [h, g.const(f"{p}.one", np.float32(1))], f"{p}.add_one")
    h = g.op("Mul", [x, h], f"{p}.mul")
    return g.op("Mul", [h, g.const(f"{p}.half", np.float32(0.5))], f"{p}.mul_half")


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    x = "x"
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        h = _attention(g, x, f"{p}.attention")
        x = _layer_norm(g, g.op("Add", [x, h], f"{p}.attention.residual"), f"{p}.attention.norm")
        h = g.matmul_linear(x, f"{p}.intermediate", D_MODEL, FFN)
        h = g.matmul_linear(_gelu(g, h, f"{p}.intermediate.gelu"), f"{p}.output", FFN, D_MODEL)
        x = _layer_norm(g, g.op("Add", [x, h], f"{p}.output.residual"), f"{p}.output.norm")
    g.op("Identity", [x], "output", output="y")
    shape = ["batch", "seq", D_MODEL]
    return g.model("encoder", __doc__, {"x": shape}, {"y": shape})

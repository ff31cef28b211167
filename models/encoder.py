"""`encoder`: a BERT-style encoder shaped like all-MiniLM-L6-v2 on hidden states `x` [batch, seq, 384]
giving `y` [batch, seq, 384]: 6 post-LayerNorm layers, 12-head self-attention (head size 32), a
1536-wide GELU feed-forward, every projection MatMul + Add with W [K, N] as exporters emit them.

The sequence length is symbolic (`seq`): fix it with `compile --input-shape x:1x128x384` (or `--dim
seq=128`). The head reshapes use 0 (copy) and -1 (infer) so they stay valid for any batch and
sequence. Weights are trained-like random values (no real training): right for speed, not for accuracy.
"""

import onnx

from .blocks import Attention, attention, gelu, layer_norm
from .common import GraphBuilder

LAYERS, D_MODEL, HEADS, FFN = 6, 384, 12, 1536
EPSILON = 1e-12


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    x = "x"
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        h = attention(g, x, f"{p}.attention", Attention(D_MODEL, HEADS))
        x = layer_norm(g, g.op("Add", [x, h], f"{p}.attention.residual"), f"{p}.attention.norm", D_MODEL, EPSILON)
        h = g.matmul_linear(x, f"{p}.intermediate", D_MODEL, FFN)
        h = g.matmul_linear(gelu(g, h, f"{p}.intermediate.gelu"), f"{p}.output", FFN, D_MODEL)
        x = layer_norm(g, g.op("Add", [x, h], f"{p}.output.residual"), f"{p}.output.norm", D_MODEL, EPSILON)
    g.op("Identity", [x], "output", output="y")
    shape = ["batch", "seq", D_MODEL]
    return g.model("encoder", __doc__, {"x": shape}, {"y": shape})

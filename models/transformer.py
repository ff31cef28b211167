"""`transformer`: one pre-LayerNorm transformer encoder block on `x` [batch, 16, 128] giving
`y` [batch, 16, 128]: 4-head self-attention (head size 32) and a 512-wide GELU feed-forward,
each behind a LayerNormalization and inside a residual add.

All six projections are MatMul + Add with W [K, N], the form of exported BERT-style models;
q/k are dense, v/o 50 % pruned, ffn.fc1 80 % and ffn.fc2 60 %. GELU is the exact erf form
built from Div/Erf/Add/Mul (opset 17 has no Gelu op). The head reshapes use constant shapes
with 0 for the batch dimension, which TVM imports with the batch left symbolic.
"""

import onnx

from .blocks import Attention, attention, gelu, layer_norm
from .common import GraphBuilder

SEQ, D_MODEL, HEADS, FFN = 16, 128, 4, 512
ATTENTION = Attention(D_MODEL, HEADS, seq=SEQ, names=("q", "k", "v", "o"),
                      sparsity={"q": 0.0, "k": 0.0, "v": 0.5, "o": 0.5})


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    h = attention(g, layer_norm(g, "x", "blocks.ln1", D_MODEL, 1e-5), "blocks.attn", ATTENTION)
    x = g.op("Add", ["x", h], "blocks.attn.residual")
    h = g.matmul_linear(layer_norm(g, x, "blocks.ln2", D_MODEL, 1e-5), "blocks.ffn.fc1", D_MODEL, FFN, sparsity=0.8)
    h = g.matmul_linear(gelu(g, h, "blocks.ffn.gelu"), "blocks.ffn.fc2", FFN, D_MODEL, sparsity=0.6)
    g.op("Add", [x, h], "blocks.ffn.residual", output="y")
    shape = ["batch", SEQ, D_MODEL]
    return g.model("transformer", __doc__, {"x": shape}, {"y": shape})

"""`transformer`: one pre-LayerNorm transformer encoder block on `x` [batch, 16, 128] giving
`y` [batch, 16, 128]: 4-head self-attention (head size 32) and a 512-wide GELU feed-forward,
each behind a LayerNormalization and inside a residual add.

All six projections are MatMul + Add with W [K, N], the form of exported BERT-style models;
q/k are dense, v/o 50 % pruned, ffn.fc1 80 % and ffn.fc2 60 %. GELU is the exact erf form
built from Div/Erf/Add/Mul (opset 17 has no Gelu op). The head reshapes use constant shapes
with 0 for the batch dimension, which TVM imports with the batch left symbolic.
"""

import math

import numpy as np
import onnx

from .common import GraphBuilder

SEQ, D_MODEL, HEADS, FFN = 16, 128, 4, 512
HEAD = D_MODEL // HEADS
ATTN_SPARSITY = {"q": 0.0, "k": 0.0, "v": 0.5, "o": 0.5}


def _layer_norm(g: GraphBuilder, x: str, prefix: str) -> str:
    inputs = [x, g.gain(f"{prefix}.weight", D_MODEL), g.bias(f"{prefix}.bias", D_MODEL)]
    return g.op("LayerNormalization", inputs, prefix, axis=-1, epsilon=1e-5)


def _attention(g: GraphBuilder, x: str, p: str) -> str:
    """Multi-head self-attention: [batch, SEQ, D_MODEL] -> same shape."""
    split = g.const(f"{p}.split_heads_shape", np.array([0, SEQ, HEADS, HEAD], np.int64))
    merge = g.const(f"{p}.merge_heads_shape", np.array([0, SEQ, D_MODEL], np.int64))

    def heads(name: str, perm: list[int]) -> str:
        """Project, split into heads and transpose: perm [0,2,1,3] -> [b,H,S,D], [0,2,3,1] -> [b,H,D,S]."""
        h = g.matmul_linear(x, f"{p}.{name}", D_MODEL, D_MODEL, ATTN_SPARSITY[name])
        h = g.op("Reshape", [h, split], f"{p}.{name}.split_heads")
        return g.op("Transpose", [h], f"{p}.{name}.transpose", perm=perm)

    q, k_t, v = heads("q", [0, 2, 1, 3]), heads("k", [0, 2, 3, 1]), heads("v", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k_t], f"{p}.scores")
    scores = g.op("Mul", [scores, g.const(f"{p}.scale", np.float32(1 / math.sqrt(HEAD)))], f"{p}.scale_scores")
    probs = g.op("Softmax", [scores], f"{p}.softmax", axis=-1)
    h = g.op("MatMul", [probs, v], f"{p}.context")
    h = g.op("Transpose", [h], f"{p}.context.transpose", perm=[0, 2, 1, 3])
    h = g.op("Reshape", [h, merge], f"{p}.merge_heads")
    return g.matmul_linear(h, f"{p}.o", D_MODEL, D_MODEL, ATTN_SPARSITY["o"])


def _gelu(g: GraphBuilder, x: str, p: str) -> str:
    """Exact GELU, x * 0.5 * (1 + erf(x / sqrt(2)))."""
    h = g.op("Div", [x, g.const(f"{p}.sqrt2", np.float32(math.sqrt(2)))], f"{p}.div")
    h = g.op("Erf", [h], f"{p}.erf")
    h = g.op("Add", [h, g.const(f"{p}.one", np.float32(1))], f"{p}.add_one")
    h = g.op("Mul", [x, h], f"{p}.mul")
    return g.op("Mul", [h, g.const(f"{p}.half", np.float32(0.5))], f"{p}.mul_half")


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    h = _attention(g, _layer_norm(g, "x", "blocks.ln1"), "blocks.attn")
    x = g.op("Add", ["x", h], "blocks.attn.residual")
    h = g.matmul_linear(_layer_norm(g, x, "blocks.ln2"), "blocks.ffn.fc1", D_MODEL, FFN, sparsity=0.8)
    h = g.matmul_linear(_gelu(g, h, "blocks.ffn.gelu"), "blocks.ffn.fc2", FFN, D_MODEL, sparsity=0.6)
    g.op("Add", [x, h], "blocks.ffn.residual", output="y")
    shape = ["batch", SEQ, D_MODEL]
    return g.model("transformer", __doc__, {"x": shape}, {"y": shape})

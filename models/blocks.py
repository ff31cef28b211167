"""Transformer building blocks shared by the encoder-shaped models, in the form exporters emit them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .common import GraphBuilder


@dataclass(frozen=True)
class Attention:
    """Multi-head self-attention's shape and its projections' names (q, k, v, output) and sparsities."""

    d_model: int
    heads: int
    seq: int = -1  # in the head reshapes: -1 infers it (any sequence length), a size fixes it
    names: tuple[str, str, str, str] = ("query", "key", "value", "output")
    sparsity: dict = field(default_factory=dict)  # projection name -> magnitude sparsity (default 0)


def layer_norm(g: GraphBuilder, x: str, prefix: str, size: int, epsilon: float) -> str:
    inputs = [x, g.gain(f"{prefix}.weight", size), g.bias(f"{prefix}.bias", size)]
    return g.op("LayerNormalization", inputs, prefix, axis=-1, epsilon=epsilon)


def attention(g: GraphBuilder, x: str, p: str, a: Attention) -> str:
    """[batch, seq, d_model] -> same shape; every projection MatMul + Add with W [K, N]."""
    head = a.d_model // a.heads
    split = g.const(f"{p}.split_heads_shape", np.array([0, a.seq, a.heads, head], np.int64))
    merge = g.const(f"{p}.merge_heads_shape", np.array([0, a.seq, a.d_model], np.int64))

    def project(name: str, h: str) -> str:
        return g.matmul_linear(h, f"{p}.{name}", a.d_model, a.d_model, a.sparsity.get(name, 0.0))

    def heads(name: str, perm: list[int]) -> str:
        """Project, split into heads and transpose: perm [0,2,1,3] -> [b,H,S,D], [0,2,3,1] -> [b,H,D,S]."""
        h = g.op("Reshape", [project(name, x), split], f"{p}.{name}.split_heads")
        return g.op("Transpose", [h], f"{p}.{name}.transpose", perm=perm)

    q_name, k_name, v_name, out_name = a.names
    q, k_t, v = heads(q_name, [0, 2, 1, 3]), heads(k_name, [0, 2, 3, 1]), heads(v_name, [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k_t], f"{p}.scores")
    scores = g.op("Mul", [scores, g.const(f"{p}.scale", np.float32(1 / math.sqrt(head)))], f"{p}.scale_scores")
    probs = g.op("Softmax", [scores], f"{p}.softmax", axis=-1)
    h = g.op("MatMul", [probs, v], f"{p}.context")
    h = g.op("Transpose", [h], f"{p}.context.transpose", perm=[0, 2, 1, 3])
    return project(out_name, g.op("Reshape", [h, merge], f"{p}.merge_heads"))


def gelu(g: GraphBuilder, x: str, p: str) -> str:
    """Exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))), from Div/Erf/Add/Mul (opset 17 has no Gelu op)."""
    h = g.op("Div", [x, g.const(f"{p}.sqrt2", np.float32(math.sqrt(2)))], f"{p}.div")
    h = g.op("Erf", [h], f"{p}.erf")
    h = g.op("Add", [h, g.const(f"{p}.one", np.float32(1))], f"{p}.add_one")
    h = g.op("Mul", [x, h], f"{p}.mul")
    return g.op("Mul", [h, g.const(f"{p}.half", np.float32(0.5))], f"{p}.mul_half")

"""A LLaMA-shaped decoder stack as ONNX with its weights in an external data file (models past 2 GB).

    python benchmarks/llama_model.py --layers 3 -o out/llama/llama.onnx      # 3 x 4096/11008: 2.4 GB fp32
    python benchmarks/llama_model.py --layers 1 --hidden 64 --ffn 172 --heads 4 -o /tmp/tiny/llama.onnx

Input ``x`` [batch, seq, hidden] (hidden states: no embedding table), output ``y`` of the same shape. Each
layer: RMSNorm, q/k/v/o projections (hidden x hidden) with softmax attention over the sequence (no mask, no
rotary embedding: the shapes and the MatMuls are what matter here), RMSNorm, a SwiGLU feed-forward (gate and
up hidden x ffn, down ffn x hidden), residuals; a final RMSNorm. Weights are random and heavy-tailed
(Student's t, 4 degrees of freedom, scaled to std 1/sqrt(K)), written one at a time straight to
``<name>.data`` so generating a model never holds more than one weight in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bie_compiler.external_data import DataFile

EPSILON = 1e-5
ROWS_PER_CHUNK = 256  # rows of a weight drawn at once (float64 draws of a whole 4096 x 11008 would be 360 MB)


class Builder:
    """Nodes and initializers of the graph being built; weights go to the data file."""

    def __init__(self, data: DataFile, seed: int):
        self.data, self.rng = data, np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, k: int, n: int) -> str:
        """A [K, N] MatMul weight, heavy-tailed, written to the data file."""
        w = np.empty((k, n), np.float32)
        scale = 1.0 / np.sqrt(k) / np.sqrt(2.0)  # t(4) has variance 2
        for start in range(0, k, ROWS_PER_CHUNK):
            rows = w[start:start + ROWS_PER_CHUNK]
            rows[:] = self.rng.standard_t(4, rows.shape) * scale
        self.initializers.append(self.data.store(name, w))
        return name

    def linear(self, x: str, name: str, k: int, n: int) -> str:
        return self.op("MatMul", [x, self.weight(f"{name}.weight", k, n)], name)

    def rms_norm(self, x: str, name: str, hidden: int) -> str:
        square = self.op("Mul", [x, x], f"{name}.square")
        mean = self.op("ReduceMean", [square], f"{name}.mean", axes=[-1], keepdims=1)
        eps = self.constant(f"{name}.epsilon", np.array(EPSILON, np.float32))
        root = self.op("Sqrt", [self.op("Add", [mean, eps], f"{name}.add_eps")], f"{name}.root")
        scaled = self.op("Div", [x, root], f"{name}.scaled")
        gamma = self.constant(f"{name}.weight", (1 + 0.1 * self.rng.standard_normal(hidden)).astype(np.float32))
        return self.op("Mul", [scaled, gamma], name)


def attention(g: Builder, x: str, name: str, hidden: int, heads: int) -> str:
    head = hidden // heads
    split = g.constant(f"{name}.split_shape", np.array([0, 0, heads, head], np.int64))
    merge = g.constant(f"{name}.merge_shape", np.array([0, 0, hidden], np.int64))

    def heads_of(proj: str, perm: list[int]) -> str:
        y = g.linear(x, f"{name}.{proj}_proj", hidden, hidden)
        return g.op("Transpose", [g.op("Reshape", [y, split], f"{y}.split")], f"{y}.heads", perm=perm)

    q, k, v = heads_of("q", [0, 2, 1, 3]), heads_of("k", [0, 2, 3, 1]), heads_of("v", [0, 2, 1, 3])
    scale = g.constant(f"{name}.scale", np.array(1.0 / np.sqrt(head), np.float32))
    scores = g.op("Mul", [g.op("MatMul", [q, k], f"{name}.qk"), scale], f"{name}.scores")
    probs = g.op("Softmax", [scores], f"{name}.probs", axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v], f"{name}.context")], f"{name}.context_t",
                   perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, merge], f"{name}.merged")
    return g.linear(merged, f"{name}.o_proj", hidden, hidden)


def feed_forward(g: Builder, x: str, name: str, hidden: int, ffn: int) -> str:
    gate = g.linear(x, f"{name}.gate_proj", hidden, ffn)
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{name}.sigmoid")], f"{name}.silu")
    up = g.linear(x, f"{name}.up_proj", hidden, ffn)
    return g.linear(g.op("Mul", [silu, up], f"{name}.gated"), f"{name}.down_proj", ffn, hidden)


def build(path: Path, layers: int, hidden: int, ffn: int, heads: int, seed: int = 0) -> Path:
    """Write the model at ``path`` and its weights at ``path`` with suffix .data; returns ``path``."""
    if hidden % heads:
        raise SystemExit(f"--hidden {hidden} is not a multiple of --heads {heads}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_suffix(".data")
    with DataFile(data_path, location=data_path.name) as data:
        g = Builder(data, seed)
        x = "x"
        for i in range(layers):
            p = f"model.layers.{i}"
            h = attention(g, g.rms_norm(x, f"{p}.input_layernorm", hidden), f"{p}.self_attn", hidden, heads)
            x = g.op("Add", [x, h], f"{p}.attn_residual")
            h = feed_forward(g, g.rms_norm(x, f"{p}.post_attention_layernorm", hidden), f"{p}.mlp", hidden, ffn)
            x = g.op("Add", [x, h], f"{p}.mlp_residual")
        g.rms_norm(x, "model.norm", hidden)
        g.nodes[-1].output[0] = "y"
    shape = ["batch", "seq", hidden]
    graph = helper.make_graph(g.nodes, "llama", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bie-benchmarks")
    onnx.save_model(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("out/llama/llama.onnx"))
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build(args.output, args.layers, args.hidden, args.ffn, args.heads, args.seed)
    weights = args.layers * (4 * args.hidden * args.hidden + 3 * args.hidden * args.ffn)
    print(f"{path}: {args.layers} layers, {weights / 1e6:.0f}M matmul weights, "
          f"{path.with_suffix('.data').stat().st_size / 2**30:.2f} GiB of data")


if __name__ == "__main__":
    main()

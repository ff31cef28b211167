"""Shared pieces of the model builders: trained-like weights and a small graph builder.

Real trained weights are heavy-tailed, differ in scale from one output channel to the
next, and are often magnitude-pruned; the compressor's codecs are tuned to exactly these
traits, so the test models reproduce them instead of using plain Gaussian noise.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
STUDENT_T_DF = 4.5  # heavy tails, yet finite variance
CHANNEL_SCALE_SIGMA = 0.4  # log-normal spread of the per-output-channel scale
BIAS_STD = 0.02
GAIN_STD = 0.1  # spread of normalisation gains around 1


def layer_rng(seed: int, name: str) -> np.random.Generator:
    """A generator for one tensor, keyed by the model seed and the tensor's name, so a
    tensor's values do not depend on the order in which the layers are built."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def magnitude_prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the `round(sparsity * w.size)` smallest-magnitude entries of `w` (one
    threshold for the whole tensor, as global magnitude pruning does)."""
    flat = w.ravel().copy()
    flat[np.argsort(np.abs(flat), kind="stable")[: round(sparsity * flat.size)]] = 0.0
    return flat.reshape(w.shape)


def trained_weight(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, out_axis: int, sparsity: float = 0.0
) -> np.ndarray:
    """Student-t values of standard deviation ~1/sqrt(fan_in), times a log-normal scale per
    output channel (along `out_axis`), then magnitude-pruned to `sparsity`."""
    unit_std = np.sqrt((STUDENT_T_DF - 2) / STUDENT_T_DF)
    w = rng.standard_t(STUDENT_T_DF, size=shape) * unit_std / np.sqrt(fan_in)
    channel_shape = [1] * len(shape)
    channel_shape[out_axis] = shape[out_axis]
    w *= rng.lognormal(0.0, CHANNEL_SCALE_SIGMA, size=channel_shape)
    return magnitude_prune(w, sparsity).astype(np.float32)


class GraphBuilder:
    """Collects nodes and initializers; every node is named and its single output tensor
    carries the node's name unless `output` is given."""

    def __init__(self, seed: int):
        self.seed = seed
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        """Add a float32 (or int64 if `value` is an integer array) initializer."""
        array = np.asarray(value)
        array = array if array.dtype == np.int64 else array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def stored(self, name: str, array: np.ndarray) -> str:
        """Add an initializer of `array`'s own dtype (an integer weight, a zero point)."""
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int, out_axis: int, sparsity: float = 0.0) -> str:
        """A trained-like weight (see `trained_weight`)."""
        return self.const(name, trained_weight(layer_rng(self.seed, name), shape, fan_in, out_axis, sparsity))

    def bias(self, name: str, size: int) -> str:
        """A small bias."""
        return self.const(name, layer_rng(self.seed, name).standard_normal(size) * BIAS_STD)

    def gain(self, name: str, size: int) -> str:
        """A normalisation gain: values near 1."""
        return self.const(name, 1.0 + layer_rng(self.seed, name).standard_normal(size) * GAIN_STD)

    def op(self, op_type: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        output = output or name
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def matmul_linear(
        self, x: str, prefix: str, k: int, n: int, sparsity: float = 0.0, output: str | None = None
    ) -> str:
        """`x @ W + b` as MatMul + Add with `W` [K, N] (the form exporters emit for 3-D inputs)."""
        w = self.weight(f"{prefix}.weight", (k, n), fan_in=k, out_axis=1, sparsity=sparsity)
        h = self.op("MatMul", [x, w], f"{prefix}.matmul")
        return self.op("Add", [h, self.bias(f"{prefix}.bias", n)], f"{prefix}.add", output)

    def gemm_linear(
        self, x: str, prefix: str, k: int, n: int, trans_b: bool, sparsity: float = 0.0, output: str | None = None
    ) -> str:
        """`x @ W + b` as one Gemm, `W` stored [N, K] when `trans_b` (PyTorch's layout), else [K, N]."""
        shape, out_axis = ((n, k), 0) if trans_b else ((k, n), 1)
        w = self.weight(f"{prefix}.weight", shape, fan_in=k, out_axis=out_axis, sparsity=sparsity)
        return self.op("Gemm", [x, w, self.bias(f"{prefix}.bias", n)], f"{prefix}.gemm", output, transB=int(trans_b))

    def model(self, name: str, doc: str, inputs: dict[str, list], outputs: dict[str, list],
              input_types: dict[str, int] | None = None) -> onnx.ModelProto:
        """An opset-17 / IR-8 model; `inputs`/`outputs` map tensor names to shapes (strings are symbolic
        dimensions); tensors are float32 unless `input_types` gives an input another TensorProto type."""
        types = input_types or {}

        def value_infos(shapes: dict[str, list]) -> list[onnx.ValueInfoProto]:
            return [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), s) for n, s in shapes.items()]

        graph = helper.make_graph(
            self.nodes, name, value_infos(inputs), value_infos(outputs), self.initializers, doc_string=doc
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bie-compiler")
        model.ir_version = IR_VERSION
        model.doc_string = doc
        helper.set_model_props(model, {"seed": str(self.seed)})
        return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> bool:
    """Write `model` to `path` atomically (a `.tmp` sibling, then `os.replace`), so a reader
    never sees a half-written file. A file already holding the same bytes is left alone,
    keeping its mtime for make; returns whether the file was written."""
    data = model.SerializeToString()
    path = os.fspath(path)
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True

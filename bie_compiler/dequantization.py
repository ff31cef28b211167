"""Weights a model stores as integers or half floats, widened in its graph, turned into the float weights they define.

Quantized exports keep a weight as an int8 initializer and compute the float weight in the graph:
``DequantizeLinear(q, scale, zero_point)``, or ``Cast(q) -> Sub(zero_point) -> Mul(scale)``; half-precision
exports keep it as float16 or bfloat16 and ``Cast`` it to float32. TVM folds
such a chain into a float constant that no initializer names, so the weight could be neither named,
skipped, reported nor checked. Here each chain becomes the float initializer it computes, named by
the chain's output, and the initializer's ``doc_string`` records where it came from (the integer
or half-float initializer, its bytes and the ops), so the report can compare with what the source really stores.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_folding import evaluate, with_nodes

_INTEGER = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
            onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
_HALF = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)  # stored at 16 bits, cast to float32 to compute

# ops a dequantization chain is made of (with constant operands only)
_CHAIN_OPS = {"DequantizeLinear", "Cast", "Sub", "Mul", "Add", "Div", "Reshape", "Transpose", "Identity"}


def provenance(initializer: onnx.TensorProto) -> dict | None:
    """What :func:`fold_dequantized_weights` recorded of a float weight's integer source, or None."""
    if not initializer.doc_string.startswith("{"):
        return None
    try:
        return json.loads(initializer.doc_string).get("dequantized_from")
    except json.JSONDecodeError:
        return None


def fold_dequantized_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every chain dequantizing an integer initializer replaced by its float result."""
    constants = {i.name: i for i in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}  # the initializers read so far, each decoded once

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(constants[name])
        return arrays[name]

    graph_outputs = {o.name for o in model.graph.output}
    values: dict[str, np.ndarray] = {}
    sources: dict[str, dict] = {}  # computed value -> its integer source and the ops so far
    folded_nodes = set()
    for index, node in enumerate(model.graph.node):
        inputs = [n for n in node.input if n]
        if (node.op_type not in _CHAIN_OPS or node.domain not in ("", "ai.onnx") or len(node.output) != 1
                or node.output[0] in graph_outputs):
            continue
        if not inputs or not all(n in constants or n in values for n in inputs):
            continue
        origin = next((sources[n] for n in inputs if n in sources), None)
        if origin is None:
            q = constants[inputs[0]]
            if q.data_type not in _INTEGER and not (q.data_type in _HALF and node.op_type == "Cast"):
                continue  # not a chain that starts at an integer weight, or a half-precision one cast
            origin = {"initializer": q.name, "dtype": array(q.name).dtype.name, "bytes": int(array(q.name).nbytes),
                      "ops": []}
        result = evaluate(node, {n: values[n] if n in values else array(n) for n in inputs})
        if result is None:
            continue
        values[node.output[0]] = result[0]
        sources[node.output[0]] = {**origin, "ops": [*origin["ops"], node.op_type]}
        folded_nodes.add(index)
    if not folded_nodes:
        return model
    kept = [n for i, n in enumerate(model.graph.node) if i not in folded_nodes]
    read = {name for n in kept for name in n.input} | graph_outputs
    weights = []
    for name, value in values.items():
        if name in read and np.issubdtype(value.dtype, np.floating):
            weights.append(numpy_helper.from_array(value, name))
            weights[-1].doc_string = json.dumps({"dequantized_from": sources[name]})
    out = with_nodes(model, kept, weights)
    consumed = {name for i in folded_nodes for name in model.graph.node[i].input} - read
    for init in [i for i in out.graph.initializer if i.name in consumed]:  # the integer weights, their scales
        out.graph.initializer.remove(init)
    for value in [v for v in out.graph.input if v.name in consumed]:
        out.graph.input.remove(value)
    return out

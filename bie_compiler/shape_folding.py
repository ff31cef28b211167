"""Shape computations folded into constants before TVM imports a model.

Exporters compute reshape targets at run time: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``
(dynamo, PaddleOCR). TVM's importer needs a ``Reshape`` target it knows at import, so it fails on
these chains even when every size is known. Where ONNX shape inference knows a ``Shape``'s value
(static input sizes, from the model or ``--input-shape``/``--dim``), it becomes a constant, and so
does every small integer computation on constants after it, evaluated by ONNX's reference runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_folding import evaluate, with_nodes

# The integer ops shape arithmetic uses; anything else (and anything large) is left to the importer.
_FOLDED = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Add", "Sub", "Mul", "Div", "Reshape",
           "Identity", "Range", "Equal", "Where", "ReduceProd", "Max", "Min", "Neg", "Abs", "ConstantOfShape",
           "Expand", "Floor", "Ceil", "Mod", "Not", "Less", "Greater"}
_MAX_ELEMENTS = 64  # shape vectors, not data


def is_shape_vector(tensor: onnx.TensorProto) -> bool:
    """A small integer initializer: a shape, axes, pads or an index, not data."""
    return (tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
            and int(np.prod(tensor.dims)) <= _MAX_ELEMENTS)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def _shape_value(node: onnx.NodeProto, shape: list[int]) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[slice(start, end)], np.int64)


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every ``Shape`` of a known size, and the small integer arithmetic on it, as
    initializers (named by the values they replace); unchanged when there is nothing to fold."""
    shapes = _static_shapes(model)
    known = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if is_shape_vector(i)}
    outputs = {o.name for o in model.graph.output}
    folded: dict[str, np.ndarray] = {}
    kept = []
    for node in model.graph.node:
        value = None
        if outputs.intersection(node.output):
            pass  # a graph output stays computed
        elif node.op_type == "Shape" and node.input[0] in shapes:
            value = [_shape_value(node, shapes[node.input[0]])]
        elif (node.op_type in _FOLDED and node.domain in ("", "ai.onnx") and node.input
              and all(name in known for name in node.input if name)):
            value = evaluate(node, {name: known[name] for name in node.input if name})
        if value is None or any(v.size > _MAX_ELEMENTS for v in value):
            kept.append(node)
            continue
        for name, v in zip(node.output, value):
            known[name] = folded[name] = v
    if not folded:
        return model
    return with_nodes(model, kept, (numpy_helper.from_array(v, name) for name, v in folded.items()))

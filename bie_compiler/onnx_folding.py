"""What the frontend's folds share: one ONNX node evaluated on constants, and the graph rebuilt around it.

Used by :mod:`.shape_folding` (shape arithmetic) and :mod:`.dequantization` (integer weights made float).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx


def evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The outputs of ``node`` on the constant ``feeds`` (by input name), by ONNX's reference runtime; None
    where it cannot take the node (an attribute form or type it lacks): the node is then left to TVM."""
    from onnx.reference import ReferenceEvaluator

    try:
        return [np.asarray(v) for v in ReferenceEvaluator(node).run(None, feeds)]
    except Exception:  # the reference runtime's errors have no common type
        return None


def with_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto],
               initializers: Iterable[onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph has ``nodes`` and, besides its own initializers, ``initializers``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(initializers)
    return out

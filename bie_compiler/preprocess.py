"""``compile --preprocess``: onnxruntime's basic graph optimizations run on a model before TVM imports it.

Exports compute things TVM's importer cannot take: weights derived in the graph by ops it lacks (weight
normalisation's ``LpNormalization``, window functions), constant subgraphs, ``BatchNormalization`` after a
``Conv``. onnxruntime's basic level folds every computation on constants into an initializer and fuses a
BatchNorm (and a constant Add or Mul) into the Conv before it, without changing what the model computes;
a weight so folded becomes an initializer the codecs encode. The optimized model is written to a temporary
file (the user's file is never touched); ``check`` applies the same optimizations to rebuild what was compiled.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

from . import external_data
from .errors import ModelError, OptionError

LEVEL = "onnxruntime-basic"  # recorded in the manifest; the only level: the others add onnxruntime's own ops


def optimized(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` as onnxruntime's basic optimizations leave it (in memory, every tensor inline)."""
    import onnxruntime as ort

    if external_data.data_files(onnx.load(str(path), load_external_data=False)):
        raise OptionError(f"{path}: --preprocess takes models whose tensors are inline, not in data files")
    with tempfile.TemporaryDirectory(prefix="bie-preprocess-") as tmp:
        target = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(target)
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors have no common type
            raise ModelError(f"{path}: --preprocess: onnxruntime cannot load the model: {str(e).strip()[:300]}") from None
        return onnx.load(str(target))


def changes(before: onnx.ModelProto, after: onnx.ModelProto) -> str | None:
    """What the optimizations did, in one line (the ops removed and added, the initializers); None if nothing."""
    ops = Counter(n.op_type for n in after.graph.node)
    ops.subtract(Counter(n.op_type for n in before.graph.node))
    moved = ", ".join(f"{op} {count:+d}" for op, count in sorted(ops.items()) if count)
    if not moved:
        return None
    return (f"--preprocess: onnxruntime's basic optimizations folded constant computations and fused "
            f"BatchNorm/Add/Mul into Convs: {len(before.graph.node)} -> {len(after.graph.node)} nodes ({moved}), "
            f"{len(before.graph.initializer)} -> {len(after.graph.initializer)} initializers")


def preprocess(path: str | Path) -> tuple[onnx.ModelProto, str | None]:
    """The optimized model and :func:`changes`' line."""
    after = optimized(path)
    return after, changes(onnx.load(str(path)), after)

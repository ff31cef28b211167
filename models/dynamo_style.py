"""`dynamo_style`: a small MLP as torch's dynamo exporter writes it: weights named `val_N` (not after their
layers), and a flatten computed at run time (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape`), which
TVM's importer can only take once the sizes are known.

`x` [batch, 4, 64] gives `y` [batch, 10].
"""

import numpy as np
import onnx

from .common import GraphBuilder


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    shape = g.op("Shape", ["x"], "shape")
    batch = g.op("Gather", [shape, g.const("val_0", np.array(0, np.int64))], "batch", axis=0)
    batch = g.op("Unsqueeze", [batch, g.const("val_1", np.array([0], np.int64))], "batch_1d")
    target = g.op("Concat", [batch, g.const("val_2", np.array([-1], np.int64))], "flat_shape", axis=0)
    h = g.op("Reshape", ["x", target], "flatten")
    h = g.op("MatMul", [h, g.weight("val_3", (256, 128), 256, 1, sparsity=0.5)], "node_MatMul_4")
    h = g.op("Add", [h, g.bias("val_5", 128)], "node_Add_6")
    h = g.op("Relu", [h], "node_Relu_7")
    h = g.op("MatMul", [h, g.weight("val_8", (128, 10), 128, 1)], "node_MatMul_9")
    g.op("Add", [h, g.bias("val_10", 10)], "node_Add_11", output="y")
    return g.model("dynamo_style", __doc__, {"x": ["batch", 4, 64]}, {"y": ["batch", 10]})

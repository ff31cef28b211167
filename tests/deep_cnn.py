"""A deep plain CNN (``depth`` 3x3 convs with ReLU, then a Gemm): deep enough that INT8 rounding flips between two
correct implementations reach the output, for the bitvert parity tests."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def deep_cnn(path, depth: int = 16, channels: int = 16, size: int = 12, seed: int = 0, silu: bool = False):
    """``silu``: x * sigmoid(x) after each conv (EfficientNet's activation) instead of ReLU."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "image"
    for i in range(depth):
        fan_in = (3 if i == 0 else channels) * 9
        inits += [numpy_helper.from_array((rng.standard_normal((channels, 3 if i == 0 else channels, 3, 3))
                                           * np.sqrt(2 / fan_in)).astype(np.float32), f"conv{i}.weight"),
                  numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  *([helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"]), helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"r{i}"])]
                    if silu else [helper.make_node("Relu", [f"c{i}"], [f"r{i}"])])]
        x = f"r{i}"
    inits.append(numpy_helper.from_array((rng.standard_normal((10, channels * size * size)) * 0.05).astype(np.float32),
                                         "fc.weight"))
    nodes += [helper.make_node("Flatten", [x], ["flat"]), helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "deep_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path

"""benchmarks/models_speed.py: what the bytes allow end to end, from onnxruntime's share in the weight matmuls."""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import models_speed  # noqa: E402


def _model(path: Path, with_rest: bool) -> Path:
    """y = x @ W (a weight matmul), then, ``with_rest``, a chain of tanh and x-times-itself matmuls (no weight)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"], name="weighted")]
    last = "h0"
    if with_rest:
        for i in range(4):
            nodes += [helper.make_node("Tanh", [last], [f"t{i}"], name=f"tanh{i}"),
                      helper.make_node("MatMul", [f"t{i}", f"t{i}"], [f"h{i + 1}"], name=f"square{i}")]
            last = f"h{i + 1}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_share_counts_only_the_matmuls_by_a_constant_weight(tmp_path):
    x = {"x": np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)}
    alone = models_speed.weight_matmul_share(_model(tmp_path / "alone.onnx", False), x, threads=1, calls=5)
    mixed = models_speed.weight_matmul_share(_model(tmp_path / "mixed.onnx", True), x, threads=1, calls=5)
    assert alone > 0.8  # the weight matmul against an Identity
    assert 0.05 < mixed < 0.5  # one weight matmul against four of the same size without a weight


def test_bytes_allow_is_the_ratio_when_all_time_is_in_the_matmuls_and_one_when_none():
    assert models_speed.bytes_allow(1.0, 6.0) == 6.0
    assert models_speed.bytes_allow(0.0, 6.0) == 1.0
    assert models_speed.bytes_allow(0.5, 4.0) == 1.6  # half the time 4x faster: 1 / (0.5 + 0.125)

"""Weights are known by their ONNX initializer names, never by their contents."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "bie_compiler", *map(str, args)], capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.slow
def test_identical_initializers_stay_distinct_layers(tmp_path):
    """Two MatMuls whose weights hold the same bytes: --skip on one leaves the other encoded, and check passes."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "first.weight"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "second.weight"], ["y"])],
        "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "first.weight"), numpy_helper.from_array(w.copy(), "second.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tied.onnx")
    out = tmp_path / "out"
    result = cli("compile", tmp_path / "tied.onnx", "-q", "-o", out, "--skip", "second.weight", "--bits", "3")
    assert result.returncode == 0, result.stderr
    layers = {layer["name"]: layer for layer in json.loads(cli("inspect", out, "--json").stdout)["layers"]}
    assert layers["first.weight"]["codec"] == "bie-bitplane"
    assert layers["second.weight"]["codec"] == "dense" and layers["second.weight"]["fallback_reason"] == "in the skip list"
    check = cli("check", out, "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["passed"], check.stdout + check.stderr

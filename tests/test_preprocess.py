"""``compile --preprocess``: a model TVM cannot import as exported (a weight-normalised matmul weight computed by
LpNormalization, a BatchNorm after a Conv) compiles after onnxruntime's basic optimizations, its folded weight
encoded, the user's file untouched, and the artefact computes what the original model does."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bie_compiler
from bie_compiler.frontend import file_sha256
from bie_compiler.parity import run_onnxruntime
from bie_compiler.preprocess import changes, optimized
from test_cli import cli


def weight_normalised_cnn(path):
    """Conv -> BatchNorm -> Relu -> Flatten -> MatMul whose weight is g * LpNormalization(v) (weight norm)."""
    rng = np.random.default_rng(0)
    consts = {
        "conv_w": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
        "bn_scale": rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn_bias": rng.standard_normal(16).astype(np.float32),
        "bn_mean": rng.standard_normal(16).astype(np.float32) * 0.1, "bn_var": rng.uniform(0.5, 2, 16).astype(np.float32),
        "v": rng.standard_normal((1024, 10)).astype(np.float32), "g": rng.uniform(1, 3, (1, 10)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("LpNormalization", ["v"], ["v_unit"], axis=0, p=2),
        helper.make_node("Mul", ["v_unit", "g"], ["fc_w"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "weight_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return weight_normalised_cnn(tmp_path_factory.mktemp("preprocess") / "weight_norm.onnx")


def test_changes_name_the_ops_folded_and_nothing_when_nothing_changed(model):
    line = changes(onnx.load(str(model)), optimized(model))
    assert "7 -> 4 nodes" in line and "BatchNormalization -1" in line and "LpNormalization -1" in line and "Mul -1" in line
    assert changes(onnx.load(str(model)), onnx.load(str(model))) is None


@pytest.mark.slow  # three compiles
def test_preprocess_compiles_what_tvm_cannot_import_and_keeps_what_the_model_computes(model, tmp_path):
    sha = file_sha256(model)
    refused = cli("compile", model, "-o", tmp_path / "plain", "-q")
    assert refused.returncode == 2 and "(LpNormalization); they compute on constants only: compile --preprocess" \
        in refused.stderr

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = run_onnxruntime(onnx.load(str(model)), {"x": x})[0]
    dense = cli("compile", model, "-o", tmp_path / "dense", "--preprocess", "--skip", "*", "--min-weights", "256")
    assert dense.returncode == 0, dense.stderr
    assert "--preprocess: onnxruntime's basic optimizations" in dense.stderr and "BatchNormalization -1" in dense.stderr
    got = bie_compiler.load(tmp_path / "dense")({"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    encoded = cli("compile", model, "-o", tmp_path / "int8", "--preprocess", "--codec", "int8", "--min-weights", "256", "-q")
    assert encoded.returncode == 0, encoded.stderr
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["preprocess"] == "onnxruntime-basic"
    assert sorted(layer["op"] for layer in manifest["layers"]) == ["conv2d", "matmul"]  # the folded weights, encoded
    checked = cli("check", tmp_path / "int8", "--json", "--batch", "2")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    figures = json.loads(checked.stdout)
    assert figures["passed"] and figures["decoded_max_rel_err"] < 1e-4 and figures["cosine"] > 0.999
    assert file_sha256(model) == sha  # the user's file untouched

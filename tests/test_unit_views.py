"""Transposes that only move unit axes are views in the unit-dimensions copy of ``main`` (codegen/unit_views.py)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

import bie_compiler
from bie_compiler.codegen.unit_dims import ANY_DIMS, UNIT_DIMS

HEADS, WIDTH = 4, 8
K = HEADS * WIDTH


def _heads_model() -> onnx.ModelProto:
    """x [batch, seq, K]: y = x split into heads, transposed to [batch, heads, seq, width]; z = x @ W."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor("w", TensorProto.FLOAT, [K, K], rng.standard_normal((K, K)).astype(np.float32).ravel()),
               helper.make_tensor("split", TensorProto.INT64, [4], [0, 0, HEADS, WIDTH])]
    nodes = [helper.make_node("Reshape", ["x", "split"], ["xs"]),
             helper.make_node("Transpose", ["xs"], ["y"], perm=[0, 2, 1, 3]), helper.make_node("MatMul", ["x", "w"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HEADS, "seq", WIDTH]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "seq", K])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unit_views")
    path = folder / "m.onnx"
    onnx.save(_heads_model(), path)
    return path, bie_compiler.compile_model(path, folder / "dense", skip=("*",), progress=None)


def _calls(artefact, name: str) -> list:
    text = relax.VMExecutable(tvm.runtime.load_module(str(artefact / "model.so"))).as_text()
    body = text.split(f"@{name}:\n", 1)[1].split("\n@", 1)[0]
    return [line.split()[1] for line in body.splitlines() if line.strip().startswith("call")]


@pytest.mark.slow
def test_unit_copy_has_no_transpose_kernels(heads):
    assert not [c for c in _calls(heads[1], UNIT_DIMS) if "transpose" in c]
    assert [c for c in _calls(heads[1], ANY_DIMS) if "transpose" in c]  # any sequence length: real transposes


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, K), (8, 1, K), (1, 8, K)])
def test_views_compute_what_onnxruntime_does(heads, shape):
    path, artefact = heads
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = bie_compiler.load(artefact)({"x": x})
    np.testing.assert_array_equal(got["y"], want[0])  # moved, not computed
    np.testing.assert_allclose(got["z"], want[1], rtol=1e-5, atol=1e-5 * np.abs(want[1]).max())

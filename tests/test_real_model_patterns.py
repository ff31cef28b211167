"""Op patterns of the zoo's real models that once stopped the build, each on a tiny graph: compiled, run and
compared with onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import bie_compiler

RNG = np.random.default_rng(0)


def save(tmp_path, nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    # opset 18, the dynamo exporter's: ReduceL2 takes its axes as an input
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def compiled_matches_onnxruntime(tmp_path, path, inputs, tolerance):
    out = bie_compiler.compile_model(path, tmp_path / "art", "bie-bitplane", skip=("*",), progress=None)
    got = bie_compiler.load(out)(inputs)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)
    for (name, actual), expected in zip(got.items(), want):
        assert actual.shape == expected.shape, name
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max())


def test_normalising_by_an_expanded_norm(tmp_path):
    """all-MiniLM-L6-v2's last op (torch's F.normalize, dynamo export): the norm expanded to a constant shape.

    The importer took the Expand's shape initializer as a run-time value (``tensor_to_shape`` + ``match_cast``);
    FuseOps then fused the broadcast with the norm ahead of the ``match_cast`` and the VM build failed ("PrimExpr
    4 * x_0 * x_1 ... has not been computed")."""
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("ReduceL2", ["x", "axes"], ["norm"], keepdims=1),
             helper.make_node("Clip", ["norm", "eps"], ["clipped"]),
             helper.make_node("Expand", ["clipped", "shape"], ["expanded"]),
             helper.make_node("Div", ["x", "expanded"], ["y"])]
    path = save(tmp_path, nodes, [vi("x", TensorProto.FLOAT, [3, 24])], [vi("y", TensorProto.FLOAT, [3, 24])],
                {"axes": np.array([-1], np.int64), "eps": np.array(1e-12, np.float32),
                 "shape": np.array([3, 24], np.int64)})
    compiled_matches_onnxruntime(tmp_path, path, {"x": RNG.standard_normal((3, 24)).astype(np.float32)}, 1e-5)


@pytest.mark.parametrize("channels", [32, 48])
def test_squeeze_excitation(tmp_path, channels):
    """PP-OCRv4 det's squeeze-excitation block: 1x1 convs on a globally pooled one-pixel plane, the second one's
    hard sigmoid scaling the whole feature map.

    The conv2d rule padded the one-pixel plane to a vector (its index is the constant 0: the padding only
    repeated the reduction) and folded the scale, an epilogue over the larger feature map, into the conv's tile."""
    vi = helper.make_tensor_value_info
    squeezed = channels // 4
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Conv", ["pooled", "w1", "b1"], ["c1"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("HardSigmoid", ["c2"], ["scale"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["x", "scale"], ["y"])]
    shape = [1, channels, 4, 12]
    path = save(tmp_path, nodes, [vi("x", TensorProto.FLOAT, shape)], [vi("y", TensorProto.FLOAT, shape)],
                {"w1": RNG.standard_normal((squeezed, channels, 1, 1)).astype(np.float32) / channels ** 0.5,
                 "b1": RNG.standard_normal(squeezed).astype(np.float32),
                 "w2": RNG.standard_normal((channels, squeezed, 1, 1)).astype(np.float32) / squeezed ** 0.5,
                 "b2": RNG.standard_normal(channels).astype(np.float32)})
    compiled_matches_onnxruntime(tmp_path, path, {"x": RNG.standard_normal(shape).astype(np.float32)}, 1e-5)

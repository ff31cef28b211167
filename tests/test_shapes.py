"""Input shapes: --input-shape / --dim / --batch parsed, resolved against a model's inputs, fixed at compile time."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import bie_compiler
from bie_compiler.errors import BieError, ModelError, OptionError
from bie_compiler.shapes import (
    ShapeRequest, batch_dim, concrete, parse_dim, parse_input_shape, request_from_options, resolve, with_batch,
)

SPECS = [{"name": "x", "shape": ["batch", "seq", 8], "dtype": "float32"},
         {"name": "mask", "shape": ["batch", "seq"], "dtype": "float32"},
         {"name": "rate", "shape": [], "dtype": "int64"}]


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "bie_compiler", *map(str, args)], capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_parsing():
    assert parse_input_shape("image:1x3x224x224") == ("image", (1, 3, 224, 224))
    assert parse_input_shape("ns:x:2x4") == ("ns:x", (2, 4))  # the name may hold ':'
    assert parse_input_shape("rate:") == ("rate", ())
    assert parse_dim("seq=128") == ("seq", 128)
    for text, message in [("image", "expected NAME:SIZExSIZE"), (":1x3", "expected NAME:SIZExSIZE"),
                          ("x:1x0x3", "sizes must be positive, got 0"), ("x:1xfoo", "'foo' is not an integer")]:
        with pytest.raises(OptionError, match=message):
            parse_input_shape(text)
    for text, message in [("seq", "expected NAME=SIZE"), ("seq=-1", "sizes must be positive, got -1")]:
        with pytest.raises(OptionError, match=message):
            parse_dim(text)
    with pytest.raises(OptionError, match="--dim 'seq' given twice, as 1 and 2"):
        request_from_options([], ["seq=1", "seq=2"])
    assert request_from_options(["x:1x2x8", "x:1x2x8"], ["seq=2"]) == ShapeRequest({"x": (1, 2, 8)}, {"seq": 2})


def test_a_dim_is_fixed_everywhere_it_appears_and_the_rest_stay_symbolic():
    resolved = resolve(SPECS, ShapeRequest(dims={"seq": 16}))
    assert [s["shape"] for s in resolved] == [["batch", 16, 8], ["batch", 16], []]
    resolved = resolve(SPECS, ShapeRequest({"x": (2, 4, 8)}))  # the input's shape names batch and seq for mask too
    assert [s["shape"] for s in resolved] == [[2, 4, 8], [2, 4], []]
    assert concrete(resolve(SPECS, ShapeRequest(dims={"seq": 3})))[1]["shape"] == [1, 3]


@pytest.mark.parametrize("request_, message", [
    (ShapeRequest({"y": (1, 2, 8)}), r"--input-shape y: no input named 'y' \(inputs: x, mask, rate\)"),
    (ShapeRequest(dims={"time": 4}), r"--dim time: no input has a dimension named 'time' \(symbolic dimensions: batch, seq\)"),
    (ShapeRequest({"x": (1, 8)}), r"--input-shape x:1x8: input 'x' has 3 dimensions \['batch', 'seq', 8\], got 2"),
    (ShapeRequest({"x": (1, 2, 9)}), r"--input-shape x:1x2x9: dimension 2 of input 'x' is fixed to 8, got 9"),
    (ShapeRequest({"x": (1, 2, 8)}, {"seq": 3}), r"--input-shape x:1x2x8: dimension 'seq' is 3 from --dim seq=3, this makes it 2"),
    (ShapeRequest({"x": (1, 2, 8), "mask": (1, 5)}), r"--input-shape mask:1x5: dimension 'seq' is 2 from --input-shape x:1x2x8"),
])
def test_resolve_names_what_is_wrong(request_, message):
    with pytest.raises(OptionError, match=message):
        resolve(SPECS, request_)


def test_batch_is_the_dim_named_like_batch_else_the_first():
    assert batch_dim(SPECS) == "batch"
    assert batch_dim([{"name": "x", "shape": ["N", "T", 8]}]) == "N"
    with pytest.raises(OptionError, match="cannot tell which dimension is the batch"):
        batch_dim([{"name": "x", "shape": [1, 8]}])
    assert with_batch(ShapeRequest(dims={"seq": 4}), SPECS, 3).dims == {"seq": 4, "batch": 3}
    with pytest.raises(OptionError, match="--batch 3 sets dimension 'batch', which --dim sets to 2"):
        with_batch(ShapeRequest(dims={"batch": 2}), SPECS, 3)


def save(path, nodes, inputs, outputs, weights=()):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def two_dim_model(path):
    """y = x @ W + bias, x [batch, seq, 64]; z = a + b, both [n, 4]."""
    vi = helper.make_tensor_value_info
    rng = np.random.default_rng(0)
    return save(
        path, [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "bias"], ["y"]),
               helper.make_node("Add", ["a", "b"], ["z"])],
        [vi("x", TensorProto.FLOAT, ["batch", "seq", 64]), vi("a", TensorProto.FLOAT, ["n", 4]),
         vi("b", TensorProto.FLOAT, ["n", 4])],
        [vi("y", TensorProto.FLOAT, ["batch", "seq", 32]), vi("z", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "bias")])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return two_dim_model(tmp_path_factory.mktemp("shapes") / "two_dims.onnx")


@pytest.mark.slow
def test_compiled_with_fixed_shapes(model, tmp_path):
    out = bie_compiler.compile_model(model, tmp_path / "fixed", "bie-bitplane", {"bits": 8}, min_weights=0,
                                     input_shapes={"x": (2, 5, 64)}, dims={"n": 3}, progress=None)
    runner = bie_compiler.load(out)
    manifest = runner.manifest
    assert [i["shape"] for i in manifest["inputs"]] == [[2, 5, 64], [3, 4], [3, 4]]
    assert manifest["outputs"][0]["shape"] == [2, 5, 32]
    assert manifest["fixed_shapes"] == {"input_shapes": {"x": [2, 5, 64]}, "dims": {"n": 3}}
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 5, 64)).astype(np.float32), "a": np.ones((3, 4), np.float32),
             "b": np.ones((3, 4), np.float32)}
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = runner(feeds)
    assert np.abs(got["y"] - expected[0]).max() / np.abs(expected[0]).max() < 0.02  # 8-bit weights
    assert np.array_equal(got["z"], expected[1])
    with pytest.raises(BieError, match=r"input 'x': expected float32 \[2, 5, 64\], got float32 \[1, 5, 64\]"):
        runner({**feeds, "x": feeds["x"][:1]})


@pytest.mark.slow
def test_a_fixed_dim_leaves_the_others_symbolic(model, tmp_path):
    out = tmp_path / "seq"
    result = cli("compile", model, "--skip", "*", "--dim", "seq=1", "-q", "-o", out)
    assert result.returncode == 0, result.stderr
    inputs = bie_compiler.load(out).inputs
    assert [i["shape"] for i in inputs] == [["batch", 1, 64], ["n", 4], ["n", 4]]
    check = cli("check", out, "--batch", "3", "--dim", "n=2", "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["inputs"] == {"x": [3, 1, 64], "a": [2, 4], "b": [2, 4]}
    check = cli("check", out, "--input-shape", "x:4x1x64", "--input-shape", "a:1x4", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["inputs"]["x"] == [4, 1, 64]
    # the artefact's fixed seq cannot be overridden at run time
    bad = cli("run", out, "--input-shape", "x:4x2x64")
    assert bad.returncode == 2 and "dimension 1 of input 'x' is fixed to 1, got 2" in bad.stderr
    bad = cli("check", out, "--dim", "seq=2")
    assert bad.returncode == 2 and "no input has a dimension named 'seq' (symbolic dimensions: batch, n)" in bad.stderr
    np.savez(tmp_path / "in.npz", x=np.ones((1, 1, 64), np.float32), a=np.ones((1, 4), np.float32),
             b=np.ones((1, 4), np.float32))
    bad = cli("run", out, "--inputs", tmp_path / "in.npz", "--batch", "2")
    assert bad.returncode == 2 and "--inputs gives the inputs and their shapes" in bad.stderr


@pytest.mark.slow
def test_shapes_the_model_contradicts_are_refused(model, tmp_path):
    vi = helper.make_tensor_value_info
    two_names = save(tmp_path / "add.onnx", [helper.make_node("Add", ["a", "b"], ["z"])],
                     [vi("a", TensorProto.FLOAT, ["n", 4]), vi("b", TensorProto.FLOAT, ["m", 4])],
                     [vi("z", TensorProto.FLOAT, [None, 4])])
    with pytest.raises(ModelError, match=r"does not accept the input shapes a: \[2, 4\], b: \[3, 4\]"):
        bie_compiler.compile_model(two_names, tmp_path / "bad", dims={"n": 2, "m": 3}, progress=None)
    result = cli("compile", model, "--input-shape", "x:1x2", "-o", tmp_path / "bad")
    assert result.returncode == 2 and "input 'x' has 3 dimensions" in result.stderr
    assert not (tmp_path / "bad").exists()

"""The built-in test models: valid ONNX, deterministic, with the stated sparsity and
trained-like weights, and run identically in onnxruntime and in TVM Relax."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from bie_compiler.models import DEFAULT_MODEL, MODELS, write_all

# Every MatMul/Gemm/Conv weight of each model and its fraction of exact zeros.
SPARSITY = {
    "mlp": {"fc1.weight": 0.9, "fc2.weight": 0.7, "fc3.weight": 0.0},
    "transformer": {
        "blocks.attn.q.weight": 0.0,
        "blocks.attn.k.weight": 0.0,
        "blocks.attn.v.weight": 0.5,
        "blocks.attn.o.weight": 0.5,
        "blocks.ffn.fc1.weight": 0.8,
        "blocks.ffn.fc2.weight": 0.6,
    },
    "cnn": {"conv1.weight": 0.0, "conv2.weight": 0.75, "conv3.weight": 0.0, "fc.weight": 0.0},
}
WEIGHT_OPS = {"MatMul", "Gemm", "Conv"}


@pytest.fixture(scope="module", params=list(MODELS))
def named_model(request):
    return request.param, MODELS[request.param]()


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers used as the weight operand of a MatMul/Gemm/Conv."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    used = {n.input[1] for n in model.graph.node if n.op_type in WEIGHT_OPS}
    return {name: inits[name] for name in used if name in inits}


def feed(model: onnx.ModelProto, batch: int) -> tuple[str, np.ndarray, list[int]]:
    """A random input at `batch`, and the expected output shape."""
    def shape(value_info):
        return [batch] + [d.dim_value for d in value_info.type.tensor_type.shape.dim[1:]]

    (inp,), (out,) = model.graph.input, model.graph.output
    x = np.random.default_rng(batch).standard_normal(shape(inp)).astype(np.float32)
    return inp.name, x, shape(out)


def test_registry():
    assert set(MODELS) == set(SPARSITY) and DEFAULT_MODEL in MODELS


def test_valid_onnx(named_model):
    name, model = named_model
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    node_names = [n.name for n in model.graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)
    assert model.ByteSize() < 2_000_000


def test_deterministic(named_model):
    name, model = named_model
    assert MODELS[name](0).SerializeToString() == model.SerializeToString()
    other = weights(MODELS[name](1))
    for w_name, w in weights(model).items():
        assert not np.array_equal(w, other[w_name]), w_name


def test_sparsity(named_model):
    name, model = named_model
    found = weights(model)
    assert set(found) == set(SPARSITY[name])
    for w_name, w in found.items():
        assert abs(np.mean(w == 0) - SPARSITY[name][w_name]) < 0.01, w_name


def out_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of `node`'s weight: 0 for Conv and Gemm transB=1, else 1."""
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return 0 if node.op_type == "Conv" or trans_b else 1


def test_trained_like(named_model):
    """Weights with many output channels vary in scale per channel; dense ones are heavy-tailed."""
    name, model = named_model
    axes = {n.input[1]: out_axis(n) for n in model.graph.node if n.op_type in WEIGHT_OPS}
    for w_name, w in weights(model).items():
        channels = np.moveaxis(w, axes[w_name], 0).reshape(w.shape[axes[w_name]], -1)
        if len(channels) < 32:
            continue
        if not SPARSITY[name][w_name]:  # pruning removes the bulk, so the tails say nothing then
            assert np.mean(w**4) / np.mean(w**2) ** 2 > 4, f"{w_name}: tails too light"  # Gaussian: 3
        rms = np.sqrt(np.mean(channels**2, axis=1))
        rms = rms[rms > 0]  # heavy pruning kills a few whole channels
        assert rms.max() / rms.min() > 3, f"{w_name}: channel scales too alike"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime(named_model, batch):
    _, model = named_model
    inp, x, out_shape = feed(model, batch)
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {inp: x})
    assert list(y.shape) == out_shape and np.isfinite(y).all()


def test_tvm_matches_onnxruntime(named_model):
    """One TVM build serves two batch sizes: the batch stays symbolic through the import."""
    _, model = named_model
    ex = tvm.compile(from_onnx(model), tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    session = ort.InferenceSession(model.SerializeToString())
    for batch in (2, 1):
        inp, x, out_shape = feed(model, batch)
        (ref,) = session.run(None, {inp: x})
        y = vm["main"](tvm.runtime.tensor(x))
        y = (y if hasattr(y, "numpy") else y[0]).numpy()
        assert list(y.shape) == out_shape
        assert np.abs(y - ref).max() < 1e-4 * np.abs(ref).max()


def test_write_all(tmp_path):
    paths = write_all(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{n}.onnx" for n in MODELS)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert write_all(tmp_path) == paths and [p.stat().st_mtime_ns for p in paths] == mtimes
    for path in paths:
        assert onnx.load(path).SerializeToString() == MODELS[path.stem]().SerializeToString()
    assert not list(tmp_path.glob("*.tmp"))

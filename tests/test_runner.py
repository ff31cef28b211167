"""The runner's call path: every kind of input array, 0-d inputs, clear errors, and calls from several threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import bie_compiler
from bie_compiler.errors import BieError
from bie_compiler.runtime.runner import ALIGNMENT, IN_PLACE_BYTES
from kernel_runs import assert_close


@pytest.fixture(scope="module")
def mlp(model_dir, tmp_path_factory):
    """The MLP with its weights dense, so onnxruntime on the source model is the reference."""
    out = bie_compiler.compile_model(model_dir["mlp"], tmp_path_factory.mktemp("runner") / "mlp", skip=("*",),
                                     progress=None)
    session = ort.InferenceSession(str(model_dir["mlp"]), providers=["CPUExecutionProvider"])
    return bie_compiler.load(out), lambda x: session.run(None, {"x": x})[0]


def offset_copy(a: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts ``offset_bytes`` past a 64-byte boundary."""
    buffer = np.empty(a.nbytes + 2 * ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT + offset_bytes
    copy = buffer[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    copy[...] = a
    return copy


@pytest.mark.parametrize("rows", [1, 300])  # 300 rows: above IN_PLACE_BYTES, so aligned arrays are read in place
def test_every_layout_of_input_gives_the_same_result(mlp, rows):
    runner, reference = mlp
    x = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32)
    assert (x.nbytes >= IN_PLACE_BYTES) == (rows == 300)
    expected = reference(x)
    read_only = x.copy()
    read_only.flags.writeable = False
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    layouts = [x, offset_copy(x, 0), offset_copy(x, 4), offset_copy(x, 16), read_only, np.asfortranarray(x), strided]
    for a in layouts:
        assert_close(runner({"x": a})["logits"], expected, tolerance=1e-4)
        assert np.array_equal(a, x)  # inputs are never written


def test_outputs_are_the_callers_own(mlp):
    runner, _ = mlp
    x = np.ones((2, 256), np.float32)
    first = runner({"x": x})["logits"]
    kept = first.copy()
    second = runner({"x": 2 * x})["logits"]
    assert np.array_equal(first, kept) and not np.shares_memory(first, second)


def test_inputs_of_alternating_shapes(mlp):
    """Staged inputs run main with the staging buffers bound inside the VM: a new shape (a new buffer) binds
    again, an input read in place (300 rows) passes its arguments, and every result is its own input's."""
    runner, reference = mlp
    rng = np.random.default_rng(1)
    for rows in [1, 1, 2, 300, 1, 2, 2, 300, 1]:
        x = rng.standard_normal((rows, 256)).astype(np.float32)
        assert_close(runner({"x": x})["logits"], reference(x), tolerance=1e-4)


def test_one_runner_called_from_eight_threads(mlp):
    """One VM shared by threads: the runner's lock serializes the calls (without it this crashed)."""
    runner, reference = mlp
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 256)).astype(np.float32) for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: runner({"x": x})["logits"], inputs))
    for x, y in zip(inputs, results):
        assert_close(y, reference(x), tolerance=1e-4)


def test_zero_d_input_and_clear_input_errors(tmp_path):
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Cast", ["rate"], ["rate_f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "rate_f"], ["y"])],
        "scaled", [vi("x", TensorProto.FLOAT, ["batch", 4]), vi("rate", TensorProto.INT64, [])],
        [vi("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "scaled.onnx")
    runner = bie_compiler.load(bie_compiler.compile_model(tmp_path / "scaled.onnx", tmp_path / "out", progress=None))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for rate in (np.array(16000), np.int64(16000), 16000):  # a 0-d array, a numpy scalar, a Python int
        assert np.array_equal(runner({"x": x, "rate": rate})["y"], x * 16000)
    with pytest.raises(BieError, match=r"input 'rate': expected int64 \[\], got int64 \[1\]"):
        runner({"x": x, "rate": np.array([16000])})
    with pytest.raises(BieError, match=r"expected a dict by input name \(\['x', 'rate'\]\), got list"):
        runner([x, np.array(16000)])
    with pytest.raises(BieError, match=r"missing \['rate'\], unexpected \['sr'\]"):
        runner({"x": x, "sr": np.array(16000)})
    with pytest.raises(BieError, match=r"input 'x': expected float32"):
        runner({"x": x.astype(np.float64), "rate": np.array(1)})

"""Layer sensitivities against their closed form, and bits budgets split by them."""

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bie_compiler.analysis import CodecSpec, ModelUnderAnalysis
from bie_compiler.calibration import layer_calibrations
from bie_compiler.cli import main
from bie_compiler.decoded_weights import encode_model, weight_layers, with_weights
from bie_compiler.parity import run_onnxruntime
from bie_compiler.passes.policy import EncodingPolicy
from bie_compiler.sensitivity import SAMPLES, layer_sensitivities


def two_branches(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """y = x @ w1 + x @ w2."""
    k, n = w1.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["y"])], "branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sensitivity_is_the_layers_share_of_the_output_energy_for_orthonormal_inputs():
    """With X^T X = I, noise E on w1 moves y by exactly ||E||^2 = NOISE ||w1||^2 against ||w1 + w2||^2."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 16)).astype(np.float32)
    w2 = (0.3 * rng.standard_normal((32, 16))).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((96, 96)))
    samples = [{"x": q[:48, :32].astype(np.float32)}, {"x": q[48:, :32].astype(np.float32)}]  # stacked: X^T X = I
    measured = layer_sensitivities(two_branches(w1, w2), ["w1", "w2"], samples)
    total = float(np.sum((w1.astype(np.float64) + w2) ** 2))
    assert measured["w1"] == pytest.approx(float(np.sum(w1.astype(np.float64) ** 2)) / total, rel=1e-3)
    assert measured["w2"] == pytest.approx(float(np.sum(w2.astype(np.float64) ** 2)) / total, rel=1e-3)


def test_sensitivities_run_on_the_first_sample_sets_only():
    """Each layer costs a model run per sample set: the sets after ``SAMPLES`` are left to X^T X, whatever they hold."""
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal((16, 8)).astype(np.float32) for _ in range(2))
    model = two_branches(w1, w2)
    first = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(SAMPLES)]
    later = [{"x": 100 * rng.standard_normal((4, 16)).astype(np.float32) * np.eye(16, dtype=np.float32)[0]}]
    measured = layer_sensitivities(model, ["w1", "w2"], first + later)
    assert measured == layer_sensitivities(model, ["w1", "w2"], first)
    assert measured != layer_sensitivities(model, ["w1", "w2"], first[1:] + later)


@pytest.mark.parametrize("codec, budget, choice", [("tans", 3.0, "levels"), ("bie-bitplane", 4.5, "bits")])
def test_a_budget_split_by_sensitivity_lowers_the_models_error(codec, budget, choice):
    """Two like layers, one 5x smaller in the output: blind, the budget is split about evenly; by sensitivity, the
    layer that matters gets the bits, and the model's output error on other inputs drops."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((128, 128)).astype(np.float32)
    w2 = (0.2 * rng.standard_normal((128, 128))).astype(np.float32)
    model = two_branches(w1, w2)
    calibration = [{"x": rng.standard_normal((256, 128)).astype(np.float32)}]
    measured = layer_calibrations(model, ["w1", "w2"], calibration, damping=0.1, act_order=False, sensitive=True)
    assert measured["w1"].sensitivity > 10 * measured["w2"].sensitivity
    blind = {name: replace(c, sensitivity=1.0) for name, c in measured.items()}
    test = {"x": rng.standard_normal((64, 128)).astype(np.float32)}
    reference = run_onnxruntime(model, test)[0]
    layers, weights = weight_layers(model), {"w1": w1, "w2": w2}
    policy = EncodingPolicy(codec, {"bits_per_weight": budget})

    def planned(calibrations):
        result = encode_model(weights, layers, policy, calibrations, jobs=1)
        levels = {r.name: r.config[choice] for r in result.records}
        error = np.sum((run_onnxruntime(with_weights(model, result.decoded), test)[0] - reference) ** 2)
        return levels, float(error / np.sum(reference**2)), 8 * sum(r.bytes_encoded for r in result.records)

    blind_levels, blind_error, blind_bits = planned(blind)
    levels, error, bits = planned(measured)
    assert levels["w1"] > max(blind_levels.values()) and levels["w2"] < min(blind_levels.values())
    assert bits <= budget * 2 * w1.size and blind_bits <= budget * 2 * w1.size
    assert error < 0.7 * blind_error


@pytest.mark.slow
def test_compile_with_a_bitplane_budget_and_calibration_passes_check(model_dir, tmp_path, capsys):
    """The planned bits are recorded as fixed bits (check re-encodes from them) and the kernels compute them."""
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32))
    out = tmp_path / "budget"
    assert main(["compile", str(model_dir["mlp"]), "--codec", "bie-bitplane", "--bits-per-weight", "4.5", "-q",
                 "-o", str(out), "--calibration", str(tmp_path / "calib.npz")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    layers = [layer for layer in manifest["layers"] if not layer["fallback_reason"]]
    assert len(layers) > 1 and all(layer["config"]["bits_per_weight"] == 0 for layer in layers)
    assert 8 * sum(layer["bytes_encoded"] for layer in layers) <= 4.5 * sum(
        np.prod(layer["shape"]) for layer in layers)
    capsys.readouterr()
    assert main(["check", str(out), "--batch", "2", "--json", "--min-cosine", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["decoded_max_rel_err"] < 1e-4


def test_analyze_splits_a_budget_by_sensitivity_as_compile_does(tmp_path):
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((128, 128)).astype(np.float32)
    onnx.save(two_branches(w1, (0.2 * rng.standard_normal((128, 128))).astype(np.float32)), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((256, 128)).astype(np.float32))
    samples = [("seeded", {"x": rng.standard_normal((16, 128)).astype(np.float32)}, None)]
    subject = ModelUnderAnalysis(tmp_path / "m.onnx", samples, calibration=tmp_path / "calib.npz", jobs=1)
    result = subject.encoded(CodecSpec("bie-bitplane", {"bits_per_weight": 4.5}), fed=True)
    bits = {r.name: r.config["bits"] for r in result.records}
    assert subject.calibrations["w1"].sensitivity > 10 * subject.calibrations["w2"].sensitivity
    assert bits["w1"] > bits["w2"]

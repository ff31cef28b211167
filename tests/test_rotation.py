"""--rotate: the randomized Hadamard rotation (codecs/rotation.py), its Walsh-Hadamard kernel (codegen/hadamard.py)
and compiled models that rotate."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bie_compiler
from bie_compiler import codecs
from bie_compiler.cli import main
from bie_compiler.codecs import feedback, rotation
from bie_compiler.codecs.base import pack_bits
from bie_compiler.codegen import hadamard
from bie_compiler.errors import OptionError
from bie_compiler.parity import check_artefact, make_inputs
from check_results import assert_parity
from kernel_runs import assert_close, build, call

SIZES = [1, 3, 16, 100, 384, 1536]  # powers of two, and K made of several power-of-two blocks


@pytest.mark.parametrize("k", SIZES)
def test_rotation_is_orthogonal_and_round_trips(k):
    r = rotation.matrix(k)
    np.testing.assert_allclose(r @ r.T, np.eye(k), atol=1e-12)
    x = np.random.default_rng(k).standard_normal((5, k))
    negated = rotation.signs(k)
    np.testing.assert_allclose(rotation.rotate(x, negated), x @ r.T, atol=1e-12)
    np.testing.assert_allclose(rotation.restore(rotation.rotate(x, negated), negated), x, atol=1e-12)
    assert sum(rotation.blocks(k)) == k and all(b & (b - 1) == 0 for b in rotation.blocks(k))


def test_rotation_is_a_hadamard_transform_with_random_signs():
    """Every entry of a block is +-1/sqrt(b), and the signs are neither all kept nor all flipped."""
    r = rotation.matrix(384)
    np.testing.assert_allclose(np.abs(r[:256, :256]), 1 / 16, rtol=1e-12)
    np.testing.assert_allclose(np.abs(r[256:, 256:]), 1 / np.sqrt(128), rtol=1e-12)
    assert not r[:256, 256:].any() and not r[256:, :256].any()
    assert 0.4 < rotation.signs(384).mean() < 0.6


def test_rotated_hessian_is_that_of_the_rotated_inputs():
    x = np.random.default_rng(0).standard_normal((50, 100))
    negated = rotation.signs(100)
    rotated = rotation.rotate(x, negated)
    np.testing.assert_allclose(rotation.rotated_hessian(x.T @ x, negated), rotated.T @ rotated, atol=1e-9)


@pytest.mark.parametrize("k", SIZES)
def test_hadamard_kernel_matches_numpy(k, target):
    kernel = build(hadamard.kernel(k), target)
    negated = rotation.signs(k)
    for rows in (1, 7):
        x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
        assert_close(call(kernel, x, [pack_bits(negated)], (rows, k)), rotation.rotate(x, negated), 1e-6, (k, rows))


@pytest.mark.parametrize("codec", list(codecs.CODECS))
def test_rotated_encoding_counts_the_signs_and_decodes_to_the_original_axis(codec):
    w = (np.random.default_rng(1).standard_t(3, (64, 384)) * 0.02).astype(np.float32)
    config = codecs.make_config(codec, {"rotate": True})
    enc = codecs.encode(codec, w, config)
    inner, negated = rotation.unrotated(enc)
    assert inner.codec == codec and np.array_equal(negated, rotation.signs(384))
    assert enc.nbytes == inner.nbytes + 384 // 8 + enc.header_bytes - inner.header_bytes  # one bit per input
    assert enc.bits_per_weight == 8 * enc.nbytes / w.size
    # the codec saw W R^T: its decoding is the rotated weight's, turned back by R
    rotated = rotation.rotate(w, negated).astype(np.float32)
    np.testing.assert_array_equal(codecs.get_codec(codec).decode(inner),
                                  codecs.get_codec(codec).decode(codecs.encode(codec, rotated, codecs.make_config(codec, {}))))
    np.testing.assert_allclose(codecs.decode(enc), rotation.restore(codecs.get_codec(codec).decode(inner), negated),
                               atol=1e-6)


def test_rotation_lowers_the_error_on_heavy_tailed_weights():
    """Outlier weights and outlier input channels: rotated, 3-bit round-to-nearest and error feedback both err less."""
    rng = np.random.default_rng(2)
    w = (rng.standard_t(2.5, (128, 256)) * 0.02).astype(np.float32)
    x = rng.standard_normal((2048, 256)) * np.where(rng.random(256) < 0.03, 20.0, 1.0)  # a few loud inputs
    calibration = feedback.Calibration(x.T @ x, len(x))
    errors = {}
    for rotate in (False, True):
        config = codecs.make_config("bie-bitplane", {"bits": 3, "rotate": rotate})
        rtn = codecs.decode(codecs.encode("bie-bitplane", w, config))
        fed = codecs.decode(codecs.encode("bie-bitplane", w, config, calibration))
        errors[rotate] = (float(np.sum((rtn - w) ** 2) / np.sum(w**2)), feedback.output_error(w, fed, calibration.xtx))
    assert errors[True][0] < 0.5 * errors[False][0], errors
    assert errors[True][1] < 0.7 * errors[False][1], errors


def test_rotate_is_a_switch_on_every_codec():
    assert codecs.make_config("tans", {"rotate": 1}).rotate is True
    assert codecs.make_config("int8", {}).rotate is False
    with pytest.raises(OptionError, match="true or false"):
        codecs.make_config("bbs", {"rotate": 2})
    assert {f.name: f.kind for f in codecs.option_fields()}["rotate"] is bool


def _odd_k_model() -> onnx.ModelProto:
    """MatMul over K = 96 (blocks 64 + 32), then a Gemm (transB) over K = 80 (64 + 16): x [batch, 96] -> y [batch, 24]."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_t(3, (96, 80)) * 0.1).astype(np.float32)
    w2 = (rng.standard_t(3, (24, 80)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)],
        "odd_k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 24])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("codec", ["bie-bitplane", pytest.param("tans", marks=pytest.mark.slow)])
def test_rotated_model_matches_its_decoded_weights(codec, tmp_path):
    """One row (the fused kernels) and several (decode + matmul), both after the Walsh-Hadamard kernel."""
    onnx.save(_odd_k_model(), tmp_path / "m.onnx")
    out = bie_compiler.compile_model(tmp_path / "m.onnx", tmp_path / "a", codec, {"rotate": True}, min_weights=0,
                                     progress=None)
    runner = bie_compiler.load(out)
    layers = runner.manifest["layers"]
    assert all(layer["details"]["header.rotation"] == "hadamard" and layer["config"]["rotate"] for layer in layers)
    for batch in (1, 5):
        # at one row bie-bitplane's GEMVs have int8 look-up tables by default, each bounded on its rotated input
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


@pytest.mark.slow
def test_bundled_models_compiled_with_rotate_and_feedback_pass_check(model_dir, tmp_path, capsys):
    """The MLP (MatMul and Gemm layers) with error feedback, and the CNN, whose convs stay unrotated, saying so."""
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32))
    out = tmp_path / "mlp"
    assert main(["compile", str(model_dir["mlp"]), "--codec", "bie-bitplane", "--bits", "3", "--rotate", "-q",
                 "--min-weights", "0", "-o", str(out), "--calibration", str(tmp_path / "calib.npz")]) == 0
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    assert all(layer["details"]["feedback"] == "gptq" and layer["config"]["rotate"] for layer in layers)
    capsys.readouterr()
    for batch in ("1", "4"):
        # 3 bits may move the outputs below check's fidelity floor; parity is what is checked here
        assert main(["check", str(out), "--batch", batch, "--json", "--min-cosine", "0"]) == 0
        assert_parity(json.loads(capsys.readouterr().out), 1e-4)  # one row: int8 tables, each within its bound
    cnn = bie_compiler.compile_model(model_dir["cnn"], tmp_path / "cnn", "int8", {"rotate": True}, min_weights=0,
                                     progress=None)
    runner = bie_compiler.load(cnn)
    layers = {layer["name"]: layer for layer in runner.manifest["layers"]}
    assert layers["fc.weight"]["config"]["rotate"] and layers["fc.weight"]["details"]["header.rotation"] == "hadamard"
    assert not layers["conv1.weight"]["config"]["rotate"]
    assert layers["conv1.weight"]["details"]["rotation"].startswith("none: only matmul inputs are rotated")
    assert check_artefact(runner, inputs=make_inputs(runner.inputs, batch=2))["passed"]


def test_rotate_is_refused_off_the_cpu(tmp_path):
    onnx.save(_odd_k_model(), tmp_path / "m.onnx")
    with pytest.raises(OptionError, match="needs the llvm target"):
        bie_compiler.compile_model(tmp_path / "m.onnx", tmp_path / "a", "bbs", {"rotate": True}, target="bitvert",
                                   min_weights=0, progress=None)

"""Calibration data: the captured layer inputs against a direct computation, and compiles with --calibration."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import bie_compiler
from bie_compiler.calibration import _observe, capture_hessians, data_sha256, im2col, sample_files
from bie_compiler.cli import main
from bie_compiler.frontend import load_model
from bie_compiler.parity import check_artefact, make_inputs


def test_matmul_inputs_are_captured_over_every_sample(model_dir, tmp_path):
    model = load_model(model_dir["mlp"])
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rng = np.random.default_rng(11)
    samples = [{"x": rng.standard_normal((n, 256)).astype(np.float32)} for n in (3, 5)]
    stats = capture_hessians(model, ["fc1.weight", "fc2.weight"], samples)
    x = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    hidden = np.maximum(x @ init["fc1.weight"] + init["fc1.bias"], 0)  # fc2 reads relu(x @ fc1 + b1)
    assert stats["fc1.weight"].rows == 8 and np.allclose(stats["fc1.weight"].xtx, x.T @ x, rtol=1e-10)
    assert np.allclose(stats["fc2.weight"].xtx, hidden.T @ hidden, rtol=1e-5, atol=1e-6)


def test_conv_patches_reproduce_the_conv_in_the_codecs_k_order(model_dir):
    """im2col rows @ the codec matrix (K = (kh, kw, in), in fastest) is the conv onnxruntime computes."""
    model = load_model(model_dir["cnn"])
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    image = np.random.default_rng(12).standard_normal((2, 3, 32, 32)).astype(np.float32)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    values = _observe(model, [t for n in convs for t in (n.input[0], n.output[0])], {"image": image})
    for node in convs:
        w = init[node.input[1]]
        rows = im2col(values[node.input[0]], w.shape, node)
        matrix = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)  # WeightUse.matrix for convs
        y = values[node.output[0]]
        direct = (rows @ matrix.T).reshape(y.shape[0], y.shape[2], y.shape[3], -1).transpose(0, 3, 1, 2)
        assert np.allclose(direct + init[node.input[2]][None, :, None, None], y, rtol=1e-4, atol=1e-4), node.name
    stats = capture_hessians(model, [convs[1].input[1]], [{"image": image}])
    rows = im2col(values[convs[1].input[0]], init[convs[1].input[1]].shape, convs[1])
    assert np.allclose(stats[convs[1].input[1]].xtx, rows.T.astype(np.float64) @ rows, rtol=1e-9)


@pytest.mark.parametrize("group, pads", [(2, {"auto_pad": "SAME_UPPER"}), (2, {"auto_pad": "SAME_LOWER"}),
                                         (4, {"pads": [1, 0, 2, 1]}), (1, {"auto_pad": "VALID"})])
def test_grouped_and_auto_padded_conv_patches_reproduce_the_conv_per_group(group, pads):
    """Each group's rows @ its output channels' codec matrix is the conv onnxruntime computes (stride 2 on an odd
    size, so SAME_UPPER and SAME_LOWER pad differently); the captured X^T X is the sum over the groups."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(13)
    w = rng.standard_normal((8, 4 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, strides=[2, 2], **pads)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 9, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    y = _observe(model, ["y"], {"x": x})["y"]
    rows = im2col(x, w.shape, node).reshape(group, -1, 9 * (4 // group))
    matrix = w.transpose(0, 2, 3, 1).reshape(group, 8 // group, -1)
    direct = np.concatenate([rows[g] @ matrix[g].T for g in range(group)], axis=1)
    assert np.allclose(direct.reshape(2, y.shape[2], y.shape[3], 8).transpose(0, 3, 1, 2), y, rtol=1e-4, atol=1e-4)
    stats = capture_hessians(model, ["w"], [{"x": x}])["w"]
    summed = sum(r.T.astype(np.float64) @ r for r in rows)
    assert stats.rows == group * 2 * y.shape[2] * y.shape[3] and np.allclose(stats.xtx, summed, rtol=1e-9)


def test_data_is_a_file_or_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    for i in (1, 0):
        np.savez(tmp_path / "d" / f"s{i}.npz", x=np.full((1, 2), i, np.float32))
    assert [p.name for p in sample_files(tmp_path / "d")] == ["s0.npz", "s1.npz"]
    digest = data_sha256(tmp_path / "d")
    np.savez(tmp_path / "d" / "s1.npz", x=np.full((1, 2), 7, np.float32))
    assert data_sha256(tmp_path / "d") != digest
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no .npz"):
        sample_files(tmp_path / "empty")


@pytest.mark.slow
def test_compile_with_calibration_passes_check_and_improves_the_output(model_dir, tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        np.savez(calib / f"part{i}.npz", x=np.random.default_rng(20 + i).standard_normal((16, 16, 128)).astype(np.float32))
    out = tmp_path / "fb"
    argv = ["compile", str(model_dir["transformer"]), "--codec", "bie-bitplane", "--bits", "3", "-q", "-o", str(out)]
    assert main([*argv, "--calibration", str(calib)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["samples"] == 2 and manifest["calibration"]["sha256"] == data_sha256(calib)
    for layer in manifest["layers"]:
        d = layer["details"]
        assert d["feedback"] == "gptq" and d["feedback.output_error"] < d["feedback.rtn_output_error"], layer["name"]
    capsys.readouterr()
    # 3 bits: the outputs may move below check's fidelity floor; parity is what is checked here
    assert main(["check", str(out), "--batch", "2", "--json", "--min-cosine", "0"]) == 0
    fed = json.loads(capsys.readouterr().out)
    assert fed["passed"] and fed["decoded_max_rel_err"] < 1e-4
    assert main([*argv[:-1], str(tmp_path / "rtn")]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "rtn"), "--batch", "2", "--json", "--min-cosine", "0"]) == 0
    assert fed["cosine"] > json.loads(capsys.readouterr().out)["cosine"]
    # check re-captures from the recorded data: moved data is found with --calibration, changed data is refused
    moved = tmp_path / "moved"
    calib.rename(moved)
    assert main(["check", str(out), "--batch", "2"]) == 2
    assert "pass it with --calibration" in capsys.readouterr().err
    assert main(["check", str(out), "--batch", "2", "--calibration", str(moved), "--min-cosine", "0"]) == 0
    np.savez(moved / "part1.npz", x=np.zeros((4, 16, 128), np.float32))
    assert main(["check", str(out), "--batch", "2", "--calibration", str(moved)]) == 2
    assert "not the calibration data" in capsys.readouterr().err


@pytest.mark.slow
def test_convs_with_calibration_on_the_bitvert_and_cpu_targets(model_dir, tmp_path):
    """bbs convs (im2col statistics) pass check; on bitvert the same data also sets the activation scales."""
    images = np.random.default_rng(30).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", image=images)
    for target in ("llvm", "bitvert"):
        out = bie_compiler.compile_model(model_dir["cnn"], tmp_path / target, "bbs", {"preset": "moderate"},
                                         target=target, min_weights=256, calibration=tmp_path / "calib.npz",
                                         progress=None)
        runner = bie_compiler.load(out)
        convs = [layer for layer in runner.manifest["layers"] if layer["op"] == "conv2d" and not layer["fallback_reason"]]
        assert convs and all(layer["details"]["feedback"] == "gptq" for layer in convs)
        assert check_artefact(runner, inputs=make_inputs(runner.inputs, batch=2))["passed"]


def test_a_weight_read_through_a_transpose_node_is_rounded_data_free(tmp_path):
    """The capture sees only weights a MatMul/Gemm/Conv reads directly; the others say why they got no feedback."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(2).standard_normal((32, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "t.onnx")
    np.savez(tmp_path / "calib.npz", x=np.ones((4, 64), np.float32))
    out = bie_compiler.compile_model(tmp_path / "t.onnx", tmp_path / "a", "bie-bitplane", {"bits": 4}, progress=None,
                                     calibration=tmp_path / "calib.npz")
    runner = bie_compiler.load(out)
    [layer] = runner.manifest["layers"]
    assert layer["details"]["feedback"] == "none (no calibration input reached it): data-free rounding"
    assert check_artefact(runner, inputs=make_inputs(runner.inputs, batch=2))["passed"]

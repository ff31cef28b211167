"""``analyze``: per-layer weight error and sensitivity, the rate-distortion sweep, the report files, the
compile lines it prints; its whole-model figures are ``eval``'s, and its layers are the compiler's."""

import csv
import json
import shlex
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bie_compiler.analysis import SCHEMA, SETTINGS, weight_error
from bie_compiler.analysis_report import require_matplotlib
from bie_compiler.errors import OptionError
from bie_compiler.decoded_weights import weight_layers
from bie_compiler.frontend import import_model, load_model
from bie_compiler.models import digits, write_all
from bie_compiler.ort_reference import gemms_as_matmuls
from bie_compiler.parity import run_onnxruntime
from bie_compiler.passes.weight_uses import collect_weight_uses
from test_cli import cli

def analyze(model, out, *args):
    result = cli("analyze", model, "-o", out, *args)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "report.json").read_text()), result


@pytest.fixture(scope="module")
def mlp_report(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "mlp"
    return (out, *analyze(model_dir["mlp"], out, "--codec", "bie-bitplane", "--codec", "int8", "--top", "2"))


@pytest.mark.slow
def test_report_schema_and_files(mlp_report):
    out, report, result = mlp_report
    assert report["schema"] == SCHEMA and report["samples"] == 1 and report["rows"] == 8  # random, batch 8
    assert "seeded random inputs" in result.stderr and "analyze: bie-bitplane: layer 1/3" in result.stderr
    assert [layer["name"] for layer in report["layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert [c["label"] for c in report["codecs"]] == ["bie-bitplane", "int8"]
    assert [p["label"] for p in report["sweep"]] == [f"{c} {label}" for c in ("bie-bitplane", "int8")
                                                     for label, _ in SETTINGS[c]]
    assert [p["label"] for p in report["references"]][0] == "fp16 weights"
    for point in report["codecs"] + report["sweep"] + [p for p in report["references"] if "skipped" not in p]:
        assert point["rel_l2"] >= 0 and -1 <= point["cosine"] <= 1 and point["bits_per_weight"] > 0
        assert point["result"]["outputs"]["logits"]["rel_l2"]["mean"] == point["rel_l2"]
    assert {f.name for f in out.iterdir()} == {"report.json", "layers.csv", "rate_distortion.csv",
                                                 "rate_distortion.png", "sensitivity.png", "report.html"}
    for png in ("rate_distortion.png", "sensitivity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<img src=\"rate" not in html  # self-contained
    rows = list(csv.DictReader(open(out / "layers.csv")))
    assert len(rows) == 3 * 2 and {r["codec"] for r in rows} == {"bie-bitplane", "int8"}
    assert len(list(csv.DictReader(open(out / "rate_distortion.csv")))) == len(report["sweep"]) + len(
        report["codecs"]) + sum("skipped" not in p for p in report["references"])


@pytest.mark.slow
def test_sensitivities_are_finite_and_rank_the_layers(mlp_report):
    _, report, _ = mlp_report
    for c in report["codecs"]:
        figures = {layer["name"]: layer["codecs"][c["label"]] for layer in report["layers"]}
        for e in figures.values():
            assert np.isfinite(e["sqnr_db"]) and e["sqnr_db"] > 0 and 0 < e["rel_l2"] < 1
            assert 0 < e["output"]["rel_l2"] < np.inf
        assert c["ranking"] == sorted(figures, key=lambda n: -figures[n]["output"]["rel_l2"])
        # one layer alone moves the outputs less than every layer together
        assert max(e["output"]["rel_l2"] for e in figures.values()) < c["rel_l2"]
    bitplane, int8 = report["codecs"]
    assert int8["rel_l2"] < bitplane["rel_l2"]  # 8 bits against 4
    fp16 = report["references"][0]
    assert fp16["rel_l2"] < int8["rel_l2"] / 10 and fp16["bits_per_weight"] == 16


@pytest.mark.slow
def test_compile_lines_treat_the_most_sensitive_layers(mlp_report):
    out, report, result = mlp_report
    bitplane = report["codecs"][0]
    override, skip = bitplane["suggestions"]
    top = bitplane["ranking"][:2]
    assert override["kind"] == "override" and skip["kind"] == "skip" and override["layers"] == skip["layers"] == top
    skip_argv, override_argv = shlex.split(skip["command"]), shlex.split(override["command"])
    assert skip_argv[:2] == ["bie-compiler", "compile"] and skip_argv[skip_argv.index("--codec") + 1] == "bie-bitplane"
    assert _values(skip_argv, "--skip") == top and _values(override_argv, "--override") == [f"{n}:bits=8" for n in top]
    for s in (override, skip):  # measured: the treated layers cost more bits and less error
        assert bitplane["bits_per_weight"] < s["bits_per_weight"] and s["rel_l2"] < bitplane["rel_l2"]
        assert s["command"] in result.stdout
    assert report["codecs"][1]["suggestions"][0]["kind"] == "skip"  # int8 has nothing finer to offer


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_weight_error_of_a_known_rounding():
    w = np.array([[3.0, 4.0]])
    e = weight_error(w, np.array([[3.0, 4.5]]))
    assert e["rel_l2"] == pytest.approx(0.1) and e["sqnr_db"] == pytest.approx(20.0)
    assert weight_error(w, w)["sqnr_db"] == float("inf") and weight_error(w, w)["rel_l2"] == 0.0


@pytest.mark.slow
def test_transformer_sensitivities_without_sweep(model_dir, tmp_path):
    report, _ = analyze(model_dir["transformer"], tmp_path / "r", "--codec", "bie-bitplane:bits=3", "--no-sweep", "-q")
    assert report["sweep"] == [] and report["references"] == []
    (bitplane,) = report["codecs"]
    assert bitplane["label"] == "bie-bitplane bits=3" and len(bitplane["ranking"]) == 6
    for layer in report["layers"]:
        e = layer["codecs"]["bie-bitplane bits=3"]
        assert e["codec"] == "bie-bitplane" and np.isfinite(e["output"]["rel_l2"]) and e["output"]["rel_l2"] > 0


def _layer_model() -> onnx.ModelProto:
    """MatMul through a Transpose, Gemm transB=1, a 2-D Conv, a 1-D Conv and a MatMul of two activations."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("wt", (8, 16)), ("g", (8, 8)), ("c", (4, 2, 3, 3)), ("c1", (2, 2, 3))]]
    nodes = [helper.make_node("Transpose", ["wt"], ["wt_T"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt_T"], ["h"]),
             helper.make_node("Gemm", ["h", "g"], ["y"], transB=1),
             helper.make_node("MatMul", ["y", "z"], ["yz"]),
             helper.make_node("Conv", ["img", "c"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["seq", "c1"], ["conv1"])]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "layers", [helper.make_tensor_value_info("x", f, [2, 16]),
                                                helper.make_tensor_value_info("z", f, [8, 3]),
                                                helper.make_tensor_value_info("img", f, [1, 2, 5, 5]),
                                                helper.make_tensor_value_info("seq", f, [1, 2, 7])],
                              [helper.make_tensor_value_info(n, f, s) for n, s in
                               [("yz", [2, 3]), ("conv", [1, 4, 5, 5]), ("conv1", [1, 2, 5])]], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("name", ["mlp", "transformer", "cnn", "embedder", "dynamo_style", "int8_source", "layers"])
def test_weight_layers_are_the_compilers(name, tmp_path):
    """The ONNX-level finder agrees with the weight uses the compiler finds in the imported Relax module."""
    if name == "layers":
        source = _layer_model()
        shapes = None
    else:
        (source,) = write_all(tmp_path, [name])
        from bie_compiler.shapes import ShapeRequest

        shapes = ShapeRequest({}, {"batch": 2}) if name == "dynamo_style" else None
    imported = import_model(source, shapes)
    uses, _ = collect_weight_uses(imported.mod, imported.constant_names)
    found = weight_layers(load_model(source))
    # a table no codec could encode (not float32) is one of the other weights to both, not a layer
    assert [(r.name, r.op, r.transposed, r.fallback_reason is None) for r in found] == \
        [(u.name, u.op, u.transposed, u.unsupported is None) for u in uses if u.op != "gather" or not u.unsupported]
    if name == "layers":
        assert [(r.name, r.transposed) for r in found] == [("wt", True), ("g", True), ("c", False)]


@pytest.mark.slow
def test_whole_model_figures_are_evals(tmp_path):
    """The digits classifier with every layer in bie-bitplane 4: analyze's point is what eval measures on the
    compiled artefact (the artefact computes the decoded-weights model to fp32 accumulation error)."""
    (model,) = write_all(tmp_path, ["digits"])
    data = digits.write_held_out(tmp_path / "held_out", 250)
    assert cli("compile", model, "-q", "--codec", "bie-bitplane", "--bits", "4", "-o", tmp_path / "art").returncode == 0
    result = cli("eval", tmp_path / "art", "--data", data, "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)["outputs"]["logits"]
    report, _ = analyze(model, tmp_path / "r", "--codec", "bie-bitplane:bits=4", "--data", data, "--no-sweep", "-q")
    (point,) = report["codecs"]
    ours = point["result"]["outputs"]["logits"]
    assert ours["accuracy"]["rows"] == 500 and report["fp32"]["accuracy_fp32"] == evaluated["accuracy_fp32"]["mean"]
    for metric in ("cosine", "rel_l2", "top1_agreement", "accuracy"):
        assert ours[metric]["mean"] == pytest.approx(evaluated[metric]["mean"], rel=1e-4, abs=1e-6), metric
    assert point["task_metric"] == "accuracy" and point["task"] == ours["accuracy"]["mean"]


@pytest.mark.parametrize("args, message", [
    (["--codec", "nope"], "unknown codec 'nope'"),
    (["--codec", "bie-bitplane:bits"], "expected CODEC or CODEC:key=value"),
    (["--codec", "bie-bitplane:planks=3"], "does not take option(s) planks"),
    (["--codec", "bie-bitplane:bits=99"], "bits"),
    (["--override", "fc1.weight:bits=99"], "bits"),
    (["--data", "missing.npz"], "--data missing.npz: no such file or folder"),
    (["--data", "DATA", "--batch", "2"], "--data gives the inputs"),
    (["--top", "-1"], "--top must be >= 0"),
    (["--min-weights", "-5"], "--min-weights must be a non-negative integer"),
    (["--metric", "nope", "--no-sweep"], "--metric nope: not a figure of output 'logits'"),
])
@pytest.mark.slow
def test_bad_options_are_one_line_errors(model_dir, tmp_path, args, message):
    if "DATA" in args:
        np.savez(tmp_path / "d.npz", x=np.ones((2, 64), np.float32))
        args = [str(tmp_path / "d.npz") if a == "DATA" else a for a in args]
    result = cli("analyze", model_dir["mlp"], "-o", tmp_path / "r", "-q", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 + ("seeded random" in result.stderr)
    assert not (tmp_path / "r").exists()


def test_missing_matplotlib_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(OptionError, match=r"^analyze draws its plots with matplotlib: install it with pip install"):
        require_matplotlib()


def test_gemms_become_matmuls_for_matmulnbits():
    """onnxruntime's MatMulNBits takes MatMul only: Gemms are rewritten first, computing the same."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("w1", (16, 8)), ("b1", (16,)), ("w2", (16, 4))]]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Gemm", ["h", "w2"], ["y"])]
    f = TensorProto.FLOAT
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [3, 8])],
                                                [helper.make_tensor_value_info("y", f, [3, 4])], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    rewritten = gemms_as_matmuls(model)
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add", "MatMul"]
    x = {"x": rng.standard_normal((3, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_onnxruntime(rewritten, x)[0], run_onnxruntime(model, x)[0], rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Gemm"]  # the source is left alone


@pytest.mark.slow
def test_calibration_adds_feedback_points(model_dir, tmp_path):
    rng = np.random.default_rng(3)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i in range(2):
        np.savez(calibration / f"{i}.npz", x=rng.standard_normal((64, 256)).astype(np.float32))
    report, _ = analyze(model_dir["mlp"], tmp_path / "r", "--codec", "int8", "--codec", "bie-binary",
                        "--calibration", calibration, "-q")
    assert report["calibration"] == str(calibration)
    assert [c["mode"] for c in report["codecs"]] == ["feedback", "feedback"]  # as compile --calibration would round
    modes = [(p["codec"], p["mode"]) for p in report["sweep"]]
    assert modes.count(("int8", "rtn")) == modes.count(("int8", "feedback")) == 1
    assert modes.count(("bie-binary", "rtn")) == modes.count(("bie-binary", "feedback")) >= 1
    int8 = {p["mode"]: p for p in report["sweep"] if p["codec"] == "int8"}
    assert int8["feedback"]["bits_per_weight"] == int8["rtn"]["bits_per_weight"]
    assert int8["feedback"]["rel_l2"] != int8["rtn"]["rel_l2"]  # the rounding changed
    assert all(f"--calibration {calibration}" in s["command"] for c in report["codecs"] for s in c["suggestions"])

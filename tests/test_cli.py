"""The command line end to end, and every kind of bad input: clear error, non-zero exit, no partial artefact."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bie_compiler.models import mlp

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`


def cli(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "bie_compiler", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def assert_no_artefact(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def compiled(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    result = cli("compile", model_dir["mlp"], "--codec", "bie-bitplane", "--bits", "4", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "encoding fc1.weight" in result.stderr  # progress output
    assert "fc2.weight" in result.stdout and "whole model:" in result.stdout  # the report
    return out


def test_check_json_reports_parity(compiled):
    result = cli("check", compiled, "--batch", "8", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in ("max_abs_err", "max_rel_err", "cosine", "decoded_max_rel_err", "passed"):
        assert key in figures
    assert figures["passed"] is True and figures["decoded_max_rel_err"] < 1e-4
    assert figures["inputs"] == {"x": [8, 256]}


def test_a_reader_that_goes_away_ends_inspect_quietly(compiled):
    """``inspect | head``: stdout closed before the report is written is no traceback, and exit 141 as from SIGPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "bie_compiler", "inspect", str(compiled)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 141 and stderr == "", stderr


def test_check_exits_1_on_parity_failure(compiled):
    """Two rows: the panel GEMM, exact, held to the tolerance (at one row the default int8 look-up tables' GEMVs are
    held to their stated bounds instead: tests/test_lut_tables_option.py)."""
    result = cli("check", compiled, "--batch", "2", "--tolerance", "1e-12")
    assert result.returncode == 1 and "FAILED" in result.stdout


def test_check_with_user_inputs(compiled, tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.ones((2, 256), np.float32))
    result = cli("check", compiled, "--inputs", npz, "--json", "--min-cosine", "0")  # constant x: the plumbing
    assert result.returncode == 0 and json.loads(result.stdout)["inputs"] == {"x": [2, 256]}
    np.savez(npz, y=np.ones((2, 256), np.float32))
    result = cli("check", compiled, "--inputs", npz)
    assert result.returncode == 2 and "missing input(s) ['x']" in result.stderr


def test_inspect_json_per_layer_stats(compiled):
    result = cli("inspect", compiled, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    layers = {l["name"]: l for l in report["layers"]}
    assert set(layers) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    fc1 = layers["fc1.weight"]
    for key in ("name", "codec", "shape", "bits_per_weight", "bytes_dense", "bytes_encoded", "fallback_reason"):
        assert key in fc1
    assert fc1["shape"] == [256, 512] and fc1["bytes_dense"] == 256 * 512 * 4
    assert fc1["bits_per_weight"] == pytest.approx(8 * fc1["bytes_encoded"] / (256 * 512), abs=1e-3)
    assert all(l["fallback_reason"] is None and l["codec"] == "bie-bitplane" for l in layers.values())
    assert report["totals"]["bytes_dense"] == sum(l["bytes_dense"] for l in report["layers"])
    text = cli("inspect", compiled)
    assert text.returncode == 0 and "fc1.weight" in text.stdout and "bie-bitplane" in text.stdout


def test_progressive_planes_shrink_the_artefact(model_dir, compiled, tmp_path):
    out = tmp_path / "p2"
    assert cli("compile", model_dir["mlp"], "--bits", "4", "--planes", "1", "-q", "-o", out).returncode == 0
    full = json.loads(cli("inspect", compiled, "--json").stdout)["totals"]
    coarse = json.loads(cli("inspect", out, "--json").stdout)["totals"]
    assert coarse["bytes_encoded"] < full["bytes_encoded"]
    checked = cli("check", out)  # one plane computes exactly what it encodes, and that is far from the model
    assert checked.returncode == 3 and "FIDELITY LOW: compiled correctly" in checked.stdout


# ---- bad input --------------------------------------------------------------------------


def write_model(path, nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("kind", ["not_onnx", "truncated", "empty", "missing"])
def test_unreadable_models(model_dir, tmp_path, kind):
    path = tmp_path / f"{kind}.onnx"
    if kind == "not_onnx":
        path.write_text("this is not a model\n" * 20)
    elif kind == "truncated":
        data = model_dir["mlp"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    out = tmp_path / "out"
    result = cli("compile", path, "-o", out)
    assert result.returncode == 2
    assert str(path) in result.stderr and "error:" in result.stderr
    assert_no_artefact(out)


def test_unsupported_ops_are_listed(tmp_path):
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="ok_relu"),
        helper.make_node("FancyOp", ["h"], ["y"], name="my_fancy", domain="com.example"),
    ]
    path = write_model(tmp_path / "custom.onnx", nodes, [], [vi("x", TensorProto.FLOAT, [1, 4])],
                       [vi("y", TensorProto.FLOAT, [1, 4])])
    model = onnx.load(path)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, path)
    result = cli("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "my_fancy (com.example.FancyOp)" in result.stderr and "unsupported" in result.stderr
    assert_no_artefact(tmp_path / "out")


def test_nan_weight_names_the_initializer(tmp_path):
    model = mlp.build()
    for init in model.graph.initializer:
        if init.name == "fc2.weight":
            w = numpy_helper.to_array(init).copy()
            w[3, 7] = np.nan
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    result = cli("compile", path, "-o", tmp_path / "out")
    assert result.returncode == 2 and "'fc2.weight'" in result.stderr and "NaN" in result.stderr
    assert_no_artefact(tmp_path / "out")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--bits", "9"], "bits must be in 2..8"),
        (["--codec", "bie-binary", "--bits", "4"], "does not take option(s) bits"),
        (["--planes", "5"], "planes must be in 1..3"),
        (["--block-size", "100", "--codec", "bie-blocked"], "power of two"),
        (["--blocked-execution", "lazy", "--codec", "bie-blocked"], "blocked_execution must be one of auto, load"),
        (["--override", "fc1.weight"], "expected PATTERN:key=value"),
        (["--override", "fc1.weight:bits=12"], "bits must be in 2..8"),
        (["--target", "tpu"], "unknown target 'tpu'"),
        (["--target", "cuda", "--arch", "ampere"], "expected a CUDA architecture"),
        (["--arch", "sm_90"], "applies to --target cuda only"),
        (["--mcpu", "pentium-9000"], "does not know the CPU"),
        (["--codec", "nope"], "invalid choice"),
    ],
)
def test_wrong_options(model_dir, tmp_path, args, message):
    out = tmp_path / "out"
    result = cli("compile", model_dir["mlp"], "-o", out, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert_no_artefact(out)


@pytest.fixture
def artefact_copy(compiled, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(compiled, copy)
    return copy


@pytest.mark.parametrize("command", ["check", "inspect"])
def test_tampered_library_is_refused(artefact_copy, command):
    lib = artefact_copy / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    result = cli(command, artefact_copy)
    assert result.returncode == 2 and "model.so" in result.stderr and "does not match the manifest" in result.stderr


def test_truncated_library_is_refused(artefact_copy):
    lib = artefact_copy / "model.so"
    lib.write_bytes(lib.read_bytes()[:1000])
    result = cli("check", artefact_copy)
    assert result.returncode == 2 and "truncated" in result.stderr


def test_edited_manifest_is_refused(artefact_copy):
    path = artefact_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["layers"][0]["bits_per_weight"] = 1.0
    path.write_text(json.dumps(manifest))
    result = cli("check", artefact_copy)
    assert result.returncode == 2 and "modified after compilation" in result.stderr


def test_foreign_and_missing_artefacts(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"hello": 1}')
    assert "not a bie-compiler manifest" in cli("check", tmp_path / "foreign").stderr
    assert "no such artefact folder" in cli("inspect", tmp_path / "nothing").stderr
    (tmp_path / "plain").mkdir()
    assert "not a bie-compiler artefact" in cli("check", tmp_path / "plain").stderr


def test_refuses_to_overwrite_a_non_artefact_folder(model_dir, tmp_path):
    out = tmp_path / "important"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = cli("compile", model_dir["mlp"], "-o", out)
    assert result.returncode == 2 and "not a bie-compiler artefact" in result.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_recompiling_replaces_the_artefact(model_dir, tmp_path):
    out = tmp_path / "out"
    assert cli("compile", model_dir["mlp"], "-q", "-o", out, "--bits", "8").returncode == 0
    assert cli("compile", model_dir["mlp"], "-q", "-o", out, "--bits", "3").returncode == 0
    config = json.loads(cli("inspect", out, "--json").stdout)["codec"]["options"]
    assert config == {"bits": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_refuses_a_different_source_model(compiled, model_dir):
    result = cli("check", compiled, "--model", model_dir["cnn"])
    assert result.returncode == 2 and "not the model this artefact was compiled from" in result.stderr

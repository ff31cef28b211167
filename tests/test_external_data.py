"""Models whose weights live in external data files: loaded with the weights left in their files, compiled and
checked like inline ones, and every data file hashed so a changed or missing one is named in one line."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm

from bie_compiler import external_data
from bie_compiler.cli import main
from bie_compiler.errors import ModelError
from bie_compiler.frontend import import_model, load_model


@pytest.fixture(scope="module")
def external_mlp(model_dir, tmp_path_factory):
    """The bundled mlp saved with every tensor of 1 KiB or more in ``mlp.data`` beside it."""
    path = tmp_path_factory.mktemp("external") / "mlp.onnx"
    onnx.save_model(onnx.load(str(model_dir["mlp"])), str(path), save_as_external_data=True,
                    location="mlp.data", size_threshold=1024)
    return path


@pytest.fixture(scope="module")
def compiled(external_mlp, tmp_path_factory):
    """The external mlp compiled (bie-bitplane 4 bits, error feedback on calibration data)."""
    calib = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(calib, x=np.random.default_rng(3).standard_normal((16, 256)).astype(np.float32))
    out = tmp_path_factory.mktemp("art") / "mlp"
    assert main(["compile", str(external_mlp), "--codec", "bie-bitplane", "--bits", "4", "--calibration", str(calib),
                 "-q", "-o", str(out)]) == 0
    return out


def test_large_weights_stay_in_their_file_and_read_as_saved(model_dir, external_mlp):
    inline = onnx.load(str(model_dir["mlp"]))
    model = load_model(external_mlp)
    kept = external_data.external_tensors(model)
    assert kept and external_data.data_files(model) == [str(external_mlp.with_suffix(".data"))]
    assert all(not t.raw_data for t in kept)  # nothing of them in memory
    for tensor in inline.graph.initializer:
        loaded = next(t for t in model.graph.initializer if t.name == tensor.name)
        assert np.array_equal(external_data.tensor_array(loaded), onnx.numpy_helper.to_array(tensor)), tensor.name


def test_import_is_the_same_module_as_from_the_inline_file(model_dir, external_mlp):
    inline, external = import_model(model_dir["mlp"]), import_model(external_mlp)
    tvm.ir.assert_structural_equal(inline.mod, external.mod)  # the same constants' values, bound where they were
    assert sorted(inline.constant_names.values()) == sorted(external.constant_names.values())
    assert int(external.mod["main"].attrs["num_input"]) == len(external.mod["main"].params) == 1
    assert {n: (w.shape, w.dtype, w.nbytes) for n, w in inline.weights.items()} == \
        {n: (w.shape, w.dtype, w.nbytes) for n, w in external.weights.items()}


def _mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (/proc/self/maps), None for anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(a, 16) for a in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


def test_large_weights_are_bound_as_maps_of_their_file_and_encoded_from_it(external_mlp):
    imported = import_model(external_mlp)
    data = str(external_mlp.with_suffix(".data"))
    assert sorted(imported.stored) == ["fc1.weight", "fc2.weight"]
    constants = {name: c for c, name in imported.constant_names.items()}
    for name, weight in imported.stored.items():
        values = np.from_dlpack(constants[name].value)  # a view of the constant's memory
        assert _mapped_file(values.ctypes.data) == data, name  # the data file's pages: no copy in memory
        assert np.array_equal(values, weight.array())
    from bie_compiler.codecs.stored import StoredMatrix
    from bie_compiler.passes import EncodingPolicy, plan_encoding
    from bie_compiler.codegen.target import make_target

    plan = plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("int8"), make_target(), jobs=1,
                         stored=imported.stored)
    task = plan.uses["fc1.weight"].task_matrix()
    assert isinstance(task, StoredMatrix)  # what a worker is sent: where to read, not the values
    assert np.array_equal(task.load(), plan.uses["fc1.weight"].matrix())


def test_session_reads_the_data_files_as_onnxruntime_does_from_the_path(external_mlp):
    x = {"x": np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)}
    by_path = ort.InferenceSession(str(external_mlp), providers=["CPUExecutionProvider"]).run(None, x)
    ours = external_data.session(load_model(external_mlp)).run(None, x)
    assert all(np.array_equal(a, b) for a, b in zip(by_path, ours))


def test_compile_and_check_pass_with_the_data_files_hashed(model_dir, external_mlp, compiled, tmp_path, capsys):
    source = json.loads((compiled / "manifest.json").read_text())["source_model"]
    data = external_mlp.with_suffix(".data")
    assert source["data_files"] == [{"name": "mlp.data", "sha256": external_data_sha256(data)}]
    capsys.readouterr()
    assert main(["check", str(compiled), "--batch", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["decoded_max_rel_err"] < 1e-5
    # the same encodings as the inline model gives: the weights read from the file are the same bytes
    inline = tmp_path / "inline"
    assert main(["compile", str(model_dir["mlp"]), "--codec", "bie-bitplane", "--bits", "4", "--calibration",
                 source_calibration(compiled), "-q", "-o", str(inline)]) == 0
    encodings = [[r["name"], r["encoded_sha256"]] for r in json.loads((compiled / "manifest.json").read_text())["layers"]]
    assert encodings == [[r["name"], r["encoded_sha256"]]
                         for r in json.loads((inline / "manifest.json").read_text())["layers"]]
    assert (compiled / "weights.bin").read_bytes() == (inline / "weights.bin").read_bytes()


def external_data_sha256(path):
    from bie_compiler.frontend import file_sha256

    return file_sha256(path)


def source_calibration(artefact):
    return json.loads((artefact / "manifest.json").read_text())["calibration"]["path"]


@pytest.mark.parametrize("command", [["check"], ["bench", "--repeat", "1"]])
def test_a_changed_or_missing_data_file_is_named_in_one_line(external_mlp, compiled, command, capsys):
    data = external_mlp.with_suffix(".data")
    saved = data.read_bytes()
    try:
        data.write_bytes(saved[:-4] + bytes(4))  # the last weights' bytes changed
        capsys.readouterr()
        assert main([*command, str(compiled)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"bie-compiler: error: {data}: external data file of {external_mlp} changed since the compile " \
                      "(sha256 differs)"
        data.unlink()
        assert main([*command, str(compiled)]) == 2
        assert capsys.readouterr().err.strip() == \
            f"bie-compiler: error: {data}: external data file of {external_mlp} is missing"
    finally:
        data.write_bytes(saved)


def test_unreadable_external_data_is_a_model_error(external_mlp, tmp_path):
    model = onnx.load(str(external_mlp), load_external_data=False)
    onnx.save_model(model, str(tmp_path / "m.onnx"))  # references mlp.data, not copied here
    with pytest.raises(ModelError, match="m.onnx: invalid ONNX model|mlp.data: external data file .* is missing"):
        load_model(tmp_path / "m.onnx")
    (tmp_path / "mlp.data").write_bytes(external_mlp.with_suffix(".data").read_bytes()[:1000])  # too short
    with pytest.raises(ModelError, match="mlp.data: external data of tensor .* past the end of the file"):
        load_model(tmp_path / "m.onnx")
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    tensor.external_data[0].value = "../elsewhere.data"
    onnx.save_model(model, str(tmp_path / "escape.onnx"))
    with pytest.raises(ModelError, match="escape.onnx"):
        load_model(tmp_path / "escape.onnx")


@pytest.mark.slow
def test_the_llama_generator_writes_a_model_that_compiles_and_checks(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from llama_model import build

    path = build(tmp_path / "llama.onnx", layers=1, hidden=128, ffn=352, heads=4)
    model = load_model(path)
    assert sorted(t.name for t in external_data.external_tensors(model)) == sorted(
        f"model.layers.0.{p}.weight" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    out = tmp_path / "art"
    assert main(["compile", str(path), "--codec", "bie-bitplane", "--bits", "4", "--input-shape", "x:1x8x128",
                 "-q", "-o", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["totals"]["encoded_layers"] == 7
    capsys.readouterr()
    assert main(["check", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["decoded_max_rel_err"] < 1e-5 and result["cosine"] > 0.95

"""Gather tables (embeddings) encoded: the int8 and bitwave gather kernels read the rows asked for from their
codes; parity with onnxruntime on the decoded-weights model, negative ids counted from the end as ONNX does."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_cli import cli

pytestmark = pytest.mark.slow  # compiles


def embedding_model(path):
    """ids - 150 -> Gather(table [300, 64]) -> x @ W: the shifted ids reach below zero (rows from the end)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Sub", ["ids", "shift"], ["shifted"]),
             helper.make_node("Gather", ["table", "shifted"], ["rows"], axis=0),
             helper.make_node("MatMul", ["rows", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "embedding", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 32]),
         helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 5, 64])],
        [numpy_helper.from_array(rng.standard_normal((300, 64)).astype(np.float32), "table"),
         numpy_helper.from_array(np.array(150, np.int64), "shift"),
         numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("codec", ["int8", "bitwave"])
def test_an_encoded_table_is_read_row_by_row_as_its_decoding(tmp_path, codec):
    model, out = embedding_model(tmp_path / "embedding.onnx"), tmp_path / "art"
    result = cli("compile", model, "-o", out, "--codec", codec)
    assert result.returncode == 0, result.stderr
    assert "matmul, conv and gather weights: 2/2 encoded" in result.stdout
    layers = {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["layers"]}
    assert layers["table"]["op"] == "gather" and layers["table"]["codec"] == codec
    assert layers["table"]["bytes_encoded"] < 300 * 64 * 4 / 3
    ids = np.array([[0, 149, 150, 299, 7], [200, 1, 150, 298, 42]], np.int64)  # shifted: -150 .. 149
    np.savez(tmp_path / "ids.npz", ids=ids)
    checked = cli("check", out, "--inputs", tmp_path / "ids.npz", "--json")
    figures = json.loads(checked.stdout)
    assert checked.returncode == 0 and figures["passed"], checked.stdout + checked.stderr
    assert figures["decoded_max_rel_err"] < 1e-5 and figures["cosine"] > 0.98  # bitwave prunes bit columns


def test_a_codec_without_a_gather_kernel_leaves_the_table_an_other_weight(tmp_path):
    result = cli("compile", embedding_model(tmp_path / "embedding.onnx"), "-o", tmp_path / "art", "--codec", "bbs")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [r["name"] for r in manifest["layers"]] == ["w"]
    other = {r["name"]: r for r in manifest["other_weights"]}["table"]
    assert other["codec"] == "dense" and other["fallback_reason"].startswith("Gather table: encoded by the codecs")


@pytest.mark.parametrize("codec", ["int8", "tans"])
def test_analyze_measures_the_layers_compile_encodes_tables_included(tmp_path, codec):
    """encode_model (what analyze and quality.py measure) takes the table where compile encodes it, and the
    bits/weight match compile's manifest; a codec with no gather kernel leaves the table out of both."""
    from bie_compiler.decoded_weights import encode_model, initializer_arrays, weight_layers
    from bie_compiler.passes import EncodingPolicy

    model = embedding_model(tmp_path / "embedding.onnx")
    proto = onnx.load(str(model))
    layers = weight_layers(proto)
    encoded = encode_model(initializer_arrays(proto, [r.name for r in layers]), layers, EncodingPolicy(codec))
    assert cli("compile", model, "-o", tmp_path / "art", "--codec", codec).returncode == 0
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [(r.name, r.codec, r.bytes_encoded) for r in encoded.records] \
        == [(r["name"], r["codec"], r["bytes_encoded"]) for r in manifest["layers"]]
    assert [r.name for r in encoded.records] == (["table", "w"] if codec == "int8" else ["w"])
    assert encoded.bits_per_weight == pytest.approx(manifest["totals"]["bits_per_weight"])
    if codec == "int8":  # each row rounded to its own int8 grid: within half a step
        table = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "table"))
        step = np.abs(table).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(encoded.decoded["table"] - table) <= step / 2 + 1e-6)

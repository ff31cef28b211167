"""What real exports hold and the bundled models did not: each test fails without its fix (issue: real
exports out of the box). Models: models/embedder.py, models/dynamo_style.py."""

import json

import numpy as np
import pytest

from bie_compiler.models import write_all
from test_cli import cli

pytestmark = pytest.mark.slow  # whole-model compiles


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    return {p.stem: p for p in write_all(folder, ["embedder", "dynamo_style", "int8_source", "mlp"])}


@pytest.fixture(scope="module")
def embedder(exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedder") / "art"
    result = cli("compile", exports["embedder"], "-q", "-o", out)
    assert result.returncode == 0, result.stderr
    # TVM's warning for every Gather it legalizes ("Fast mode segfaults ...") stays off the terminal
    assert "Warning" not in result.stderr and "segfaults" not in result.stderr
    return out


def test_generated_token_ids_index_inside_their_tables(embedder):
    manifest = json.loads((embedder / "manifest.json").read_text())
    assert {i["name"]: i.get("range") for i in manifest["inputs"]} == {"input_ids": [0, 100], "token_type_ids": [0, 2]}
    result = cli("check", embedder, "--batch", "2", "--json")  # random ids in 0..7 crashed onnxruntime's Gather
    assert result.returncode == 0 and json.loads(result.stdout)["passed"], result.stdout + result.stderr


def test_an_out_of_range_token_id_is_an_error_not_a_read_past_the_table(embedder, tmp_path):
    np.savez(tmp_path / "in.npz", input_ids=np.array([[1, 100]]), token_type_ids=np.array([[0, 1]]))
    result = cli("run", embedder, "--inputs", tmp_path / "in.npz")
    assert result.returncode == 2
    assert "input 'input_ids': values must be in [0, 100)" in result.stderr


def test_verbose_shows_tvm_log(exports, tmp_path):
    result = cli("compile", exports["embedder"], "-q", "--verbose", "-o", tmp_path / "art")
    assert result.returncode == 0 and "Fast mode segfaults" in result.stderr


def test_shapes_computed_at_run_time_import_symbolic_or_fixed(exports, tmp_path):
    """The Shape -> Gather -> Concat -> Reshape chain: its constant parts reach TVM's importer as constants, so it
    follows the chain with the batch symbolic; with the batch fixed, the chain is folded before the import."""
    symbolic = cli("compile", exports["dynamo_style"], "-q", "--bits", "8", "-o", tmp_path / "symbolic")
    assert symbolic.returncode == 0, symbolic.stderr
    for batch in ("1", "3"):
        assert cli("check", tmp_path / "symbolic", "--batch", batch).returncode == 0
    assert cli("compile", exports["dynamo_style"], "-q", "--dim", "batch=2", "--bits", "8", "-o", tmp_path / "fixed").returncode == 0
    assert cli("check", tmp_path / "fixed").returncode == 0


def test_check_judges_fidelity_apart_from_correctness(exports, tmp_path):
    out = tmp_path / "binary"
    assert cli("compile", exports["mlp"], "-q", "--codec", "bie-binary", "-o", out).returncode == 0
    low = cli("check", out)  # computes its encodings exactly, but 1-bit weights move the outputs far
    assert low.returncode == 3 and "FIDELITY LOW: compiled correctly" in low.stdout, low.stdout
    figures = json.loads(cli("check", out, "--json").stdout)
    assert figures["passed"] and not figures["faithful"] and figures["cosine"] < figures["min_cosine"] == 0.95
    assert cli("check", out, "--min-cosine", "0").returncode == 0
    assert "--min-cosine" in cli("check", out, "--min-cosine", "2").stderr


def test_every_weight_is_reported_and_counted(embedder):
    manifest = json.loads((embedder / "manifest.json").read_text())
    others = {o["name"]: o for o in manifest["other_weights"]}
    assert set(others) == {"embeddings.word", "embeddings.token_type", "conv.weight", "conv.bias", "head.bias"}
    assert "1-D Conv weight" in others["conv.weight"]["fallback_reason"]
    assert others["embeddings.word"]["details"]["nodes"] == ["embeddings.words (Gather)"]
    model = manifest["model_totals"]
    assert model["weights"] == 100 * 64 + 2 * 64 + 64 * 64 * 3 + 64 + 10 * 64 + 10  # every float initializer
    assert model["bytes_dense"] == 4 * model["weights"]
    shown = cli("inspect", embedder).stdout
    assert "conv.weight" in shown and "embeddings.word" in shown and "whole model: 19530 weights" in shown


def test_patterns_and_report_name_the_nodes_of_weights_named_val_n(exports, tmp_path):
    out = tmp_path / "art"
    result = cli("compile", exports["dynamo_style"], "-q", "--dim", "batch=1", "--skip", "node_MatMul_9", "-o", out)
    assert result.returncode == 0 and "matches no weight" not in result.stderr, result.stderr
    layers = {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["layers"]}
    assert layers["val_8"]["fallback_reason"] == "in the skip list" and layers["val_3"]["codec"] == "bie-bitplane"
    assert layers["val_3"]["details"]["nodes"] == ["node_MatMul_4 (MatMul)"]
    assert "node_MatMul_4 (MatMul)" in cli("inspect", out).stdout


def test_weights_dequantized_in_the_graph_are_named_reported_and_checked(exports, tmp_path):
    out = tmp_path / "art"
    result = cli("compile", exports["int8_source"], "-q", "--skip", "fc2.weight_quantized", "-o", out)
    assert result.returncode == 0 and "matches no weight" not in result.stderr, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    layers = {r["name"]: r for r in manifest["layers"]}
    assert set(layers) == {"fc1.dequant", "fc2.dequant"}  # not unnamed_weight_N
    assert layers["fc1.dequant"]["codec"] == "bie-bitplane" and layers["fc2.dequant"]["codec"] == "dense"
    assert layers["fc1.dequant"]["details"]["source"] == {"initializer": "fc1.weight_quantized", "dtype": "int8",
                                                          "bytes": 256 * 128, "ops": ["Cast", "Mul"]}
    assert manifest["model_totals"]["bytes_source"] == 256 * 128 + 128 * 16  # one byte per weight, not four
    assert "stores them in 34816 bytes (integers or half floats" in cli("inspect", out).stdout
    checked = cli("check", out, "--json")  # refused every such artefact: "not in the source model"
    assert checked.returncode == 0 and json.loads(checked.stdout)["passed"], checked.stdout + checked.stderr


def half_weight_model(path, dtype: str):
    """x @ Cast(w, float32) + x @ Transpose(Cast(w2)), w and w2 stored as float16 or bfloat16."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    def stored(name, shape, seed):
        w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        if dtype == "float16":
            return numpy_helper.from_array(w.astype(np.float16), name)
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16: the top half of float32
        return helper.make_tensor(name, TensorProto.BFLOAT16, shape, bits.tobytes(), raw=True)

    nodes = [helper.make_node("Cast", ["w"], ["w.float"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w.float"], ["a"]),
             helper.make_node("Cast", ["w2"], ["w2.float"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["w2.float"], ["w2.t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w2.t"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                              [stored("w", (256, 64), 0), stored("w2", (64, 256), 1)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_cast_to_float_are_encoded_and_checked(tmp_path, dtype):
    model, out = half_weight_model(tmp_path / "half.onnx", dtype), tmp_path / "art"
    result = cli("compile", model, "-q", "--codec", "int8", "-o", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    layers = {r["name"]: r for r in manifest["layers"]}
    assert set(layers) == {"w.float", "w2.t"} and {r["codec"] for r in layers.values()} == {"int8"}  # was: dense
    assert layers["w2.t"]["details"]["source"] == {"initializer": "w2", "dtype": dtype, "bytes": 2 * 64 * 256,
                                                   "ops": ["Cast", "Transpose"]}
    assert manifest["model_totals"]["bytes_source"] == 2 * 2 * 256 * 64  # two bytes per weight, as stored
    checked = cli("check", model.parent / "art", "--json", "--batch", "4")
    figures = json.loads(checked.stdout)
    assert checked.returncode == 0 and figures["passed"] and figures["decoded_max_rel_err"] < 1e-4, checked.stderr
    assert figures["cosine"] > 0.9999  # against onnxruntime on the half-weight original: int8's rounding only

"""Whole models: compile with every codec, then parity against onnxruntime (batch 1 and 8)."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler.parity import check_artefact, make_inputs
from bie_compiler.runtime.artefact import LIBRARY
from check_results import assert_parity

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`

CODEC_OPTIONS = {
    "bie-bitplane": {"bits": 4},
    "bie-binary": {},
    "bie-blocked": {"density": 0.2},
    "int8": {},
    "bitwave": {"pruned_columns": 4},
}


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    """Every (model, codec) compiled once; min_weights=0 so every MatMul/Gemm is encoded."""
    root = tmp_path_factory.mktemp("artefacts")
    built = {}
    for model, path in model_dir.items():
        for codec, options in CODEC_OPTIONS.items():
            built[model, codec] = bie_compiler.compile_model(
                path, root / f"{model}-{codec}", codec, options, min_weights=0, progress=None
            )
    return built


@pytest.mark.parametrize("codec", list(CODEC_OPTIONS))
@pytest.mark.parametrize("model", ["mlp", "transformer", "cnn"])
def test_parity_with_decoded_weights_model(artefacts, model, codec):
    runner = bie_compiler.load(artefacts[model, codec])
    for batch in (1, 8):
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


def test_every_matmul_and_conv_weight_is_encoded(artefacts):
    for codec in CODEC_OPTIONS:
        layers = {l["name"]: l for l in bie_compiler.load(artefacts["cnn", codec]).manifest["layers"]}
        assert set(layers) == {"fc.weight", "conv1.weight", "conv2.weight", "conv3.weight"}
        assert all(l["codec"] == codec and l["fallback_reason"] is None for l in layers.values()), layers
    mlp = bie_compiler.load(artefacts["mlp", "bie-binary"]).manifest
    assert {l["name"] for l in mlp["layers"]} == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert {l["transposed"] for l in mlp["layers"] if l["name"] == "fc2.weight"} == {True}  # Gemm transB=1


@pytest.mark.parametrize("codec", list(CODEC_OPTIONS))
def test_artefact_size_shows_the_compression(artefacts, codec):
    """The dense weights must not come back (e.g. through constant folding) into model.so."""
    manifest = bie_compiler.load(artefacts["mlp", codec]).manifest
    totals = manifest["totals"]
    so_bytes = (artefacts["mlp", codec] / LIBRARY).stat().st_size
    assert totals["bytes_encoded"] < totals["bytes_dense"] / 3.9  # int8: 8 bits and a scale per channel
    # model.so = encoded weights + biases + code (each layer's one-row kernel and its many-row GEMM with the
    # epilogue fused: 0.4-0.5 MB), well under the 1 MiB of dense weights that folding would bring back
    assert so_bytes < totals["bytes_encoded"] + 600_000 < totals["bytes_dense"]


def test_runner_by_name_and_symbolic_batch(artefacts):
    runner = bie_compiler.load(artefacts["transformer", "bie-bitplane"])
    assert runner.input_names == ["x"] and runner.output_names == ["y"]
    x = np.random.default_rng(0).standard_normal((3, 16, 128)).astype(np.float32)
    y = runner({"x": x})["y"]
    assert y.shape == (3, 16, 128)
    # batch rows are independent: row 1 alone gives the same result
    np.testing.assert_allclose(runner({"x": x[1:2]})["y"][0], y[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(bie_compiler.BieError, match="expected float32"):
        runner({"x": x[:, :, :64]})


def test_policy_skip_override_and_min_weights(model_dir, tmp_path):
    out = bie_compiler.compile_model(
        model_dir["transformer"], tmp_path / "a", "bie-bitplane", {"bits": 4},
        skip=("blocks.attn.q.*",), overrides=(("blocks.ffn.*", {"bits": 8}), ("blocks.ffn.fc2.weight", {"codec": "bie-binary"})),
        min_weights=20000, progress=None,
    )
    runner = bie_compiler.load(out)
    layers = {l["name"]: l for l in runner.manifest["layers"]}
    assert layers["blocks.attn.q.weight"]["fallback_reason"] == "in the skip list"
    assert "min_weights" in layers["blocks.attn.k.weight"]["fallback_reason"]  # 16384 < 20000
    assert layers["blocks.ffn.fc1.weight"]["config"]["bits"] == 8
    assert layers["blocks.ffn.fc1.weight"]["bits_per_weight"] > 8
    assert layers["blocks.ffn.fc2.weight"]["codec"] == "bie-binary"  # another codec starts from its defaults
    assert layers["blocks.ffn.fc2.weight"]["config"] == {"threshold": 0.0, "density": 0.0, "layout": "auto", "rotate": False}
    assert check_artefact(runner, inputs=make_inputs(runner.inputs, batch=2))["passed"]

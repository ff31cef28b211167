"""Whole models with ``bbs`` (both presets): every MatMul/Gemm and Conv weight encoded, parity at batch 1 and 8."""

import pytest

import bie_compiler
from bie_compiler.codecs import bbs
from bie_compiler.parity import check_artefact, make_inputs
from check_results import assert_parity

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`

PRESETS = list(bbs.PRESETS)


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bbs-artefacts")
    return {
        (model, preset): bie_compiler.compile_model(path, root / f"{model}-{preset}", "bbs", {"preset": preset},
                                                    min_weights=0, progress=None)
        for model, path in model_dir.items()
        for preset in PRESETS
    }


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", ["mlp", "transformer", "cnn"])
def test_parity_with_decoded_weights_model(artefacts, model, preset):
    runner = bie_compiler.load(artefacts[model, preset])
    for layer in runner.manifest["layers"]:
        assert layer["codec"] == "bbs", layer  # convs included
    for batch in (1, 8):
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


def test_cnn_with_every_channel_pruned(model_dir, tmp_path):
    """The CNN's layers are narrower than 32 channels, so the presets keep them all INT8; beta = 0 prunes them all."""
    out = bie_compiler.compile_model(model_dir["cnn"], tmp_path / "cnn", "bbs", {"sensitive_fraction": 0.0},
                                     min_weights=0, progress=None)
    runner = bie_compiler.load(out)
    assert {l["details"]["header.sensitive"] for l in runner.manifest["layers"]} == {0}
    for batch in (1, 8):
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


def test_plan_records_sensitive_counts_that_reencode(artefacts):
    """The recorded per-layer config fixes the sensitive count (a multiple of 32, or the whole layer)."""
    for preset in PRESETS:
        for layer in bie_compiler.load(artefacts["transformer", preset]).manifest["layers"]:
            count, channels = layer["config"]["sensitive_channels"], layer["shape"][1 if layer["op"] == "matmul" and not layer["transposed"] else 0]
            assert count == channels or count % 32 == 0, layer
            assert layer["details"]["header.sensitive"] == count

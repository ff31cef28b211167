"""Whole models with the nwc codec: the weights decoded when the artefact is loaded or (``nwc_decode="per-call"``) on
every call, parity against onnxruntime on the decoded weights at batch 1 and 8, every coded byte counted and the
shared synthesis network stored once."""

import pytest

import bie_compiler
from bie_compiler.codecs import nwc_network, nwc_tables
from bie_compiler.parity import check_artefact, make_inputs

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`

RUNS = {"mlp": ("mlp", {"quality": 8}), "transformer": ("transformer", {"bits_per_weight": 4.5}),
        "cnn": ("cnn", {"quality": 6}), "mlp per-call": ("mlp", {"quality": 8, "nwc_decode": "per-call"}),
        "cnn float16": ("cnn", {"float16": True}),  # every layer a float16 one: widened at load, or per call
        "cnn float16 per-call": ("cnn", {"float16": True, "nwc_decode": "per-call"})}


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("nwc")
    return {run: bie_compiler.compile_model(model_dir[model], root / run.replace(" ", "_"), "nwc", options,
                                            min_weights=0, progress=None)
            for run, (model, options) in RUNS.items()}


@pytest.mark.parametrize("run", list(RUNS))
def test_parity_on_the_decoded_weights(artefacts, run):
    model, options = RUNS[run]
    runner = bie_compiler.load(artefacts[run])
    per_call = options.get("nwc_decode") == "per-call"
    # per call: nothing is computed at load (the dense layers' panels are packed at compile time)
    assert runner.manifest["weights"].get("at_load") == (None if per_call else "main_transform_params")
    layers = runner.manifest["layers"]
    # a layer of a few hundred weights stays dense: its 16 latent streams cost more than its float32 weights
    assert all(l["codec"] == "nwc" or "no smaller than dense" in l["fallback_reason"] for l in layers)
    # the cnn's convs and its classifier (small, coded with bank tables and one tANS state per latent stream)
    assert {l["op"] for l in layers if l["codec"] == "nwc"} == ({"conv2d", "matmul"} if model == "cnn" else {"matmul"})
    for batch in (1, 8):
        result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch))
        assert result["decoded_max_rel_err"] < 1e-5, result  # the decoders' float rounding only
        assert result["passed"], result


@pytest.mark.parametrize("run", list(RUNS))
def test_every_coded_byte_is_counted_and_the_network_stored_once(artefacts, run):
    options = RUNS[run][1]
    manifest = bie_compiler.load(artefacts[run]).manifest
    totals, layers = manifest["totals"], manifest["layers"]
    assert totals["bytes_encoded"] == sum(l["bytes_encoded"] for l in layers)
    if "bits_per_weight" in options:
        assert 8 * totals["bytes_encoded"] <= options["bits_per_weight"] * totals["weights"]
    elif "float16" in options:
        coded = [l for l in layers if l["codec"] == "nwc"]
        assert {l["details"]["scalar"] for l in coded} == {"float16"}
        assert all(l["details"]["overhead_bits"] == 8 * l["bytes_encoded"] - 16 * (l["bytes_dense"] // 4) for l in coded)
    else:
        assert {q for l in layers if l["codec"] == "nwc" for q in l["details"]["quality_levels"]} == {options["quality"]}
    network = sum(a.nbytes for name, a in nwc_network.load().params.items() if name.startswith("synthesis."))
    network += nwc_tables.bank().nbytes  # the decoders read the shared table bank, like the network: one copy
    dense = sum(w["bytes_encoded"] for w in manifest["other_weights"])
    # the weights file: the encodings' arrays (less checksums and headers, plus alignment), the layers left dense, and
    # the synthesis network and table bank once (a copy per layer would be off by ``network`` per layer), none where the budget plan
    # coded every layer as tans (scalar layers: the transformer's random weights) or every layer is float16
    by_network = any(l["codec"] == "nwc" and "scalar" not in l["details"] for l in layers)
    beyond = manifest["weights"]["bytes"] - totals["bytes_encoded"] - dense
    assert abs(beyond - (network if by_network else 0)) < 1024 * len(layers) < network
    assert by_network == ("quality" in options)


def test_command_line(model_dir, tmp_path):
    """--codec nwc through the CLI (check passes at batch 2); an unknown --nwc-decode is a clear error."""
    from test_cli import cli

    out = tmp_path / "out"
    result = cli("compile", model_dir["mlp"], "--codec", "nwc", "--quality", "4", "--min-weights", "0", "-o", out)
    assert result.returncode == 0, result.stderr
    assert cli("check", out, "--batch", "2").returncode == 0
    bad = cli("compile", model_dir["mlp"], "--codec", "nwc", "--nwc-decode", "sometimes", "-o", tmp_path / "bad")
    assert bad.returncode == 2 and "nwc_decode must be load or per-call" in bad.stderr

"""Whole models with the tans codec: budgets 2, 3 and 4 bits/weight, parity against onnxruntime at batch 1 and 8
(at batch 1 the load execution's GEMVs of layers up to 15 levels have int8 look-up tables on a CPU with AVX-512
VNNI: each within its stated bound); both executions (``--tans-execution load|stream``) storing the same bytes."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler.codegen.kernels import lut
from bie_compiler.errors import CodecError
from bie_compiler.parity import check_artefact, make_inputs
from check_results import assert_parity

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`

BUDGETS = (2.0, 3.0, 4.0)
CNN_OPTIONS = {"budget-3": {"bits_per_weight": 3.0}, "levels-3": {"levels": 3}}


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    """mlp and transformer at every budget, the cnn (convs included) at 3 bits/weight and 3 levels; min_weights=0."""
    root = tmp_path_factory.mktemp("tans")
    built = {}
    runs = [(m, f"budget-{b:g}", {"bits_per_weight": b}) for m in ("mlp", "transformer") for b in BUDGETS]
    runs += [("cnn", name, options) for name, options in CNN_OPTIONS.items()]
    for model, name, options in runs:
        built[model, name] = bie_compiler.compile_model(
            model_dir[model], root / f"{model}-{name}", "tans", options, min_weights=0, progress=None
        )
    return built


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_parity_and_budget(artefacts, model, budget):
    runner = bie_compiler.load(artefacts[model, f"budget-{budget:g}"])
    totals = runner.manifest["totals"]
    assert totals["encoded_layers"] == totals["layers"]
    assert 8 * totals["bytes_encoded"] <= budget * totals["weights"]
    for layer in runner.manifest["layers"]:
        assert layer["codec"] == "tans" and layer["config"]["levels"] % 2 == 1 and layer["config"]["bits_per_weight"] == 0
    for batch in (1, 8):
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


@pytest.mark.parametrize("name", list(CNN_OPTIONS))
def test_cnn_parity(artefacts, name):
    runner = bie_compiler.load(artefacts["cnn", name])
    assert {l["codec"] for l in runner.manifest["layers"]} == {"tans"}  # convs included
    for batch in (1, 8):
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_cnn_budget_below_its_fixed_overhead_is_a_clear_error(model_dir, tmp_path, budget):
    """The cnn's layers hold 320 to 9216 weights: headers, steps and stream offsets alone cost > 2 bits/weight."""
    with pytest.raises(CodecError, match="below the smallest coding"):
        bie_compiler.compile_model(model_dir["cnn"], tmp_path / "x", "tans", {"bits_per_weight": budget},
                                   min_weights=0, progress=None)


def test_command_line(model_dir, tmp_path):
    """--codec tans with a budget through the CLI; a bad level count is a clear option error."""
    import json

    from test_cli import cli

    out = tmp_path / "out"
    result = cli("compile", model_dir["mlp"], "--codec", "tans", "--bits-per-weight", "2.5", "--table-log", "10",
                 "--min-weights", "0", "-o", out)
    assert result.returncode == 0, result.stderr
    layers = json.loads(cli("inspect", out, "--json").stdout)["layers"]
    assert {l["config"]["table_log"] for l in layers} == {10}
    assert sum(8 * l["bytes_encoded"] for l in layers) <= 2.5 * sum(np.prod(l["shape"]) for l in layers)
    assert cli("check", out, "--batch", "2").returncode == 0
    bad = cli("compile", model_dir["mlp"], "--codec", "tans", "--levels", "4", "-o", tmp_path / "bad")
    assert bad.returncode == 2 and "levels must be odd" in bad.stderr


def test_a_calibrated_budget_fits_what_feedback_stores(model_dir, tmp_path, capsys):
    """--bits-per-weight with --calibration (rotated, act-order): the stored bytes fit the budget (the feedback's
    codes, not the round-to-nearest ones the levels were chosen on); check re-encodes them bit for bit and
    computes them."""
    import json

    from bie_compiler.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        x = np.random.default_rng(40 + i).standard_normal((16, 16, 128)).astype(np.float32)
        np.savez(calib / f"part{i}.npz", x=x)
    out = tmp_path / "out"
    assert main(["compile", str(model_dir["transformer"]), "--codec", "tans", "--bits-per-weight", "3", "--rotate",
                 "--calibration", str(calib), "--act-order", "--min-weights", "0", "-q", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["encoded_layers"] == totals["layers"] and 8 * totals["bytes_encoded"] <= 3.0 * totals["weights"]
    assert all(layer["details"]["feedback"] == "gptq" for layer in manifest["layers"])
    capsys.readouterr()
    assert main(["check", str(out), "--batch", "2", "--json", "--min-cosine", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["decoded_max_rel_err"] < 1e-4


@pytest.fixture(scope="module")
def executions(model_dir, tmp_path_factory):
    """The mlp at 15 levels (at load: the int8 tables' bytes with AVX-512 VNNI, else the look-up-table kernel's planes
    or the integer kernels' 4-bit codes) and the transformer at 63 (fp32 tables' planes or 8-bit codes), run both
    ways."""
    root = tmp_path_factory.mktemp("tans-execution")
    return {(model, e): bie_compiler.compile_model(model_dir[model], root / f"{model}-{e}", "tans",
                                                   {"levels": levels, "tans_execution": e}, min_weights=0, progress=None)
            for model, levels in (("mlp", 15), ("transformer", 63)) for e in ("load", "stream")}


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_load_execution_stores_the_streams_and_computes_what_they_define(executions, model, target):
    load, stream = (bie_compiler.load(executions[model, e]) for e in ("load", "stream"))
    for key in ("bytes", "tans_streams", "tensors"):
        assert load.manifest["weights"][key] == stream.manifest["weights"][key], key
    assert load.manifest["totals"] == stream.manifest["totals"]
    assert load.manifest["weights"]["at_load"] == "main_transform_params" and "at_load" not in stream.manifest["weights"]
    assert {l["config"]["tans_execution"] for l in load.manifest["layers"]} == {"load"}
    int8_tables = model == "mlp" and lut.int8_supported(target)
    for batch in (1, 8):
        inputs = make_inputs(load.inputs, batch=batch, seed=batch)
        result = check_artefact(load, inputs=inputs)
        assert_parity(result, 1e-4)
        layers = result.get("int8_table_layers", [])
        if int8_tables:  # every layer's int8-table GEMV: in the model's call at one row, approximate within its bound
            assert [layer["layer"] for layer in layers] == [r["name"] for r in load.manifest["layers"]]
            assert all(0 < layer["error_rel"] <= layer["bound_rel"] and layer["in_model"] == (batch == 1)
                       for layer in layers), layers
        else:
            assert not layers
        if batch > 1 or not int8_tables:  # the same product as the stream kernel's
            got, want = (list(r(inputs).values())[0] for r in (load, stream))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())

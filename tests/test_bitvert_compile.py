"""The bitvert target end to end: bbs layers offloaded to the simulated device, parity, calibration, the report."""

import json
import subprocess
import sys

import numpy as np
import pytest

import bie_compiler
from bie_compiler.codecs import bbs
from bie_compiler.codegen import bitvert
from bie_compiler.parity import BITVERT_TOLERANCE, check_artefact, make_inputs
from bie_compiler.runtime.bitvert import device, perf_model, simulator

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`

PRESETS = list(bbs.PRESETS)
MODELS = ["mlp", "transformer", "cnn"]


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bitvert")
    return {
        (model, preset): bie_compiler.compile_model(model_dir[model], root / f"{model}-{preset}", "bbs",
                                                    {"preset": preset}, target="bitvert", min_weights=0, progress=None)
        for model in MODELS for preset in PRESETS
    }


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("model", MODELS)
def test_parity_within_what_int8_activations_imply(artefacts, model, preset):
    runner = bie_compiler.load(artefacts[model, preset])
    manifest = runner.manifest
    assert manifest["target"]["kind"] == "bitvert"
    offloaded = [name for name, _ in manifest["bitvert"]["layers"]]
    assert offloaded == [layer["name"] for layer in manifest["layers"]]  # every layer is bbs, convs included
    assert all(layer["details"]["offloaded_to"] == "bitvert" for layer in manifest["layers"])
    for batch in (1, 8):
        device.RUN_LOG.clear()
        result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch))
        assert [index for index, _ in device.RUN_LOG] == list(range(len(offloaded)))  # each layer ran on the device
        assert result["tolerance"] == BITVERT_TOLERANCE and result["passed"], result
        assert result["decoded_max_rel_err"] < 1e-5  # no activation crossed a rounding boundary here
        # against the original model, the artefact is as good as INT8 activations and BBS weights allow, no worse
        assert result["max_rel_err"] <= result["implied_max_rel_err"] + 1e-5
        assert result["cosine"] >= result["implied_cosine"] - 1e-6 and result["cosine"] > 0.98


@pytest.mark.parametrize("preset", PRESETS)
def test_programs_of_real_encodings_are_bit_exact(preset):
    """The program built from a bbs encoding computes the pruned INT8 weights exactly, awkward shapes included."""
    rng = np.random.default_rng(7)
    for n, k in [(70, 300), (64, 27), (33, 64)]:
        w = (rng.standard_t(5, (n, k)) * rng.lognormal(0, 0.5, (n, 1))).astype(np.float32)
        config = bbs.Config(preset=preset)
        program = bitvert.program(bbs.encode(w, config), 0.05, "fc")
        values, scales, _, _ = bbs.prune(w, config)
        xq = rng.integers(-127, 128, (5, k)).astype(np.int8)
        assert np.array_equal(simulator.execute(program, xq), xq.astype(np.int64) @ values.T.astype(np.int64))
        assert np.array_equal(program.scales, scales) and program.sensitive_rows == min(n, 32)


def test_only_bbs_layers_are_offloaded(model_dir, tmp_path):
    out = bie_compiler.compile_model(model_dir["mlp"], tmp_path / "a", "bbs", {"preset": "moderate"}, target="bitvert",
                                     overrides=(("fc2.weight", {"codec": "bie-bitplane", "bits": 4}),), progress=None)
    runner = bie_compiler.load(out)
    layers = {layer["name"]: layer for layer in runner.manifest["layers"]}
    assert "offloaded_to" not in layers["fc2.weight"]["details"] and layers["fc2.weight"]["codec"] == "bie-bitplane"
    assert [name for name, _ in runner.manifest["bitvert"]["layers"]] == ["fc1.weight", "fc3.weight"]
    device.RUN_LOG.clear()
    assert check_artefact(runner, inputs=make_inputs(runner.inputs, batch=3))["passed"]
    assert device.RUN_LOG == [(0, 3), (1, 3)]


def test_calibration_inputs_set_the_activation_scales(model_dir, tmp_path):
    x = np.random.default_rng(3).standard_normal((16, 256)).astype(np.float32) * 2
    np.savez(tmp_path / "calib.npz", x=x)
    out = bie_compiler.compile_model(model_dir["mlp"], tmp_path / "a", "bbs", {}, target="bitvert",
                                     calibration=tmp_path / "calib.npz", progress=None)
    manifest = bie_compiler.load(out).manifest
    assert manifest["bitvert"]["calibration"] == str(tmp_path / "calib.npz")
    first = next(layer for layer in manifest["layers"] if layer["name"] == "fc1.weight")
    assert first["details"]["activation_scale"] == pytest.approx(np.abs(x).max() / 127, rel=1e-6)


def test_cli_compile_check_run_report(model_dir, tmp_path):
    cli = [sys.executable, "-m", "bie_compiler"]
    out, report = tmp_path / "out", tmp_path / "sim.json"
    compiled = subprocess.run([*cli, "compile", str(model_dir["transformer"]), "--codec", "bbs", "--preset", "moderate",
                               "--target", "bitvert", "-o", str(out)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    assert "seeded random inputs" in compiled.stderr and "offloaded to bitvert" in compiled.stdout
    checked = subprocess.run([*cli, "check", str(out), "--batch", "2"], capture_output=True, text=True)
    assert checked.returncode == 0 and "PASSED" in checked.stdout, checked.stdout + checked.stderr
    ran = subprocess.run([*cli, "run", str(out), "--batch", "2", "--report", str(report)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(report.read_text())
    layers = json.loads((out / "manifest.json").read_text())["bitvert"]["layers"]
    assert [layer["name"] for layer in result["layers"]] == [name for name, _ in layers]
    assert all(layer["m"] == 2 * 16 for layer in result["layers"])  # batch 2 x 16 tokens
    for acc in perf_model.ACCELERATORS:
        assert result["accelerators"][acc]["cycles"] > 0 and result["accelerators"][acc]["energy_pj"] > 0
    stripes, bitvert_cycles = result["accelerators"]["stripes"]["cycles"], result["accelerators"]["bitvert"]["cycles"]
    assert result["bitvert_vs"]["stripes"]["speedup"] == pytest.approx(stripes / bitvert_cycles)
    assert "BitVert over stripes" in ran.stdout


def test_missing_calibration_data_is_refused_before_any_work(model_dir, tmp_path, capsys):
    from bie_compiler.cli import main

    argv = ["compile", str(model_dir["mlp"]), "--codec", "bbs", "-o", str(tmp_path / "out"), "--target", "bitvert",
            "--calibration", str(tmp_path / "missing.npz")]
    assert main(argv) == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert "missing.npz: no such file or folder" in err and "encoding" not in err


def test_nothing_to_offload_is_said(model_dir, tmp_path):
    cli = [sys.executable, "-m", "bie_compiler"]
    out = tmp_path / "out"
    compiled = subprocess.run([*cli, "compile", str(model_dir["mlp"]), "--codec", "bie-bitplane", "--target", "bitvert",
                               "-q", "-o", str(out)], capture_output=True, text=True)
    assert compiled.returncode == 0 and "offloads bbs-encoded layers only" in compiled.stderr
    ran = subprocess.run([*cli, "run", str(out), "--report", str(tmp_path / "sim.json")], capture_output=True, text=True)
    assert ran.returncode == 2 and "no layer of" in ran.stderr and "Traceback" not in ran.stderr
    assert not (tmp_path / "sim.json").exists()

"""bitvert parity on a deep model: each device layer against its reference on its own inputs (strict), INT8
rounding flips between the artefact's and onnxruntime's layer inputs found and located, and the verdict."""

import json

import numpy as np
import pytest

import bie_compiler
from bie_compiler.parity import LAYER_TOLERANCE, bitvert_passed, check_artefact
from bie_compiler.runtime.bitvert import device
from deep_cnn import deep_cnn


def _layer(name, device_rel_err=1e-7, input_rel_diff=1e-7, flips=0):
    return {"layer": name, "device_rel_err": device_rel_err, "input_rel_diff": input_rel_diff, "flips": flips}


def test_the_verdict_past_a_flip_rests_on_the_layers_and_the_inputs_up_to_it():
    clean = [_layer("a"), _layer("b")]
    assert bitvert_passed(clean, end_to_end=1e-6, tolerance=1e-3)
    assert not bitvert_passed(clean, end_to_end=2e-3, tolerance=1e-3)  # no flip: nothing excuses the difference
    flipped = [_layer("a"), _layer("b", flips=2), _layer("c", input_rel_diff=3e-3, flips=40)]
    assert bitvert_passed(flipped, end_to_end=0.05, tolerance=1e-3)  # c's input moved because b's codes flipped
    assert not bitvert_passed([_layer("a", input_rel_diff=1e-3), *flipped[1:]], 0.05, 1e-3)  # moved before the flip
    assert not bitvert_passed([*clean, _layer("c", device_rel_err=2 * LAYER_TOLERANCE)], 1e-6, 1e-3)


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    model = deep_cnn(root / "deep.onnx", depth=12, silu=True)
    np.savez(root / "calibration.npz", image=np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32))
    out = bie_compiler.compile_model(model, root / "art", "bbs", target="bitvert", calibration=root / "calibration.npz",
                                     progress=None)
    return bie_compiler.load(out)


@pytest.mark.slow  # a compile and simulated runs
def test_every_device_layer_matches_its_reference_on_its_own_inputs(deep):
    inputs = {"image": np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32)}
    result = check_artefact(deep, inputs=inputs)
    layers = result["device_layers"]
    assert [layer["layer"] for layer in layers] == [name for name, _ in deep.manifest["bitvert"]["layers"]]
    assert result["passed"] and max(layer["device_rel_err"] for layer in layers) < 1e-6
    assert all(layer["input_rel_diff"] < 1e-4 for layer in layers if not layer["flips"])
    json.dumps(result)  # --json prints it


@pytest.mark.slow
def test_a_device_off_by_a_little_fails_layer_by_layer(deep, monkeypatch):
    """A device error of 2e-5 a layer: each layer says so, whatever the flips it causes downstream do."""
    real = device.run_layer
    monkeypatch.setattr(device, "run_layer", lambda program, x: real(program, x) * np.float32(1 + 2e-5))
    result = check_artefact(deep, inputs={"image": np.random.default_rng(2).standard_normal((1, 3, 12, 12)).astype(np.float32)})
    assert not result["passed"]
    assert min(layer["device_rel_err"] for layer in result["device_layers"]) > LAYER_TOLERANCE

"""`bie-compiler run`: outputs of an artefact, and the accelerator report's refusal on non-bitvert artefacts."""

import subprocess
import sys

import numpy as np
import pytest

import bie_compiler
from bie_compiler.parity import make_inputs

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`


def test_run_writes_outputs_and_refuses_report_for_llvm(model_dir, tmp_path):
    out = bie_compiler.compile_model(model_dir["mlp"], tmp_path / "a", "bie-bitplane", {"bits": 4}, progress=None)
    npz = tmp_path / "y.npz"
    cmd = [sys.executable, "-m", "bie_compiler", "run", str(out), "--batch", "3", "-o", str(npz)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    runner = bie_compiler.load(out)
    expected = runner(make_inputs(runner.inputs, 3, 0))
    with np.load(npz) as got:
        assert sorted(got.files) == sorted(expected)
        for name, value in expected.items():
            assert np.array_equal(got[name], value)
            assert f"{name}: float32 {list(value.shape)}" in result.stdout

    refused = subprocess.run([*cmd[:5], "--report", str(tmp_path / "sim.json")], capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "needs an artefact compiled with --target bitvert" in refused.stderr
    assert not (tmp_path / "sim.json").exists()

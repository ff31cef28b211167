"""NaN and Inf inputs give NaN where onnxruntime gives NaN (dense layers and ReLU)."""

import numpy as np
import onnxruntime as ort
import pytest

import bie_compiler
from hostile_corpus import save, tiny_model


def test_relu_and_dense_layers_keep_nan_and_inf(tmp_path):
    model = save(tmp_path, tiny_model())
    out = bie_compiler.compile_model(model, tmp_path / "art", "bie-bitplane", skip=("*",), progress=None)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    x[0, 3], x[1, 5], x[2, 7] = np.nan, np.inf, -np.inf
    ours = bie_compiler.load(out)({"x": x})["y"]
    ref = ort.InferenceSession(model).run(None, {"x": x})[0]
    assert np.isnan(ref).sum() > 0
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_check_finite_refuses_what_encoded_kernels_do_not_match(tmp_path):
    """Where an encoded kernel's arithmetic differs from onnxruntime's (a tANS GEMV sums in integer levels,
    overflowing float32 at |x| ~ 1e37 where onnxruntime's sums stay finite), check_finite says so."""
    model = save(tmp_path, tiny_model())
    out = bie_compiler.compile_model(model, tmp_path / "art", "tans", min_weights=0, progress=None)
    x = (np.random.default_rng(0).standard_normal((1, 64)) * 1e37).astype(np.float32)
    assert np.isfinite(ort.InferenceSession(model).run(None, {"x": x})[0]).all()
    assert not np.isfinite(bie_compiler.load(out)({"x": x})["y"]).all()
    checked = bie_compiler.load(out, check_finite=True)
    with pytest.raises(bie_compiler.BieError, match="output 'y' is not finite though every input was"):
        checked({"x": x})
    x[0, 0] = np.nan
    with pytest.raises(bie_compiler.BieError, match="input 'x' holds NaN or Inf"):
        checked({"x": x})
    ones = np.ones((1, 64), np.float32)
    np.testing.assert_array_equal(checked({"x": ones})["y"], bie_compiler.load(out)({"x": ones})["y"])

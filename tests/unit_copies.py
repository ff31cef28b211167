"""Checks shared by the tests of the unit-dimensions copy of ``main`` (codegen/unit_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import tvm

import bie_compiler
from bie_compiler.codegen.unit_dims import ANY_DIMS


def compile_as(path: Path, out: Path, codec: str) -> Path:
    """``path`` compiled dense (``codec`` "dense": every weight skipped) or with ``codec`` at 4 bits, its GEMVs' look-up
    tables the exact ones (the unit copy's GEMV then equals the general copy's GEMM to fp32 rounding)."""
    options = {"skip": ("*",)} if codec == "dense" else {"codec": codec, "options": {"bits": 4, "lut_tables": "fp32"}}
    return bie_compiler.compile_model(path, out, progress=None, **options)


def assert_unit_copy_exact(artefact: Path, x: np.ndarray, onnx_path: Path | None = None) -> None:
    """The loaded artefact's output for ``x`` (an all-ones shape: the unit copy runs) equals its general copy's and,
    given ``onnx_path`` (a dense artefact), onnxruntime's on the source model."""
    runner = bie_compiler.load(artefact)
    got = runner({"x": x})["y"]
    general = runner.vm[ANY_DIMS](tvm.runtime.tensor(x), *runner.weights).numpy()
    np.testing.assert_allclose(got, general, rtol=1e-5, atol=1e-5 * np.abs(got).max())
    if onnx_path is not None:
        want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

"""Progressive precision at load: one bie-bitplane artefact run with fewer magnitude planes holds the weights
of the artefact compiled with that many (``compile --planes``): the same outputs, bit for bit where both run
the same kernel (the panel GEMM above one row), to float rounding at one row (4 bits: the integer GEMV
against the bit-serial kernel of fewer planes)."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler.errors import BieError

pytestmark = pytest.mark.slow  # whole-model compiles


def test_planes_at_load_equal_planes_at_compile(model_dir, tmp_path):
    full = bie_compiler.compile_model(model_dir["mlp"], tmp_path / "full", "bie-bitplane", {"bits": 4}, progress=None)
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    outputs = []
    for planes in (1, 2, 3):
        cut = bie_compiler.compile_model(model_dir["mlp"], tmp_path / f"p{planes}", "bie-bitplane",
                                         {"bits": 4, "planes": planes}, progress=None)
        one = bie_compiler.load(full, planes=planes)({"x": x[:1]})["logits"]
        want = bie_compiler.load(cut)({"x": x[:1]})["logits"]
        assert np.abs(one - want).max() <= 1e-5 * np.abs(want).max()
        at_load = bie_compiler.load(full, planes=planes)({"x": x})["logits"]
        np.testing.assert_array_equal(at_load, bie_compiler.load(cut)({"x": x})["logits"])
        outputs.append(at_load)
    np.testing.assert_array_equal(outputs[-1], bie_compiler.load(full)({"x": x})["logits"])  # 3 = all stored
    assert np.abs(outputs[0] - outputs[2]).max() > 0  # fewer planes: another model
    with pytest.raises(BieError, match="planes: expected a positive integer"):
        bie_compiler.load(full, planes=0)
    dense = bie_compiler.compile_model(model_dir["mlp"], tmp_path / "dense", "bbs", progress=None)
    with pytest.raises(BieError, match="no bie-bitplane layer"):
        bie_compiler.load(dense, planes=1)

"""Progressive precision at load: one bie-bitplane artefact run with fewer magnitude planes holds the weights
of the artefact compiled with that many (``compile --planes``): the same outputs, bit for bit where both run
the same kernel (the panel GEMM above one row), to float rounding at one row (the look-up-table GEMV of more
planes, the low ones zero, against that of fewer). Both with the exact fp32 tables and with the default's int8
tables (4 bits; compiled with fewer planes, int8 tables asked for: the int8 GEMV at every plane count, whose
rounded table entries the zero planes do not change)."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler.codegen.kernels import lut
from bie_compiler.errors import BieError

pytestmark = pytest.mark.slow  # whole-model compiles


@pytest.mark.parametrize("full_tables,cut_tables", [("fp32", "fp32"), ("auto", "int8")])
def test_planes_at_load_equal_planes_at_compile(model_dir, tmp_path, target, full_tables, cut_tables):
    if cut_tables == "int8" and not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    full = bie_compiler.compile_model(model_dir["mlp"], tmp_path / "full", "bie-bitplane",
                                      {"bits": 4, "lut_tables": full_tables}, progress=None)
    progressive = bie_compiler.load(full).manifest["weights"]["progressive"]
    assert {entry["form"] for entry in progressive} == {"int8_nibbles" if cut_tables == "int8" else "lut_planes"}
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    outputs = []
    for planes in (1, 2, 3):
        cut = bie_compiler.compile_model(model_dir["mlp"], tmp_path / f"p{planes}", "bie-bitplane",
                                         {"bits": 4, "planes": planes, "lut_tables": cut_tables}, progress=None)
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

"""``--lut-tables int8`` for ``bie-bitplane`` and ``bbs``: a kernel option (the stored bytes unchanged), int8 tables
up to 4 planes and fp32 above with the reason recorded, and ``check`` of such an artefact against each GEMV's stated
bound."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler import codecs
from bie_compiler.codecs import bie_bitplane
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import bitplane_lut, lut
from bie_compiler.errors import BieError, CodecError
from bie_compiler.parity import check_artefact, make_inputs


def test_lut_tables_is_a_kernel_option_of_the_same_bytes():
    w = np.random.default_rng(0).standard_t(5, (24, 70)).astype(np.float32)
    config = bie_bitplane.Config(lut_tables="int8")
    assert codecs.kernel_options(config) == {"lut_tables": "int8"}
    assert bie_bitplane.encode(w, config).sha256() == bie_bitplane.encode(w, bie_bitplane.Config()).sha256()
    with pytest.raises(CodecError, match="lut_tables must be one of fp32, int8"):
        bie_bitplane.Config(lut_tables="fp16")


def test_int8_tables_beyond_4_planes_fall_back_to_fp32_with_the_reason():
    assert codecs.kernel_fallbacks(bie_bitplane.Config(bits=4, lut_tables="int8")) == {}
    assert codecs.kernel_fallbacks(bie_bitplane.Config(bits=5)) == {}
    assert "at most 4 planes" in codecs.kernel_fallbacks(bie_bitplane.Config(bits=5, lut_tables="int8"))["lut_tables"]
    assert codecs.kernel_fallbacks(bie_bitplane.Config(bits=8, planes=3, lut_tables="int8")) == {}  # 3 kept + sign


@pytest.mark.parametrize("bits,tables", [(3, "int8"), (4, "int8"), (5, "fp32")])
def test_kernel_for_builds_the_tables_that_fit(bits, tables, target):
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    enc = bie_bitplane.encode(np.random.default_rng(bits).standard_t(5, (20, 96)).astype(np.float32),
                              bie_bitplane.Config(bits=bits))
    call = kernel_for(enc, target, lut_tables="int8")
    layout, codes, _ = bie_compiler.codegen.kernels.bitplane.lut_parts(enc)
    np.testing.assert_array_equal(call.constants[0], bitplane_lut.words_of(codes, layout.magnitude_planes, tables))


@pytest.fixture(scope="module")
def int8_mlp(model_dir, tmp_path_factory, target):
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    out = tmp_path_factory.mktemp("lut-tables") / "mlp"
    bie_compiler.compile_model(model_dir["mlp"], out, "bie-bitplane", {"bits": 4, "lut_tables": "int8"},
                               min_weights=0, progress=None)
    return bie_compiler.load(out)


def test_check_bounds_each_int8_table_gemv_on_its_layer_input(int8_mlp):
    """One row: each layer's GEMV has int8 tables, its error within the stated bound and not zero (the tables are
    approximate), the end-to-end difference from the decoded-weights model reported."""
    result = check_artefact(int8_mlp, inputs=make_inputs(int8_mlp.inputs, batch=1, seed=1), min_cosine=0)
    layers = result["int8_table_layers"]
    assert [layer["layer"] for layer in layers] == [r["name"] for r in int8_mlp.manifest["layers"]]
    for layer in layers:
        assert 0 < layer["error_rel"] <= layer["bound_rel"] and layer["passed"], layer
    assert result["passed"] and result["decoded_max_rel_err"] > 0


def test_planes_at_load_refuse_int8_tables_and_say_why(int8_mlp):
    """The int8 tables' words are bytes of codes, not planes: nothing of the artefact can be cut at load."""
    assert int8_mlp.manifest["weights"]["progressive"] == []
    with pytest.raises(BieError, match=r"bie-bitplane layers use int8 look-up tables, whose planes cannot be cut at "
                                       r"load; compile with --lut-tables fp32"):
        bie_compiler.load(int8_mlp.path, planes=2)


def test_check_fails_an_int8_table_gemv_past_its_bound(int8_mlp, monkeypatch):
    monkeypatch.setattr(bitplane_lut, "int8_error_bound", lambda x, layout, scales: np.zeros((len(x), layout.n)))
    result = check_artefact(int8_mlp, inputs=make_inputs(int8_mlp.inputs, batch=1, seed=1), min_cosine=0)
    assert not result["passed"] and not any(layer["passed"] for layer in result["int8_table_layers"])


def test_planes_past_int8_keep_fp32_tables_and_exact_parity(model_dir, tmp_path):
    out = tmp_path / "mlp-8"
    bie_compiler.compile_model(model_dir["mlp"], out, "bie-bitplane", {"bits": 8, "lut_tables": "int8"},
                               min_weights=0, progress=None)
    runner = bie_compiler.load(out)
    assert all("at most 4 planes" in r["details"]["kernel.lut_tables"] for r in runner.manifest["layers"])
    result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=1, seed=1), min_cosine=0)
    assert "int8_table_layers" not in result and result["decoded_max_rel_err"] < 1e-4 and result["passed"]


def test_check_command_prints_each_layers_error_and_bound(int8_mlp, capsys):
    from bie_compiler.cli import main

    assert main(["check", str(int8_mlp.path), "--min-cosine", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"int8 look-up tables: {len(int8_mlp.manifest['layers'])} GEMV(s) approximate" in printed
    for layer in int8_mlp.manifest["layers"]:
        assert f"  {layer['name']}: error " in printed
    assert "OUT OF BOUND" not in printed and "PASSED" in printed


def test_check_refuses_int8_tables_it_cannot_bound(model_dir, tmp_path, target):
    """A rotated layer's GEMV reads the rotated activation, which the decoded-weights model does not have: not
    checked, so not passed."""
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    out = tmp_path / "mlp-rotated"
    bie_compiler.compile_model(model_dir["mlp"], out, "bie-bitplane", {"bits": 4, "lut_tables": "int8", "rotate": True},
                               min_weights=0, progress=None)
    runner = bie_compiler.load(out)
    result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=1, seed=1), min_cosine=0)
    layers = result["int8_table_layers"]
    assert not result["passed"] and len(layers) == len(runner.manifest["layers"])
    assert all(layer["unchecked"].startswith("rotated") for layer in layers)


def test_check_bounds_bbs_int8_table_gemvs(model_dir, tmp_path, target):
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    out = tmp_path / "mlp-bbs"
    bie_compiler.compile_model(model_dir["mlp"], out, "bbs", {"lut_tables": "int8"}, min_weights=0, progress=None)
    runner = bie_compiler.load(out)
    result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=1, seed=1), min_cosine=0)
    layers = result["int8_table_layers"]
    assert [layer["layer"] for layer in layers] == [r["name"] for r in runner.manifest["layers"]]
    assert all(layer["passed"] for layer in layers)
    # a layer whose rows are all sensitive (INT8 dot products) is exact: its bound is 0
    approximate = [layer for layer in layers if layer["bound_rel"] > 0]
    assert approximate and all(0 < layer["error_rel"] <= layer["bound_rel"] for layer in approximate)
    assert result["passed"] and result["decoded_max_rel_err"] > 0

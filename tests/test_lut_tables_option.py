"""``--lut-tables auto|fp32|int8`` for ``bie-bitplane`` and ``bbs``: a kernel option (the stored bytes unchanged);
auto (the default) takes int8 tables where their bytes hold only planes of the codes, int8 takes them up to 4 planes
and fp32 above with the reason recorded; ``check`` of such an artefact against each GEMV's stated bound."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler import codecs
from bie_compiler.codecs import bbs, bie_bitplane, lut_tables
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import bitplane_lut, lut
from bie_compiler.errors import CodecError
from bie_compiler.parity import check_artefact, make_inputs


def test_lut_tables_is_a_kernel_option_of_the_same_bytes():
    w = np.random.default_rng(0).standard_t(5, (24, 70)).astype(np.float32)
    config = bie_bitplane.Config(lut_tables="int8")
    assert codecs.kernel_options(config) == {"lut_tables": "int8"}
    assert bie_bitplane.encode(w, config).sha256() == bie_bitplane.encode(w, bie_bitplane.Config()).sha256()
    with pytest.raises(CodecError, match="lut_tables must be one of auto, fp32, int8"):
        bie_bitplane.Config(lut_tables="fp16")


def test_int8_tables_beyond_4_planes_fall_back_to_fp32_with_the_reason():
    assert codecs.kernel_fallbacks(bie_bitplane.Config(bits=4, lut_tables="int8")) == {}
    assert codecs.kernel_fallbacks(bie_bitplane.Config(bits=5)) == {}
    assert "at most 4 planes" in codecs.kernel_fallbacks(bie_bitplane.Config(bits=5, lut_tables="int8"))["lut_tables"]
    assert codecs.kernel_fallbacks(bie_bitplane.Config(bits=8, planes=3, lut_tables="int8")) == {}  # 3 kept + sign


@pytest.mark.parametrize("bits,planes,auto", [(2, 0, "int8"), (3, 0, "int8"), (4, 0, "int8"), (5, 0, "fp32"),
                                              (8, 0, "fp32"), (8, 1, "int8"), (8, 2, "int8"), (8, 3, "int8"),
                                              (8, 4, "fp32")])
def test_auto_takes_int8_tables_at_2_to_4_planes(bits, planes, auto):
    """Sign included: above 4 planes the int8 layout has no room; auto picking fp32 is no fallback, and a CPU
    without VNNI gets fp32 whatever was asked."""
    config = bie_bitplane.Config(bits=bits, planes=planes)
    assert config.lut_tables == "auto" and codecs.kernel_fallbacks(config) == {}
    fit = bie_bitplane.int8_tables_fit(config.kept_planes + 1)
    assert lut_tables.chosen("auto", fit, int8_cpu=True) == auto
    assert lut_tables.chosen("int8", fit, int8_cpu=True) == ("fp32" if config.kept_planes + 1 > 4 else "int8")
    assert lut_tables.chosen("fp32", fit, int8_cpu=True) == "fp32"
    assert {lut_tables.chosen(asked, fit, int8_cpu=False) for asked in lut_tables.TABLES} == {"fp32"}


@pytest.mark.parametrize("preset,auto", [("moderate", "int8"), ("conservative", "fp32")])
def test_auto_takes_bbs_int8_tables_at_4_kept_columns(preset, auto):
    config = bbs.Config(preset)
    assert config.lut_tables == "auto" and codecs.kernel_fallbacks(config) == {}
    assert lut_tables.chosen("auto", bbs.int8_tables_fit(config.kept_columns), int8_cpu=True) == auto
    assert [lut_tables.chosen("auto", bbs.int8_tables_fit(kept), True) for kept in range(2, 8)] == \
        ["fp32", "fp32", "int8", "fp32", "fp32", "fp32"]


@pytest.mark.parametrize("bits,asked,tables", [(3, "int8", "int8"), (4, "int8", "int8"), (5, "int8", "fp32"),
                                               (2, "auto", "int8"), (3, "auto", "int8"), (4, "auto", "int8"),
                                               (4, "fp32", "fp32")])
def test_kernel_for_builds_the_tables_chosen(bits, asked, tables, target):
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    enc = bie_bitplane.encode(np.random.default_rng(bits).standard_t(5, (20, 96)).astype(np.float32),
                              bie_bitplane.Config(bits=bits))
    call = kernel_for(enc, target, lut_tables=asked)
    layout, codes, _ = bie_compiler.codegen.kernels.bitplane.lut_parts(enc)
    np.testing.assert_array_equal(call.constants[0], bitplane_lut.words_of(codes, layout.magnitude_planes, tables))
    assert call.kind == "bitplane_lut" + ("_int8" if tables == "int8" else "")


@pytest.fixture(scope="module", params=[4, 3])  # bits: 4 or 3 planes with the sign (3: 3 index bytes a channel)
def int8_mlp(request, model_dir, tmp_path_factory, target):
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    out = tmp_path_factory.mktemp("lut-tables") / "mlp"
    bie_compiler.compile_model(model_dir["mlp"], out, "bie-bitplane", {"bits": request.param, "lut_tables": "int8"},
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


def test_int8_tables_are_listed_for_progressive_precision(int8_mlp):
    """Every layer's int8 tables' bytes (the GEMV's, and the panel GEMM's through word views: one tensor) can be cut
    at load (tests/test_progressive_planes.py compares the cut with ``compile --planes``)."""
    progressive = int8_mlp.manifest["weights"]["progressive"]
    assert [entry["form"] for entry in progressive] == ["int8_nibbles"] * len(int8_mlp.manifest["layers"])
    assert {entry["magnitude_bits"] for entry in progressive} == {int8_mlp.manifest["codec"]["options"]["bits"] - 1}


def test_report_notes_each_layer_with_int8_tables(int8_mlp, capsys):
    from bie_compiler.cli import _print_report

    symbols = int8_mlp.manifest["kernel_layers"]  # each layer's GEMV named for its tables, none with fp32 ones
    assert {names for symbol, names in symbols.items() if symbol.endswith("_lut_int8")} == \
        {r["name"] for r in int8_mlp.manifest["layers"]}
    assert not any(symbol.endswith("_lut") for symbol in symbols)
    _print_report(int8_mlp.manifest)
    assert capsys.readouterr().out.count("int8 look-up tables at batch 1") == len(int8_mlp.manifest["layers"])


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
    assert not any(symbol.endswith("_lut_int8") for symbol in runner.manifest["kernel_layers"])
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


def test_check_bounds_rotated_int8_table_gemvs_on_the_rotated_input(model_dir, tmp_path, target):
    """A rotated layer's GEMV reads the rotated activation: check rotates the decoded-weights model's input as the
    kernel's is, and bounds the GEMV on it (the default tables)."""
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    out = tmp_path / "mlp-rotated"
    bie_compiler.compile_model(model_dir["mlp"], out, "bie-bitplane", {"bits": 4, "rotate": True},
                               min_weights=0, progress=None)
    runner = bie_compiler.load(out)
    result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=1, seed=1), min_cosine=0)
    layers = result["int8_table_layers"]
    assert [layer["layer"] for layer in layers] == [r["name"] for r in runner.manifest["layers"]]
    assert all(0 < layer["error_rel"] <= layer["bound_rel"] and layer["passed"] for layer in layers), layers
    assert result["passed"]


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

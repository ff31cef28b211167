"""Kernels built once per layout (``codegen/layout_memo.py``) and the panel GEMM's decoder found again without a
parse: each gives the function that building (or parsing) anew would give, and a layout that differs builds anew."""

import numpy as np
import pytest
import tvm
import tvm_ffi

from bie_compiler.codecs import bbs, make_config
from bie_compiler.codegen.kernels import bbs_decoded, bbs_lut, lut, panel_gemm
from bie_compiler.codegen.target import make_target


def _encoded(seed: int, shape=(96, 70), options=None):
    w = np.random.default_rng(seed).standard_t(4, shape).astype(np.float32)
    return bbs.encode(w, make_config("bbs", options or {"preset": "moderate"}))


def test_one_layout_builds_once_and_as_a_new_build_would(target):
    first, second = _encoded(0), _encoded(1)
    assert not np.array_equal(first.arrays["columns"], second.arrays["columns"])  # other values, one layout
    with target:
        for build in (bbs_lut.gemv, bbs_decoded.gemm):
            assert build(second, "fp32") is build(first, "fp32")
            assert tvm_ffi.structural_equal(build(second, "fp32"), build.__wrapped__(second, "fp32"))


def test_another_header_options_or_target_build_anew(target):
    moderate = _encoded(0)
    other_count = _encoded(0, options={"preset": "moderate", "sensitive_fraction": 0.0})
    assert other_count.header["sensitive"] != moderate.header["sensitive"]
    with target:
        assert not tvm_ffi.structural_equal(bbs_lut.gemv(other_count), bbs_lut.gemv(moderate))
        assert not tvm_ffi.structural_equal(bbs_lut.gemv(moderate, "int8"), bbs_lut.gemv(moderate, "fp32"))
        here = bbs_decoded.gemm(moderate, "int8")
    if not lut.bit_transpose_supported(target):
        pytest.skip("the int8 tables' bit transpose (GFNI, AVX-512 VBMI) is not on this host: one GEMM for both")
    with make_target(mcpu="x86-64-v3"):  # no bit transpose: the decode weight by weight
        elsewhere = bbs_decoded.gemm(moderate, "int8")
    assert not tvm_ffi.structural_equal(elsewhere, here)


def test_carried_decoder_is_the_printed_one_or_its_parse(target):
    with target:
        kernel = bbs_decoded.gemm(_encoded(2), "fp32")
    text = str(kernel.attrs[panel_gemm.DECODER_ATTR])
    kept = panel_gemm.carried_decoder(kernel)
    assert tvm_ffi.structural_equal(kept, tvm.script.from_source(text))
    # text this process did not print (a blank line added) is parsed: the same function
    parsed = panel_gemm.carried_decoder(kernel.with_attr(panel_gemm.DECODER_ATTR, text + "\n"))
    assert parsed is not kept and tvm_ffi.structural_equal(parsed, kept)

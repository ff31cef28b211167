"""The panel GEMM's run decode of stored bit columns (``codegen/kernels/column_runs.py``: ``bbs`` with the fp32
tables' layout, ``bitwave``; and of ``bbs``'s int8 tables and sensitive rows, ``bbs_decoded.run_weights``): its decoded
panels equal the reference decoder's integers bit for bit, and the GEMM over them the reference decoder's product, at
row counts below, at and past a register tile; a ragged last run and panel (N 50, 100) and group (K 90, 70);
sensitive rows present and absent, their codes every byte; 2 to 7 kept columns. On a CPU without GFNI and AVX-512
VBMI the weight-by-weight decode runs instead, with the same results."""

import numpy as np
import pytest

from bie_compiler.codecs import CODECS, bbs, bitwave, kernel_options, make_config
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import lut, panel_gemm
from bie_compiler.codegen.target import make_target
from kernel_runs import assert_close, decoded_panels, run

CASES = [  # (codec, options, kernel options)
    ("bbs", {"preset": "conservative"}, {}),  # 6 kept columns: the fp32 tables' layout; sensitive rows
    ("bbs", {"preset": "conservative", "sensitive_fraction": 0.0}, {}),  # pruned rows only
    ("bbs", {"preset": "moderate"}, {"lut_tables": "fp32"}),  # 4 kept columns in the fp32 tables' layout
    ("bbs", {"preset": "moderate"}, {"lut_tables": "int8"}),  # the int8 tables' nibbles (bbs_decoded.run_weights)
    ("bbs", {"pruned_columns": 1, "method": "zps", "sensitive_fraction": 0.3}, {}),  # 7 kept, zps offsets
    ("bitwave", {"pruned_columns": 4}, {}),
    ("bitwave", {"pruned_columns": 6}, {}),  # 2 kept columns
    ("bitwave", {"pruned_columns": 3}, {}),  # 5 kept: an odd count, a column pair with zeros
]
SHAPES = [(50, 90), (100, 70)]  # (N, K): a ragged last run of 16 and panel of 32, a ragged last group of 32


def encoded(codec, options, n, k):
    rng = np.random.default_rng(n + k)
    return CODECS[codec].encode(rng.standard_t(4, (n, k)).astype(np.float32), make_config(codec, options))


def stored_integers(enc) -> np.ndarray:
    """The reference decoder's integers of the stored rows [N, KG * 32] (K padded to whole groups), before scales."""
    return (bbs if enc.codec == "bbs" else bitwave).decode_stored(enc)


def gemm_call(codec, options, kernel, enc, target):
    return kernel_for(enc, target, **{**kernel_options(make_config(codec, options)), **kernel}).large_batch


def transposes(target) -> bool:
    if not lut.bit_transpose_supported(target):
        pytest.skip(f"{target} has no GFNI or AVX-512 VBMI")
    return True


@pytest.mark.parametrize("codec,options,kernel", CASES, ids=[f"{c}-{o}-{k}" for c, o, k in CASES])
@pytest.mark.parametrize("n,k", SHAPES)
def test_runs_decode_the_reference_integers(codec, options, kernel, n, k, target):
    transposes(target)
    enc = encoded(codec, options, n, k)
    call = gemm_call(codec, options, kernel, enc, target)
    assert lut.AFFINE in panel_gemm.carried_decoder(call.func).script()
    panels, decode = decoded_panels(call, target, n)  # stored rows [N, KG * 32]
    assert decode == "runs"
    want = stored_integers(enc)
    assert panels.shape == want.shape
    np.testing.assert_array_equal(panels, want.astype(np.float32))


@pytest.mark.parametrize("codec,options,kernel", CASES, ids=[f"{c}-{o}-{k}" for c, o, k in CASES])
@pytest.mark.parametrize("n,k,mcpu", [(*SHAPES[0], "cascadelake"), *((*shape, None) for shape in SHAPES)])
def test_panel_gemm_matches_the_reference_decoder(codec, options, kernel, n, k, mcpu, target):
    """The run decode on this CPU (where it has the bit transposes) and the weight-by-weight decode without them
    (``mcpu`` cascadelake: AVX-512 and VNNI, no GFNI or VBMI)."""
    on = target if mcpu is None else make_target(mcpu=mcpu)
    runs = mcpu is None and transposes(on)
    enc = encoded(codec, options, n, k)
    call = gemm_call(codec, options, kernel, enc, on)
    assert panel_gemm.DecoderAttrs.read(panel_gemm.carried_decoder(call.func)).decode == ("runs" if runs else "weight")
    decoded = CODECS[codec].decode(enc).astype(np.float64)
    rng = np.random.default_rng(n * k)
    for rows in (2, 8, 9, 17, 64):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert_close(run(call.func, on, x, call.constants, (rows, n)), x @ decoded.T, context=rows)


@pytest.mark.parametrize("tables", ["fp32", "int8"])
def test_sensitive_rows_decode_every_code(tables, target):
    """Every int8 code (-128 .. 127, each at every byte of its word and of a group) in the sensitive rows decodes to
    itself: codes 0-2 of a word read as a float's low mantissa bits, code 3 shifted down with its sign."""
    transposes(target)
    n, k = 100, 90
    enc = encoded("bbs", {"preset": "moderate", "sensitive_fraction": 0.4}, n, k)
    sensitive = enc.arrays["sensitive"]
    assert len(sensitive) >= 32  # a whole panel of sensitive rows: runs of 16 sensitive rows, not only a ragged one
    codes = (np.arange(sensitive.size) * 37 % 256 - 128).astype(np.int8).reshape(sensitive.shape)
    assert set(codes.ravel().tolist()) == set(range(-128, 128))
    enc.arrays["sensitive"] = codes
    call = gemm_call("bbs", {"preset": "moderate"}, {"lut_tables": tables}, enc, target)
    panels, decode = decoded_panels(call, target, n)
    assert decode == "runs"
    np.testing.assert_array_equal(panels, stored_integers(enc).astype(np.float32))

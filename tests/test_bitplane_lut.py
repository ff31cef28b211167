"""The look-up-table bit-serial GEMV of ``bie-bitplane`` against the reference decoder: 1 to 8 two's complement
planes, K not a multiple of 8 or 32, N not of 16, per-channel and grouped scales, planes cut at compile and at load;
the panel GEMM's decode of the planes a run at a time (GFNI and VBMI) or weight by weight (without)."""

from pathlib import Path

import numpy as np
import pytest

from bie_compiler.codecs import bie_bitplane
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import bitplane, bitplane_lut, lut
from bie_compiler.codegen.target import make_target
from bie_compiler.runtime.progressive_precision import keep_top_planes
from kernel_runs import assert_close, decoded_panels, run

CASES = [  # (N, K, Config): bits - 1 magnitude planes kept (or `planes`) + the sign = the LUT planes
    (5, 1, bie_bitplane.Config(bits=2)),  # 2 LUT planes, one weight per row
    (37, 101, bie_bitplane.Config(bits=3)),
    (40, 200, bie_bitplane.Config(bits=3, group_size=64)),  # 3 LUT planes, grouped scales
    (16, 64, bie_bitplane.Config(bits=4)),
    (20, 250, bie_bitplane.Config(bits=5, group_size=64)),
    (33, 33, bie_bitplane.Config(bits=6, planes=2)),
    (17, 200, bie_bitplane.Config(bits=7)),
    (9, 300, bie_bitplane.Config(bits=8)),  # 8 LUT planes
    (12, 77, bie_bitplane.Config(bits=8, planes=1)),  # 1 magnitude plane kept: 2 LUT planes
]


def encode(n, k, config, seed):
    rng = np.random.default_rng(seed)
    return bie_bitplane.encode(rng.standard_t(5, (n, k)).astype(np.float32), config)


@pytest.fixture
def lut_target(target):
    if not lut.supported(target):
        pytest.skip(f"{target} has no AVX-512 (the look-up instruction)")
    return target


@pytest.mark.parametrize("n,k,config", CASES)
def test_lut_gemv_and_its_panel_gemm_match_the_reference_decoder(n, k, config, lut_target):
    enc = encode(n, k, config, n + k)
    call = kernel_for(enc, lut_target, lut_tables="fp32")  # the exact tables (auto takes int8 at 2 to 4 planes)
    assert call.kind == "bitplane_lut"
    assert call.constants[0].shape[0] == config.kept_planes + 1
    decoded = bie_bitplane.decode(enc)
    x = np.random.default_rng(k).standard_normal((1, k)).astype(np.float32)
    assert_close(run(call.func, lut_target, x, call.constants, (1, n)), x @ decoded.T.astype(np.float64))
    rows = np.random.default_rng(n).standard_normal((19, k)).astype(np.float32)
    assert_close(run(call.large_batch.func, lut_target, rows, call.constants, (19, n)), rows @ decoded.T.astype(np.float64))


def test_each_activation_of_a_group_is_looked_up_in_its_field(lut_target):
    """The GEMV over the rows of the identity (one activation at a time) is the decoded weight: each of a group's 32
    activations reaches its own table entry, the last two through a shift that repeats the sign bit (bit 31)."""
    n, k = 16, 64
    enc = encode(n, k, bie_bitplane.Config(bits=4), 3)
    call = kernel_for(enc, lut_target, lut_tables="fp32")
    decoded = bie_bitplane.decode(enc)
    assert (decoded[:, 31::32] < 0).any() and (decoded[:, 30::32] != 0).any()  # words with bit 31 set, bit 30 used
    assert_close(run(call.func, lut_target, np.eye(k, dtype=np.float32), call.constants, (k, n)),
                 decoded.T.astype(np.float64))


def test_group_not_a_multiple_of_32_keeps_the_bit_serial_kernel(lut_target):
    enc = encode(8, 96, bie_bitplane.Config(bits=3, group_size=48), 0)
    assert kernel_for(enc, lut_target).kind == "bitplane"


def test_twos_complement_planes_hold_the_codes():
    codes = np.random.default_rng(0).integers(-7, 8, (19, 70))
    words = bitplane_lut.twos_complement_planes(codes, 3)
    back = bitplane_lut.codes_of_planes(words, 3).reshape(2, 3, 16, 32).transpose(0, 2, 1, 3).reshape(32, 96)
    np.testing.assert_array_equal(back[:19, :70], codes)
    assert not back[19:].any() and not back[:, 70:].any()


@pytest.mark.parametrize("kept", [1, 2, 3])
def test_planes_cut_at_load_equal_planes_cut_at_compile(kept, lut_target):
    """keep_top_planes on the LUT words: the integers of the encoding compiled with ``planes=kept``."""
    n, k, bits = 24, 90, 5
    cut_enc = encode(n, k, bie_bitplane.Config(bits=bits, planes=kept), 1)
    with lut_target:
        full = bitplane.lut_call(encode(n, k, bie_bitplane.Config(bits=bits), 1))
        cut = bitplane.lut_call(cut_enc)
    entry = {"tensor": 0, "form": bitplane_lut.FORM, "magnitude_bits": bits - 1}
    (at_load,) = keep_top_planes([full.constants[0]], [entry], kept, Path("artefact"))
    shift = bits - 1 - kept
    np.testing.assert_array_equal(bitplane_lut.codes_of_planes(at_load, bits - 1),
                                  bitplane_lut.codes_of_planes(cut.constants[0], kept) << shift)
    # the panel GEMM (a run decode where the CPU has the bit transposes) over the words cut at load
    rows = np.random.default_rng(kept).standard_normal((9, k)).astype(np.float32)
    assert_close(run(full.large_batch.func, lut_target, rows, [at_load, *full.constants[1:]], (9, n)),
                 rows @ bie_bitplane.decode(cut_enc).T.astype(np.float64))


@pytest.mark.parametrize("bits,kept", [(3, 1), (4, 1), (4, 2)])
def test_int8_tables_cut_at_load_equal_planes_cut_at_compile(bits, kept, lut_target):
    """keep_top_planes on the int8 tables' bytes (offset binary, 2, 3 or 4 bytes a channel): the bytes of the codes of
    the encoding compiled with ``planes=kept``, at the full encoding's significance (so the same weights)."""
    n, k = 40, 100  # a short last group and channel block: their padding stays zero
    full, cut = (encode(n, k, bie_bitplane.Config(bits=bits, planes=planes), 2) for planes in (0, kept))
    layout, _, _ = bitplane.lut_parts(full)
    cut_layout, cut_codes, _ = bitplane.lut_parts(cut)
    with lut_target:
        call = bitplane.lut_call(full, "int8")
    entry = {"tensor": 0, "form": bitplane.INT8_FORM, "magnitude_bits": layout.magnitude_planes}
    (at_load,) = keep_top_planes([call.constants[0]], [entry], kept, Path("artefact"))
    want = bitplane_lut.int8_nibbles(cut_codes << (cut_layout.shift - layout.shift), layout.magnitude_planes)
    np.testing.assert_array_equal(at_load, want)
    assert (at_load != call.constants[0]).any()  # the low planes held bits


INT8_CASES = [case for case in CASES if case[2].kept_planes + 1 <= bitplane_lut.QUAD]


def int8_call(enc, target):
    """The int8-table GEMV (and its panel GEMM) as compile builds it, its layout and the codec's scales."""
    layout, _, planes = bitplane.lut_parts(enc)
    with target:
        return bitplane.lut_call(enc, "int8"), layout, planes.scales


def exact_tables_activations(k, rows, seed):
    """Integer activations whose every group of 32 peaks at a subset sum of TABLE_PEAK (31 + 32 + 32 + 32 in its
    first table, every other entry smaller): the int8 tables' step is 1, so they hold the float32 tables exactly."""
    x = np.random.default_rng(seed).integers(-31, 32, (rows, k)).astype(np.float32)
    x[:, 3::4] = np.minimum(x[:, 3::4], 30)  # a table's positive sum is at most 31 + 31 + 31 + 30 = 123
    x[:, 3::4] = np.maximum(x[:, 3::4], -30)
    for g in range(0, k, bitplane_lut.GROUP):
        x[:, g:g + 4] = [31, 32, 32, 32][:min(4, k - g)]
    x[:, (k // bitplane_lut.GROUP) * bitplane_lut.GROUP:] = 0  # a short last group would peak lower
    return x


@pytest.mark.parametrize("n,k,config", INT8_CASES)
def test_int8_tables_are_exact_when_the_tables_are_integers(n, k, config, lut_target):
    """Activations whose int8 tables need no rounding: the int8-table GEMV is the exact product (layout, look-ups,
    plane weights and the codes' offset all checked), and its panel GEMM too."""
    enc = encode(n, k, config, n + k)
    call, _, _ = int8_call(enc, lut_target)
    decoded = bie_bitplane.decode(enc).astype(np.float64)
    x = exact_tables_activations(k, 2, k)
    assert_close(run(call.func, lut_target, x, call.constants, (2, n)), x @ decoded.T)
    rows = np.random.default_rng(n).standard_normal((19, k)).astype(np.float32)
    assert_close(run(call.large_batch.func, lut_target, rows, call.constants, (19, n)), rows @ decoded.T)


@pytest.mark.parametrize("n,k,config", INT8_CASES)
def test_int8_tables_stay_within_their_stated_bound(n, k, config, lut_target):
    enc = encode(n, k, config, n + k)
    call, layout, scales = int8_call(enc, lut_target)
    x = np.random.default_rng(k).standard_normal((3, k)).astype(np.float32)
    want = x @ bie_bitplane.decode(enc).T.astype(np.float64)
    error = np.abs(run(call.func, lut_target, x, call.constants, (3, n)) - want)
    bound = bitplane_lut.int8_error_bound(x, layout, scales)
    assert (error <= bound + 1e-5 * np.abs(want).max()).all(), (error / bound).max()


@pytest.mark.parametrize("n,k,config", [(37, 200, bie_bitplane.Config(bits=4, group_size=64)),
                                         (21, 130, bie_bitplane.Config(bits=3, group_size=64)),
                                         (40, 96, bie_bitplane.Config(bits=2, group_size=64))])
def test_int8_tables_panel_gemm_with_grouped_scales(n, k, config, lut_target):
    """Grouped scales are applied in the decode, which reads the int8 tables' bytes as words (4, 3 or 2 planes)."""
    enc = encode(n, k, config, n + k)
    call, _, _ = int8_call(enc, lut_target)
    rows = np.random.default_rng(k).standard_normal((19, k)).astype(np.float32)
    want = rows @ bie_bitplane.decode(enc).T.astype(np.float64)
    assert_close(run(call.large_batch.func, lut_target, rows, call.constants, (19, n)), want)


@pytest.mark.parametrize("mcpu,transposes", [(None, True), ("cascadelake", False)])  # cascadelake: VNNI, no GFNI/VBMI
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_int8_tables_panel_gemm_decodes_runs_by_bit_transpose_where_the_cpu_has_it(bits, mcpu, transposes, lut_target):
    """The panel GEMM over the int8 tables' bytes (2, 3, 4 planes: 16-bit words, 3 bytes, 4 bytes a channel) decodes
    16 channels x 32 weights at a time with vgf2p8affineqb where the CPU has GFNI and VBMI, else weight by weight;
    both the reference decoder's weights (a ragged last panel and group: N 50, K 90)."""
    target = lut_target if mcpu is None else make_target(mcpu=mcpu)
    if mcpu is None and not lut.bit_transpose_supported(target):
        pytest.skip(f"{target} has no GFNI or AVX-512 VBMI")
    enc = encode(50, 90, bie_bitplane.Config(bits=bits), bits)
    call, _, _ = int8_call(enc, target)
    assert (lut.AFFINE in call.large_batch.func.script()) == transposes
    rows = np.random.default_rng(bits).standard_normal((11, 90)).astype(np.float32)
    want = rows @ bie_bitplane.decode(enc).T.astype(np.float64)
    assert_close(run(call.large_batch.func, target, rows, call.constants, (11, 50)), want)


@pytest.mark.parametrize("mcpu,transposes", [(None, True), ("cascadelake", False)])  # cascadelake: no GFNI/VBMI
@pytest.mark.parametrize("n,k,config", [(50, 90, bie_bitplane.Config(bits=4)),
                                         (50, 90, bie_bitplane.Config(bits=8)),  # 8 planes: every byte of a qword
                                         (33, 70, bie_bitplane.Config(bits=6, planes=2)),  # 2^shift = 8
                                         (40, 200, bie_bitplane.Config(bits=5, group_size=64)),
                                         (21, 130, bie_bitplane.Config(bits=2, group_size=32))])
def test_fp32_tables_panel_gemm_decodes_runs_by_bit_transpose_where_the_cpu_has_it(n, k, config, mcpu, transposes,
                                                                                   lut_target):
    """The panel GEMM over the fp32 tables' planes decodes 16 channels x 32 weights at a time
    (``column_runs``) where the CPU has GFNI and VBMI, else weight by weight: either way the decoded panels are the
    reference decoder's bit for bit (per-channel scales: its integers times ``2^shift``, the scales applied to the
    sums; grouped: its weights), padding zero, and the GEMM its product (a ragged last run, panel and group)."""
    target = lut_target if mcpu is None else make_target(mcpu=mcpu)
    if mcpu is None and not lut.bit_transpose_supported(target):
        pytest.skip(f"{target} has no GFNI or AVX-512 VBMI")
    enc = encode(n, k, config, n + k)
    layout, codes, _ = bitplane.lut_parts(enc)
    with target:
        call = bitplane.lut_call(enc, "fp32")
    panels, decode = decoded_panels(call.large_batch, target, n)
    assert decode == ("runs" if transposes else "weight")
    decoded = bie_bitplane.decode(enc)
    want = decoded if layout.groups > 1 else (codes.astype(np.int64) << layout.shift).astype(np.float32)
    np.testing.assert_array_equal(panels[:, :k], want)
    assert not panels[:, k:].any()
    for rows in (2, 8, 17):
        x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
        assert_close(run(call.large_batch.func, target, x, call.constants, (rows, n)),
                     x @ decoded.T.astype(np.float64), context=rows)


def test_int8_tables_store_3_planes_in_3_bytes_a_channel():
    """At 3 planes every stored byte is a plane of the codes (no zero plane): codes at the top of the range (offset
    binary 7) set every bit, at the bottom (0) none; 3 vectors of 64 bytes a block and group."""
    for code, byte in ((3, 255), (-4, 0)):
        nibbles = bitplane_lut.int8_nibbles(np.full((32, 64), code), 2)
        assert nibbles.shape == (2 * 2, 3, 64)
        assert (nibbles == byte).all()


def test_int8_tables_take_at_most_4_planes():
    with pytest.raises(ValueError, match="1 to 4 planes"):
        bitplane_lut.words_of(np.zeros((16, 32), np.int64), 4, "int8")

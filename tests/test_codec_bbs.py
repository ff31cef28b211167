"""``bbs``, ``int8`` and ``bitwave``: the paper's example, pruned columns, exact round trips, bit accounting, plan."""

import math

import numpy as np
import pytest

from bie_compiler import codecs
from bie_compiler.codecs import bbs, bitwave, int8, make_config
from bie_compiler.errors import CodecError


def weights(n, k, seed=0):
    return np.random.default_rng(seed).standard_t(4, (n, k)).astype(np.float32)


def test_paper_example_rounded_averaging():
    groups = bbs.round_average(np.array([[-57, 12, 33, -20]]), np.ones((1, 4), bool), 4)
    assert groups.values.tolist() == [[-60, 12, 36, -20]]
    assert int(groups.meta[0]) >> 6 == 1 and int(groups.meta[0]) & 63 == 4  # r = 1, c = 4
    assert groups.kept.tolist() == [[-8, 1, 4, -3]]  # (w' - c) / 2^(N - r), in 8 - N = 4 bits


def test_zero_point_shifting_small_example():
    # [1, 17, 33, -15]: plain rounding to multiples of 8 (z = 1, 4 - 1 = 3 columns rounded) loses 1 per weight,
    # but some 6-bit offset (e.g. c = -1 -> [0, 16, 32, -16]) makes every shifted weight a multiple of 8: exact
    groups = bbs.shift_zero_point(np.array([[1, 17, 33, -15]]), np.ones((1, 4), bool), 4)
    assert groups.values.tolist() == [[1, 17, 33, -15]]
    c = int(groups.meta[0]) & 63
    c = c - 64 if c >= 32 else c
    assert int(groups.meta[0]) >> 6 == 1 and ((np.array([1, 17, 33, -15]) + c) % 8 == 0).all()


def _columns(values):
    """Two's complement bit columns [g, 8, G] of int values in [-128, 127] (column 0 = sign)."""
    return (values[:, None, :].astype(np.int64) & 0xFF) >> np.arange(7, -1, -1)[None, :, None] & 1


@pytest.mark.parametrize("pruned_columns", [1, 2, 3, 4, 5, 6])
def test_rounded_averaging_prunes_constant_columns(pruned_columns):
    q = int8.quantize(weights(64, 256))[0].reshape(-1, bbs.GROUP)
    groups = bbs.round_average(q, np.ones_like(q, bool), pruned_columns)
    r = groups.meta.astype(int) >> 6
    cols = _columns(groups.values)
    assert groups.values.min() >= -128 and groups.values.max() <= 127
    for g in range(len(q)):
        p = 8 - pruned_columns + r[g]
        constant = cols[g, p:]  # the N - r low columns: each all-0 or all-1
        assert np.all(constant == constant[:, :1])
        assert np.all(cols[g, 1: r[g] + 1] == cols[g, :1])  # the r redundant columns repeat the sign
    assert (r <= min(3, pruned_columns)).all() and (r > 0).any()


@pytest.mark.parametrize("pruned_columns", [2, 4, 6])
def test_zero_point_shifting_prunes_zero_columns(pruned_columns):
    q = int8.quantize(weights(64, 256, seed=1))[0].reshape(-1, bbs.GROUP)
    groups = bbs.shift_zero_point(q, np.ones_like(q, bool), pruned_columns)
    z = groups.meta.astype(int) >> 6
    c = groups.meta.astype(int) & 63
    c = np.where(c >= 32, c - 64, c)
    shifted = groups.values + c[:, None]  # sign-magnitude s': z leading and N - z trailing magnitude columns zero
    magnitude = np.abs(shifted)
    assert (magnitude < (1 << (7 - z))[:, None]).all()
    assert (magnitude % (1 << (pruned_columns - z))[:, None] == 0).all()
    # the chosen offset is at least as good as no offset at all
    plain = bbs.round_magnitudes(q, np.ones_like(q, bool), pruned_columns, min(3, pruned_columns))
    plain_err = (((plain[0] << plain[2]) - q) ** 2).sum(1)
    assert (((groups.values - q) ** 2).sum(1) <= plain_err).all()


@pytest.mark.parametrize("pruned_columns", [1, 3, 4, 6])
def test_zero_point_shifting_searches_every_offset(pruned_columns):
    """The histogram search picks what rounding the group at each of the 64 offsets picks (the first least
    squared error, clipping included), K padding left out."""
    rng = np.random.default_rng(pruned_columns)
    q = np.clip(np.rint(rng.standard_t(3, (600, bbs.GROUP)) * rng.choice([3, 20, 127], (600, 1))), -128, 127)
    q = q.astype(np.int32)
    valid = np.ones_like(q, bool)
    valid[::3, 20:] = False
    max_zero = min(3, pruned_columns)
    errors = []
    for c in bbs.OFFSETS:
        kept, _, shift = bbs.round_magnitudes(np.clip(q + c, -127, 127), valid, pruned_columns, max_zero)
        errors.append((((kept << shift) - (q + c)) ** 2 * valid).sum(1))
    best = np.array(bbs.OFFSETS)[np.argmin(errors, axis=0)]
    kept, z, shift = bbs.round_magnitudes(np.clip(q + best[:, None], -127, 127), valid, pruned_columns, max_zero)
    groups = bbs.shift_zero_point(q, valid, pruned_columns)
    assert np.array_equal(groups.meta, ((z << 6) | (best & 63)).astype(np.uint8))
    assert np.array_equal(groups.kept, kept) and np.array_equal(groups.values, (kept << shift) - best[:, None])


@pytest.mark.parametrize("options", [{"preset": "conservative"}, {"preset": "moderate"},
                                     {"pruned_columns": 6, "method": "avg", "sensitive_fraction": 0.0},
                                     {"pruned_columns": 3, "method": "zps", "sensitive_fraction": 1.0}])
@pytest.mark.parametrize("n,k", [(100, 70), (64, 256), (5, 32)])
def test_decode_is_the_pruned_int8_weights_exactly(options, n, k):
    config = make_config("bbs", options)
    w = weights(n, k, seed=n + k)
    enc = bbs.encode(w, config)
    values, scales, _, _ = bbs.prune(w, config)
    np.testing.assert_array_equal(bbs.decode(enc), values.astype(np.float32) * scales[:, None])
    codes, _ = int8.quantize(w)
    count = enc.header["sensitive"]
    sensitive = np.argsort(-scales, kind="stable")[:count]
    np.testing.assert_array_equal(values[sensitive], codes[sensitive])  # sensitive channels stay INT8
    assert count == min(n, math.ceil(config.sensitive_fraction * n / 32) * 32)


def test_bit_accounting_exact():
    n, k = 200, 96  # 3 groups; 32 sensitive, 168 pruned rows -> 11 blocks of 16 lanes
    config = bbs.Config("moderate", sensitive_fraction=0.1)
    enc = bbs.encode(weights(n, k), config)
    expected = {"scales": n * 4, "position": n * 4, "sensitive": 32 * k, "columns": 11 * 3 * 4 * 16 * 4,
                "meta": 11 * 3 * 16}
    assert {name: a.nbytes for name, a in enc.arrays.items()} == expected
    assert enc.nbytes == sum(expected.values()) + enc.header_bytes
    assert enc.bits_per_weight == 8 * enc.nbytes / (n * k)
    report = bbs.report(enc)
    assert report["paper_bits_per_weight"] == 4.25 and bbs.paper_bits_per_weight(2) == 6.25
    assert report["paper_bits_per_weight_with_sensitive"] == (32 * k * 8 + 168 * k * 4.25) / (n * k)
    # the paper's count, both ways: the pruned chunk's columns and metadata, padding lanes aside
    assert 168 * k * report["paper_bits_per_weight"] == 168 * 3 * (4 * 32 + 8)
    assert report["honest_bits_per_weight"] == enc.bits_per_weight


def test_plan_ranks_channels_over_the_model():
    rng = np.random.default_rng(3)
    big = (rng.standard_normal((96, 64)) * 10).astype(np.float32)  # every channel outranks the small layer
    small = rng.standard_normal((256, 64)).astype(np.float32)
    config = bbs.Config("moderate")  # beta = 20 % of 352 channels = 71: all 71 in "big"
    planned = bbs.plan({"big": big, "small": small}, {"big": config, "small": config})
    assert planned["big"].sensitive_channels == 96  # 71 rounded up to 96 (a multiple of 32)
    assert planned["small"].sensitive_channels == 0
    fixed = bbs.Config("moderate", sensitive_channels=64)
    assert bbs.plan({"small": small}, {"small": fixed})["small"] == fixed
    # re-encoding from the recorded config is deterministic
    assert bbs.encode(big, planned["big"]).sha256() == bbs.encode(big, planned["big"]).sha256()


def test_presets_and_options():
    assert make_config("bbs", {"preset": "conservative"}) == bbs.Config(
        "conservative", pruned_columns=2, method="avg", sensitive_fraction=0.1)
    assert make_config("bbs", {}) == bbs.Config("moderate", pruned_columns=4, method="zps", sensitive_fraction=0.2)
    assert make_config("bbs", {"preset": "moderate", "pruned_columns": 5}).method == "zps"
    for bad in ({"preset": "extreme"}, {"pruned_columns": 7}, {"pruned_columns": 0}, {"method": "max"},
                {"sensitive_fraction": 1.5}, {"sensitive_channels": -2}, {"lut_tables": "fp16"}):
        with pytest.raises(CodecError, match="bbs"):
            make_config("bbs", bad)
    # int8 tables take 4 kept columns: fp32 tables elsewhere, the reason recorded with the layer
    assert bbs.Config(lut_tables="int8").kernel_fallbacks == {} == bbs.Config("conservative").kernel_fallbacks
    assert "this layer keeps 6" in bbs.Config("conservative", lut_tables="int8").kernel_fallbacks["lut_tables"]
    # the tables choose the kernel, not the encoding: the builder's keyword, never in the stored header
    assert codecs.kernel_options(bbs.Config(lut_tables="int8")) == {"lut_tables": "int8"}
    w = weights(48, 100)
    assert bbs.encode(w, bbs.Config(lut_tables="int8")).sha256() == bbs.encode(w, bbs.Config()).sha256()


def test_int8_and_bitwave():
    w = weights(48, 100)
    enc = int8.encode(w, int8.Config())
    codes, scales = int8.quantize(w)
    assert np.abs(codes).max() == 127 and enc.arrays["codes"].dtype == np.int8
    np.testing.assert_array_equal(int8.decode(enc), codes.astype(np.float32) * scales[:, None])
    wave = bitwave.encode(w, bitwave.Config(4))
    values, scales, _, z = bitwave.prune(w, bitwave.Config(4))
    np.testing.assert_array_equal(bitwave.decode(wave), values.astype(np.float32) * scales[:, None])
    # zero-only columns: every value is a multiple of 2^(N - z) below 2^(7 - z) in magnitude
    padded, _ = bbs.grouped(values)
    groups = np.abs(padded.reshape(48, -1, 32))
    assert (groups % (1 << (4 - z))[..., None] == 0).all() and (groups < (1 << (7 - z))[..., None]).all()
    # at matching bits (same kept columns, one metadata byte per group), BBS zps loses less than bitwave
    bbs_err = np.abs(bbs.decode(bbs.encode(w, bbs.Config("moderate", sensitive_fraction=0.0))) - w).mean()
    assert bbs_err < np.abs(bitwave.decode(wave) - w).mean()
    with pytest.raises(CodecError, match="bitwave"):
        bitwave.Config(0)

"""Codec formats: round trips, exact bit accounting, progressive planes, option errors."""

import json

import numpy as np
import pytest

from bie_compiler.codecs import CODECS, bie_binary, bie_bitplane, bie_blocked, make_config
from bie_compiler.codecs.base import pack_bits, packed_width, unpack_bits
from bie_compiler.errors import CodecError, OptionError


def heavy_tailed(n, k, sparsity=0.0, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, (n, k)) * np.exp(0.4 * rng.standard_normal((n, 1)))
    w[rng.random((n, k)) < sparsity] = 0
    return w.astype(np.float32)


def header_bytes(enc):
    return len(json.dumps({"codec": enc.codec, "shape": list(enc.shape), **enc.header}, sort_keys=True).encode())


PACKED_KS = [1, 7, 8, 80, 127, 128, 129, 384]  # a byte column and around it, a 16-byte vector and around it


@pytest.mark.parametrize("k", PACKED_KS + [300, 1000])
def test_pack_bits_round_trip_and_layout(k):
    bits = np.random.default_rng(k).random((3, k)) < 0.3
    packed = pack_bits(bits)
    assert packed.shape == (3, packed_width(k)) and packed.shape[1] == -(-k // 8)  # K padded to a whole byte
    assert np.array_equal(unpack_bits(packed, k), bits)
    kb = packed.shape[1]
    for kk in range(k):  # weight kk is bit kk // KB of byte kk % KB
        assert np.array_equal((packed[:, kk % kb] >> (kk // kb)) & 1, bits[:, kk])


@pytest.mark.parametrize("k", PACKED_KS)
@pytest.mark.parametrize("bits,group", [(3, 0), (4, 0), (8, 0), (4, 32)])
def test_bitplane_round_trips_at_any_k(k, bits, group):
    """The planes hold exactly the quantized codes, and every stored byte is counted, whatever K."""
    n = 5
    config = bie_bitplane.Config(bits=bits, group_size=group)
    codes, scales = bie_bitplane.quantize(heavy_tailed(n, k, 0.3, seed=k), config)
    enc = bie_bitplane.encode(heavy_tailed(n, k, 0.3, seed=k), config)
    per_weight = np.repeat(scales, bie_bitplane.scale_group(k, group), axis=1)[:, :k]
    np.testing.assert_array_equal(bie_bitplane.decode(enc), (codes * per_weight).astype(np.float32))
    row = -(-k // 8) if not group else -(-k // 128) * 16  # with scale groups, whole 16-byte vectors
    columns = 1 if not group else 8 * row // group
    assert enc.nbytes == bits * n * row + 4 * n * columns + header_bytes(enc)


@pytest.mark.parametrize("k", PACKED_KS)
def test_binary_bitmap_round_trips_at_any_k(k):
    w = heavy_tailed(6, k, seed=k)
    enc = bie_binary.encode(w, bie_binary.Config(layout="bitmap"))
    keep, negative, scales = bie_binary.ternarize(w, bie_binary.Config())
    expected = np.where(negative, -1.0, 1.0) * keep * scales[:, None]
    np.testing.assert_array_equal(bie_binary.decode(enc), expected.astype(np.float32))
    assert enc.nbytes == 2 * 6 * -(-k // 8) + 4 * 6 + header_bytes(enc)


def test_small_k_layer_costs_its_bits():
    """An 80-wide layer (a [6906, 80] head) at 4 bits: 4 bits a weight and its channel's scale, no padding to 128."""
    enc = bie_bitplane.encode(heavy_tailed(6906, 80), bie_bitplane.Config(bits=4))
    assert enc.arrays["planes"].shape == (3, 6906, 10)
    assert enc.nbytes == 6906 * (4 * 10 + 4) + header_bytes(enc)  # 4 bit columns of 10 bytes and a scale a row
    assert enc.bits_per_weight < 4 + 32 / 80 + 0.01  # was 6.8 with K padded to 128


def test_bitplane_8bit_round_trips_exactly():
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, (40, 200))
    codes[:, 0] = 127  # every channel reaches the top code, so its scale is exactly the one used below
    scales = 2.0 ** rng.integers(-8, 2, (40, 1))  # powers of two: every product is exact in float32
    w = (codes * scales).astype(np.float32)
    enc = bie_bitplane.encode(w, bie_bitplane.Config(bits=8))
    assert np.array_equal(bie_bitplane.decode(enc), w)


def test_bitplane_quantization_matches_definition():
    w = heavy_tailed(16, 300, 0.5)
    cfg = bie_bitplane.Config(bits=4, group_size=64)
    codes, scales = bie_bitplane.quantize(w, cfg)
    assert scales.shape == (16, 6)  # K=300 padded to 384 (groups: whole 16-byte vectors), in groups of 64
    padded = np.zeros((16, 320), np.float32)
    padded[:, :300] = w
    full_range = np.abs(padded).reshape(16, 5, 64).max(axis=2) / 7
    ratios = scales[:, :5] / full_range  # each scale is one of the clip candidates
    assert np.all(np.min(np.abs(ratios[..., None] - bie_bitplane.CLIP_RATIOS), axis=-1) < 1e-5)
    assert ratios.min() < 1  # heavy tails: some groups do clip
    assert np.all(scales[:, 5] == 0)
    assert codes.min() >= -7 and codes.max() <= 7
    per_weight = np.repeat(scales[:, :5], 64, axis=1)[:, :300]
    decoded = bie_bitplane.decode(bie_bitplane.encode(w, cfg))
    np.testing.assert_allclose(decoded, codes * per_weight, rtol=1e-6)
    # the chosen scales never do worse than the full-range ones, group by group
    full = np.repeat(full_range, 64, axis=1)[:, :300]
    full_error = ((np.clip(np.rint(w / full), -7, 7) * full - w) ** 2).reshape(16, -1)
    assert ((decoded - w) ** 2).sum() <= full_error.sum()


@pytest.mark.parametrize("bits,group", [(2, 0), (4, 0), (4, 32), (8, 0)])
def test_bitplane_bit_accounting_is_exact(bits, group):
    n, k = 24, 300
    enc = bie_bitplane.encode(heavy_tailed(n, k), bie_bitplane.Config(bits=bits, group_size=group))
    kb = 38 if not group else 48  # 300 padded to 304 weights, or with groups to 384
    scale_columns = 1 if not group else 384 // group
    expected = (bits - 1) * n * kb + n * kb + 4 * n * scale_columns + header_bytes(enc)
    assert enc.nbytes == expected
    assert enc.bits_per_weight == pytest.approx(8 * expected / (n * k))


def test_bitplane_progressive_error_shrinks_with_planes():
    w = heavy_tailed(64, 512)
    enc = bie_bitplane.encode(w, bie_bitplane.Config(bits=6))
    errors = []
    for p in range(1, 6):
        partial = bie_bitplane.truncate_planes(enc, p)
        assert partial.arrays["planes"].shape[0] == p
        assert partial.nbytes < enc.nbytes or p == 5
        errors.append(float(np.linalg.norm(bie_bitplane.decode(partial) - w)))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # keeping p planes at compile time gives the same encoding as truncating afterwards
    kept = bie_bitplane.encode(w, bie_bitplane.Config(bits=6, planes=3))
    assert kept.sha256() == bie_bitplane.truncate_planes(enc, 3).sha256()


def test_binary_ternary_values_and_scales():
    w = heavy_tailed(32, 256)
    enc = bie_binary.encode(w, bie_binary.Config())
    d = bie_binary.decode(enc)
    keep = np.abs(w) > 0.7 * np.abs(w).mean(axis=1, keepdims=True)
    assert np.array_equal(d != 0, keep)
    assert np.array_equal(np.sign(d[keep]), np.sign(w[keep]))
    expected_scale = np.abs(np.where(keep, w, 0)).sum(axis=1) / keep.sum(axis=1)
    np.testing.assert_allclose(np.abs(d).max(axis=1), expected_scale, rtol=1e-6)


@pytest.mark.parametrize("density,layout", [(0.5, "bitmap"), (0.03, "index")])
def test_binary_picks_the_smaller_layout(density, layout):
    w = heavy_tailed(64, 1024)
    auto = bie_binary.encode(w, bie_binary.Config(density=density))
    assert auto.header["layout"] == layout
    other = bie_binary.encode(w, bie_binary.Config(density=density, layout={"bitmap": "index", "index": "bitmap"}[layout]))
    assert auto.nbytes < other.nbytes
    assert np.array_equal(bie_binary.decode(auto), bie_binary.decode(other))
    assert np.count_nonzero(bie_binary.decode(auto)) == 64 * int(np.ceil(density * 1024))
    bitmap = auto if layout == "bitmap" else other
    assert bitmap.nbytes == 2 * 64 * 128 + 4 * 64 + header_bytes(bitmap)  # mask and sign planes, scales


def test_binary_index_layout_accounting():
    w = heavy_tailed(10, 70000, 0.99)  # K > 2^15: 32-bit entries
    enc = bie_binary.encode(w, bie_binary.Config(layout="index", threshold=1e-9))
    nnz = int(np.count_nonzero(w))
    assert enc.arrays["entries"].dtype == np.uint32
    assert enc.nbytes == 4 * nnz + 4 * 11 + 4 * 10 + header_bytes(enc)
    d = bie_binary.decode(enc)
    assert np.array_equal(d != 0, w != 0) and np.array_equal(np.sign(d), np.sign(w))


@pytest.mark.parametrize("block_size", [64, 128, 256])
def test_blocked_matches_binary_and_saves_index_bits(block_size):
    w = heavy_tailed(48, 1000, 0.8)
    cfg = dict(density=0.1)
    blocked = bie_blocked.encode(w, bie_blocked.Config(block_size=block_size, **cfg))
    index = bie_binary.encode(w, bie_binary.Config(layout="index", **cfg))
    assert np.array_equal(bie_blocked.decode(blocked), bie_binary.decode(index))
    nnz = index.arrays["entries"].size
    entry_bytes = 1 if block_size <= 128 else 2
    count_bytes = 1 if block_size < 256 else 2
    blocks = -(-1000 // block_size)
    positions = nnz * entry_bytes + 48 * blocks * count_bytes + 4 * 49
    saving = bie_blocked.report(blocked)
    assert saving == {"index_bytes_blocked": positions, "index_bytes_global": 2 * nnz + 4 * 49}
    assert blocked.nbytes == positions + 4 * 48 + header_bytes(blocked)
    if block_size == 128:
        assert saving["index_bytes_blocked"] < saving["index_bytes_global"]


@pytest.mark.parametrize("name", list(CODECS))
def test_all_zero_and_single_row_weights(name):
    module = CODECS[name]
    for w in (np.zeros((5, 40), np.float32), heavy_tailed(1, 3)):
        enc = module.encode(w, module.Config())
        d = module.decode(enc)
        assert d.shape == w.shape and d.dtype == np.float32
        if not w.any():
            assert not d.any()


@pytest.mark.parametrize("name", list(CODECS))
def test_non_finite_weights_are_refused(name):
    w = heavy_tailed(4, 64)
    w[2, 5] = np.nan
    with pytest.raises(CodecError, match="non-finite"):
        CODECS[name].encode(w, CODECS[name].Config())


@pytest.mark.parametrize(
    "codec,options,match",
    [
        ("bie-bitplane", {"bits": 9}, "bits must be in 2..8"),
        ("bie-bitplane", {"bits": 4, "planes": 4}, "planes must be in 1..3"),
        ("bie-binary", {"density": 1.5}, "density"),
        ("bie-binary", {"layout": "csr"}, "layout"),
        ("bie-blocked", {"block_size": 100}, "power of two"),
        ("bie-blocked", {"blocked_execution": "lazy"}, "blocked_execution must be one of auto, load, stream"),
        ("bie-binary", {"bits": 4}, "does not take option"),
        ("no-such-codec", {}, "unknown codec"),
    ],
)
def test_bad_options_are_clear_errors(codec, options, match):
    with pytest.raises((CodecError, OptionError), match=match):
        make_config(codec, options)


@pytest.mark.parametrize("codec, options, message", [
    ("bie-bitplane", {"bits": 4.5}, "expected an integer"),
    ("bie-bitplane", {"bits": "abc"}, "expected an integer"),
    ("bie-bitplane", {"bits": True}, "expected an integer"),
    ("tans", {"levels": 15.0}, "expected an integer"),
    ("tans", {"stream_symbols": 10**30}, "out of range"),
    ("bie-binary", {"threshold": float("nan")}, "expected a finite number"),
    ("bie-binary", {"density": float("inf")}, "expected a finite number"),
    ("bie-binary", {"layout": 3}, "expected text"),
])
def test_options_of_the_wrong_type_are_refused(codec, options, message):
    from bie_compiler.codecs import make_config
    from bie_compiler.errors import OptionError

    with pytest.raises(OptionError, match=message):
        make_config(codec, options)

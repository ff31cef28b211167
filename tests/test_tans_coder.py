"""The tANS coder: lossless round trips, the format's invariants, near-entropy rate, loud failure on bad streams."""

import dataclasses

import numpy as np
import pytest

from bie_compiler.codecs import tans_coder
from bie_compiler.errors import CodecError

LAYOUT = dict(table_log=11, states=4, rows_per_stream=4)


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of the symbols, in bits, times their number."""
    p = np.bincount(symbols.ravel()) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * symbols.size)


def laplace_symbols(rng, shape, levels, scale):
    half = levels // 2
    return np.clip(np.rint(rng.laplace(0, scale, shape)), -half, half).astype(np.int64) + half


def layers(rng):
    return {
        "peaked": (laplace_symbols(rng, (40, 300), 15, 0.6), 15),
        "uniform": (rng.integers(0, 31, (33, 257)), 31),
        "single_symbol": (np.full((17, 64), 3), 7),
        "two_symbols": ((rng.random((20, 100)) < 0.1).astype(np.int64), 3),
        "all_zero": (np.zeros((8, 8), np.int64), 3),
    }


@pytest.mark.parametrize("name", ["peaked", "uniform", "single_symbol", "two_symbols", "all_zero"])
def test_round_trip_is_exact(name):
    symbols, alphabet = layers(np.random.default_rng(0))[name]
    for layout in (LAYOUT, dict(table_log=5, states=1, rows_per_stream=1), dict(table_log=12, states=8, rows_per_stream=100)):
        if (np.bincount(symbols.ravel()) > 0).sum() > 1 << layout["table_log"]:
            continue
        coded = tans_coder.encode(symbols, alphabet, **layout)
        np.testing.assert_array_equal(tans_coder.decode(coded, alphabet), symbols)
        assert int(coded.counts.astype(np.int64).sum()) == 1 << layout["table_log"]


def test_round_trip_on_random_sizes_including_tiny():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (1, 2), (2, 1), (1, 5), (3, 3), (7, 13), (5, 1000), (130, 9)]:
        for alphabet in (1, 2, 3, 17, 255):
            symbols = rng.integers(0, alphabet, shape)
            states = int(rng.integers(1, 9))
            coded = tans_coder.encode(symbols, alphabet, table_log=11, states=states, rows_per_stream=int(rng.integers(1, 4)))
            np.testing.assert_array_equal(tans_coder.decode(coded, alphabet), symbols)


def test_single_symbol_layer_costs_only_its_initial_states():
    symbols, alphabet = layers(np.random.default_rng(0))["single_symbol"]
    coded = tans_coder.encode(symbols, alphabet, **LAYOUT)
    assert coded.payload_bits == 0
    assert int(coded.offsets[-1]) == coded.num_streams * 4 * 11  # 5 streams (17 rows / 4), 4 states of 11 bits
    assert coded.words.size == int(coded.offsets[-1]) // 32 + 3


def test_decode_table_by_hand():
    """Table log 2 (4 states), counts [3, 1]: FSE's step (4/2 + 4/8 + 3) % 4 = 1 places symbols in order."""
    table = tans_coder.decode_table(np.array([3, 1], np.uint16), 2)
    assert table.symbol.tolist() == [0, 0, 0, 1]
    # symbol 0, n = 3, 4, 5: reads 2 - floor(log2 n) = 1, 0, 0 bits; base = (n << bits) - 4 = 2, 0, 1
    # symbol 1, n = 1: reads 2 bits from base 0
    assert table.bits.tolist() == [1, 0, 0, 2]
    assert table.base.tolist() == [2, 0, 1, 0]


def test_normalized_counts_keep_every_symbol_and_sum_to_the_table():
    counts = tans_coder.normalize_counts(np.array([10**6, 1, 0, 5, 1]), 8)
    assert counts.sum() == 256 and counts[2] == 0 and (counts[[0, 1, 3, 4]] >= 1).all()
    with pytest.raises(CodecError, match="do not fit a table"):
        tans_coder.normalize_counts(np.ones(40), 5)


@pytest.mark.parametrize("levels,scale", [(15, 1.0), (3, 0.3), (63, 6.0), (5, 0.25)])
def test_rate_is_within_half_a_percent_of_the_entropy(levels, scale):
    """Layers of >= 64 k weights: coded bits <= 1.005 * entropy + the overhead the coder reports (initial states)."""
    symbols = laplace_symbols(np.random.default_rng(levels), (256, 512), levels, scale)
    coded = tans_coder.encode(symbols, levels, table_log=11, states=4, rows_per_stream=16)
    h = entropy_bits(symbols)
    assert int(coded.offsets[-1]) == coded.payload_bits + coded.state_bits
    assert coded.state_bits == 16 * 4 * 11
    assert coded.payload_bits <= 1.005 * h
    assert int(coded.offsets[-1]) <= 1.005 * h + coded.state_bits
    assert coded.words.size == int(coded.offsets[-1]) // 32 + 3  # no other padding


def corrupt(coded, **changes):
    """A copy with some fields replaced; the checksum recomputed, as a crafted stream would have it."""
    new = dataclasses.replace(coded, **changes)
    return dataclasses.replace(new, checksum=tans_coder.checksum(new.counts, new.offsets, new.words))


@pytest.fixture
def coded():
    symbols = laplace_symbols(np.random.default_rng(2), (64, 200), 15, 1.0)
    return tans_coder.encode(symbols, 15, **LAYOUT)


def test_flipped_bits_fail_the_checksum(coded):
    rng = np.random.default_rng(3)
    for _ in range(20):
        words = coded.words.copy()
        i = int(rng.integers(0, words.size - 1))
        words[i] ^= np.uint32(1) << np.uint32(rng.integers(0, 32))
        with pytest.raises(CodecError, match="checksum mismatch"):
            tans_coder.decode(dataclasses.replace(coded, words=words), 15)


def test_truncated_and_malformed_streams_fail_clearly(coded):
    with pytest.raises(CodecError, match="truncated"):
        tans_coder.decode(corrupt(coded, words=coded.words[:-3]), 15)
    with pytest.raises(CodecError, match="offsets"):
        tans_coder.decode(corrupt(coded, offsets=coded.offsets[:-1]), 15)
    bad_offsets = coded.offsets.copy()
    bad_offsets[[3, 4]] = bad_offsets[[4, 3]]
    with pytest.raises(CodecError, match="offsets are malformed"):
        tans_coder.decode(corrupt(coded, offsets=bad_offsets), 15)
    counts = coded.counts.copy()
    counts[7] += 1
    with pytest.raises(CodecError, match="sum to"):
        tans_coder.decode(corrupt(coded, counts=counts), 15)
    with pytest.raises(CodecError, match="counts"):
        tans_coder.decode(coded, 17)  # a different alphabet than encoded


def test_crafted_corruption_raises_codec_errors_only(coded):
    """With the checksum forged, damaged streams must still fail as CodecError (never IndexError), or decode."""
    rng = np.random.default_rng(4)
    failures = 0
    for trial in range(60):
        words = coded.words.copy()
        if trial % 2:
            i = int(rng.integers(0, words.size - 2))
            words[i] ^= np.uint32(rng.integers(1, 2**32))
        else:
            words[: words.size // 2] = rng.integers(0, 2**32, words.size // 2, dtype=np.uint32)
        try:
            tans_coder.decode(corrupt(coded, words=words), 15)
        except CodecError as e:
            assert "stream" in str(e)
            failures += 1
    assert failures >= 55  # the end-state and end-position checks catch nearly every damaged stream

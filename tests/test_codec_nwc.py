"""The nwc codec: preprocessing, lossless latent coding, bit accounting, quality levels, feedback, budget."""

import json
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest

from bie_compiler.codecs import feedback, nwc, nwc_network, nwc_tables, tans
from bie_compiler.errors import CodecError


def weight(n=100, k=48, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(5, (n, k)) * np.exp(0.5 * rng.standard_normal(k)) * 0.05).astype(np.float32)


def correlated_calibration(k=48, rows=400, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)) @ rng.standard_normal((k, k)) * np.exp(rng.standard_normal(k))
    return feedback.Calibration(x.T @ x, rows, damping=0.01)


def relative_error(w, approx):
    return float(np.linalg.norm(approx - w) / np.linalg.norm(w))


@pytest.mark.parametrize("n", [1, 16, 100])
def test_chunks_are_normalised_columns_and_unchunk_inverts_them(n):
    w = weight(n, 5)
    w[:, 2] = 0  # a zero column has scale 0: it decodes to exact zeros
    w[:, 4] *= 1e-6  # below float16's normal range: its scale is float16's smallest normal
    scales = nwc_network.column_scales(w)
    chunked = nwc_network.chunks(w, scales)
    assert scales.dtype == np.float16 and chunked.shape == (5, -(-n // 16), 16)
    cols = chunked.reshape(5, -1)
    assert np.all(cols[:, n:] == 0) and scales[2] == 0
    if n > 1:
        assert np.allclose(cols[[0, 1, 3], :n].std(axis=1), 1, atol=2e-3)  # fp16 scale: 1e-3 relative
        assert scales[4] == np.finfo(np.float16).tiny
    assert np.allclose(nwc_network.unchunk(chunked, scales, n), w, rtol=1e-6, atol=1e-12)


def test_latents_are_coded_losslessly_and_every_byte_is_counted():
    w = weight()
    enc = nwc.encode(w, nwc.Config(quality=6))
    scales = nwc_network.column_scales(w)
    levels = np.full(w.shape[1], 5)
    expected = nwc.analyse(nwc_network.chunks(w, scales), levels)
    assert np.array_equal(nwc.latents(enc), expected)
    assert np.array_equal(nwc.decode(enc), nwc_network.unchunk(nwc.synthesise(expected, levels), scales, 100))
    assert enc.nbytes == sum(a.nbytes for a in enc.arrays.values()) + enc.header_bytes
    assert enc.arrays["scales"].dtype == np.float16 and enc.arrays["levels"].dtype == np.uint8
    latent = nwc_network.load().latent
    assert sum(f"latent{c}.words" in enc.arrays for c in range(latent)) == latent  # a table per channel


def test_higher_quality_spends_more_bits_for_less_error():
    w = weight(256, 64)
    levels = nwc_network.load().levels
    encs = [nwc.encode(w, nwc.Config(quality=q)) for q in (1, levels // 2, levels)]
    bits = [e.bits_per_weight for e in encs]
    errors = [relative_error(w, nwc.decode(e)) for e in encs]
    assert bits[0] < bits[1] < bits[2] and errors[0] > errors[1] > errors[2]


def test_quality_levels_follow_the_hessian_diagonal_quantiles():
    diag = np.geomspace(1e-3, 1e3, 9)[[4, 0, 8, 2, 6, 1, 7, 3, 5]]
    levels = nwc.column_levels(9, 6, 3, diag)
    assert sorted(levels) == [4, 4, 4, 5, 5, 5, 6, 6, 6]
    assert levels[np.argmax(diag)] == 6 and levels[np.argmin(diag)] == 4
    assert np.array_equal(nwc.column_levels(9, 1, 3, diag), np.clip(levels - 5, 0, None))  # clipped at level 1
    assert np.all(nwc.column_levels(9, 6, 1, diag) == 5)


def test_error_feedback_lowers_the_output_error_and_decodes_as_rounded():
    w, calibration = weight(), correlated_calibration()
    config = nwc.Config(quality=4)
    fed = nwc.encode(w, config, calibration)
    rtn_error = feedback.output_error(w, nwc.decode(nwc.encode(w, replace(config, spread=1))), calibration.xtx)
    assert feedback.output_error(w, nwc.decode(fed), calibration.xtx) < 0.8 * rtn_error
    assert len(set(fed.arrays["levels"].tolist())) == 3


def test_a_feedback_encoding_is_kept_and_is_what_encoding_again_gives(monkeypatch):
    monkeypatch.setattr(nwc, "_FEEDBACK_ENCODINGS", OrderedDict())
    w, calibration = weight(), correlated_calibration()
    config = nwc.Config(quality=4)
    fed = nwc.encode(w, config, calibration)
    assert nwc.encode(w, config, calibration) is fed  # kept
    monkeypatch.setattr(nwc, "_FEEDBACK_ENCODINGS", OrderedDict())
    fresh = nwc.encode(w, config, calibration)
    assert fresh is not fed and fresh.sha256() == fed.sha256()  # feedback is deterministic: keeping changes nothing
    changed_weight = w.copy()
    changed_weight[3, 5] += 1e-3
    changed_xtx = calibration.xtx.copy()
    changed_xtx[2, 2] *= 1.001
    for args in ((changed_weight, config, calibration), (w, replace(config, spread=1), calibration),
                 (w, config, replace(calibration, damping=0.2)), (w, config, replace(calibration, xtx=changed_xtx))):
        assert nwc.encode(*args) is not fresh  # each thing the encoding depends on is in the key
    assert len(nwc._FEEDBACK_ENCODINGS) == 5
    monkeypatch.setattr(nwc, "FEEDBACK_KEPT_BYTES", fresh.nbytes)  # room for one: the least recently used goes
    monkeypatch.setattr(nwc, "_FEEDBACK_ENCODINGS", OrderedDict())
    nwc.encode(w, config, calibration)
    nwc.encode(changed_weight, config, calibration)
    (kept,) = nwc._FEEDBACK_ENCODINGS.values()
    assert nwc.encode(changed_weight, config, calibration) is kept


def test_a_budget_picks_the_least_distortion_that_fits():
    w = weight(256, 64)
    options = nwc.level_options(w, nwc.Config(), None)  # (choice, estimated bits, error), fewest bits first
    assert {o[0][0] for o in options} == {"nwc", "tans", "float16"}
    for budget in (options[2][1] / w.size, options[8][1] / w.size + 0.01):
        enc = nwc.encode(w, nwc.Config(bits_per_weight=budget))
        best = min((o for o in options if o[1] <= budget * w.size), key=lambda o: o[2])
        assert enc.bits_per_weight <= budget
        assert enc.sha256() == nwc.encode(w, nwc.resolved(nwc.Config(), best[0])).sha256()
    with pytest.raises(CodecError, match="nwc: a budget of 0.1 bits/weight is below"):
        nwc.encode(w, nwc.Config(bits_per_weight=0.1))


def test_a_corrupted_or_foreign_encoding_is_refused():
    enc = nwc.encode(weight(), nwc.Config(quality=3))
    words = enc.arrays["latent3.words"].copy()
    words[1] ^= 1
    with pytest.raises(CodecError, match="corrupted"):
        nwc.decode(replace(enc, arrays={**enc.arrays, "latent3.words": words}))
    with pytest.raises(CodecError, match="encoded with network 0123"):
        nwc.decode(replace(enc, header={**enc.header, "network": "0123"}))
    with pytest.raises(CodecError, match="encoded with table bank 0123"):
        nwc.decode(replace(enc, header={**enc.header, "bank": "0123"}))
    tables = enc.arrays["latent_tables"].copy()
    tables[0] = len(nwc_tables.bank())
    with pytest.raises(CodecError, match="beyond the bank"):
        nwc.decode(replace(enc, arrays={**enc.arrays, "latent_tables": tables}))


def test_the_bank_rows_are_laplace_tables_on_their_supports():
    bank = nwc_tables.bank()
    assert bank.shape == (len(nwc_tables.SCALES) * len(nwc_tables.HALF_WIDTHS), 255) and len(bank) < nwc_tables.OWN
    assert np.all(bank.sum(axis=1, dtype=np.int64) == 2**nwc_tables.TABLE_LOG)
    for row, m in ((0, 1), (len(nwc_tables.HALF_WIDTHS) - 1, 127), (5 * len(nwc_tables.HALF_WIDTHS) + 5, 8)):
        support = np.flatnonzero(bank[row])
        assert support.tolist() == list(range(2 * m + 1))
        assert np.all(np.diff(bank[row, m:2 * m + 1].astype(int)) <= 0) and bank[row, m] == bank[row].max()


def test_a_channel_takes_a_bank_row_where_it_costs_fewer_bits_than_its_own_table():
    rng = np.random.default_rng(0)
    laplace = np.rint(rng.laplace(2.0, 3.0, 2000)).astype(np.int64)  # centred on 2: the row is shifted by lowest
    table, lowest, bits = nwc_tables.choose(laplace, 2000, nwc_tables.TABLE_LOG)
    row = nwc_tables.bank()[table]
    m = (np.count_nonzero(row) - 1) // 2
    assert table != nwc_tables.OWN and lowest == 2 - m and 8 < bits
    own = nwc_tables.choose(laplace, 2000, 9)  # no bank for other table sizes
    assert own[0] == nwc_tables.OWN and own[1] == laplace.min() and own[2] > bits
    two_peaks = np.concatenate([np.full(500_000, -20), np.full(500_000, 20), rng.integers(-20, 21, 1000)])
    assert nwc_tables.choose(two_peaks, len(two_peaks), nwc_tables.TABLE_LOG)[0] == nwc_tables.OWN


def test_a_small_layer_spends_far_fewer_bits_on_tables_and_stream_states(monkeypatch):
    w = weight(96, 48)
    enc = nwc.encode(w, nwc.Config(quality=6))
    assert enc.header["states"] == 1 and np.all(enc.arrays["latent_tables"] != nwc_tables.OWN)
    monkeypatch.setattr(nwc_tables, "choose", lambda latents, symbols, table_log: (
        nwc_tables.OWN, int(latents.min()), 0.0))
    monkeypatch.setattr(nwc, "states_for", lambda symbols: nwc.STATES)
    own = nwc.encode(w, nwc.Config(quality=6))
    assert "bank" not in own.header and np.array_equal(nwc.decode(own), nwc.decode(enc))
    assert enc.bits_per_weight < 0.7 * own.bits_per_weight


@pytest.mark.parametrize("options,match", [
    ({"quality": 99}, "quality must be in 1.."), ({"quality": 2, "bits_per_weight": 4.0}, "one of quality"),
    ({"tans_levels": 4}, "tans_levels: tans: levels must be odd"), ({"float16": True, "tans_levels": 5}, "one of quality"),
    ({"spread": 0}, "spread must be in"), ({"table_log": 7}, "table_log >= 8")])
def test_bad_options_are_clear_errors(options, match):
    with pytest.raises(CodecError, match=match):
        nwc.Config(**options)


def test_the_shipped_codec_says_how_it_was_trained():
    network = nwc_network.load()
    assert nwc_network.CODEC_FILE.stat().st_size < 10 * 2**20
    config = network.config
    assert len(config["data_sha256"]) == 64 and "ppocr-det" not in config["models"]  # held out
    assert np.all(np.diff(network.lambdas) > 0)
    with np.load(nwc_network.CODEC_FILE) as f:
        assert json.loads(bytes(f["config"]).decode()) == config


@pytest.mark.parametrize("quality", [1, 6, 12])
def test_the_planning_estimate_bounds_the_coded_size_from_above(quality):
    w = weight(384, 96, seed=quality)
    enc = nwc.encode(w, nwc.Config(quality=quality))
    estimate = nwc.estimated_bits(nwc.latents(enc), (384, 96), nwc.Config())
    assert 8 * enc.nbytes <= estimate <= 1.06 * 8 * enc.nbytes


@pytest.mark.parametrize("quality,levels", [(3, 7), (8, 23)])
def test_the_plan_measures_a_large_layer_on_a_sample_of_its_chunks_and_rows(quality, levels):
    w = weight(1000, 160, seed=quality)  # 10,080 chunks: the plan rounds PLAN_CHUNKS of them
    assert w.shape[1] * -(-w.shape[0] // 16) > 4 * nwc.PLAN_CHUNKS
    options = {o[0]: o[1:] for o in nwc.level_options(w, nwc.Config(), None)}
    bits, error = options["nwc", quality]
    enc = nwc.encode(w, nwc.Config(quality=quality))
    assert abs(bits / (8 * enc.nbytes) - 1.02) < 0.03  # the 2 % margin, give or take the sample's
    assert error == pytest.approx(relative_error(w, nwc.decode(enc)) ** 2, rel=0.05)
    # tans: on a sample of rows, its table and stream states scaled with them
    bits, error = options["tans", levels]
    enc = nwc.encode(w, nwc.Config(tans_levels=levels))
    assert 8 * enc.nbytes <= bits <= 1.05 * 8 * enc.nbytes
    assert error == pytest.approx(relative_error(w, nwc.decode(enc)) ** 2, rel=0.05)


def test_a_small_layer_is_planned_as_tans_where_the_latent_tables_cost_more_than_its_weights():
    w = weight(24, 96)  # 2,304 weights: 16 latent tables and 96 column scales cost over 4.5 bits/weight
    options = nwc.level_options(w, nwc.Config(), None)
    network = [o for o in options if o[0][0] == "nwc"]
    assert min(o[1] for o in network) > 4.5 * w.size
    enc = nwc.encode(w, nwc.Config(bits_per_weight=4.5))
    scalar = nwc.scalar(enc)
    assert enc.codec == "nwc" and enc.header["scalar"] == "tans" and scalar.codec == "tans"
    assert enc.bits_per_weight <= 4.5 and nwc.report(enc)["scalar"] == "tans"
    levels = scalar.header["levels"]
    assert scalar.sha256() == tans.encode(w, tans.Config(levels=levels)).sha256()  # stored as tans stores it
    assert np.array_equal(nwc.decode(enc), tans.decode(scalar))
    chosen = next(o for o in options if o[0] == ("tans", levels))
    assert chosen[1] == 8 * enc.nbytes  # a small layer: measured whole
    assert nwc.encode(w, nwc.resolved(nwc.Config(), ("tans", levels))).sha256() == enc.sha256()  # reproduced


def test_a_large_heavy_tailed_layer_is_planned_with_the_network():
    rng = np.random.default_rng(3)  # t(3): at 4.5 bits/weight the network's 5.8e-3 relative error, tans's 6.9e-3
    w = (rng.standard_t(3, (512, 128)) * np.exp(0.5 * rng.standard_normal(128)) * 0.05).astype(np.float32)
    enc = nwc.encode(w, nwc.Config(bits_per_weight=4.5))
    assert nwc.scalar(enc) is None and enc.bits_per_weight <= 4.5


def test_with_feedback_a_layer_planned_for_the_network_keeps_it_only_where_its_feedback_output_error_is_lower():
    w, cal = weight(128, 64), correlated_calibration(64)
    options = nwc.level_options(w, nwc.Config(), cal)

    def error(c):
        return feedback.output_error(w, nwc.decode(nwc.encode(w, nwc.resolved(nwc.Config(), c), cal)), cal.xtx)

    kept = 0
    for choice in [("nwc", 2), ("nwc", 3), ("nwc", 9)]:
        bits = next(o[1] for o in options if o[0] == choice)
        rival = max((o for o in options if o[0][0] == "tans" and o[1] <= bits), key=lambda o: o[1])[0]
        network = error(choice) <= error(rival)
        kept += network
        narrowed = nwc.coding_by_feedback(w, nwc.Config(), cal, options, choice)
        assert narrowed == (options if network else [o for o in options if o[0][0] != "nwc"])  # tans, float16
    assert 0 < kept < 3  # both outcomes occur on this layer
    assert nwc.coding_by_feedback(w, nwc.Config(), cal, options, ("tans", 63)) == options  # tans is kept as planned


def test_a_float16_layer_round_trips_exactly_and_counts_every_stored_bit():
    w = weight(24, 96)
    enc = nwc.encode(w, nwc.Config(float16=True))
    assert enc.codec == "nwc" and enc.header == {"scalar": "float16"} and nwc.scalar(enc) is None
    assert list(enc.arrays) == ["weight"] and enc.arrays["weight"].dtype == np.float16
    np.testing.assert_array_equal(nwc.decode(enc), w.astype(np.float16).astype(np.float32))
    assert enc.nbytes == 2 * w.size + enc.header_bytes
    assert nwc.report(enc) == {"scalar": "float16", "payload_bits_per_weight": 16.0,
                               "overhead_bits": 8 * enc.header_bytes}
    (option,) = [o for o in nwc.level_options(w, nwc.Config(), None) if o[0][0] == "float16"]
    assert option[:2] == (("float16", 16), 8 * enc.nbytes)  # exact: what the encode stores
    assert option[2] == pytest.approx(relative_error(w, nwc.decode(enc)) ** 2, rel=1e-9)
    cal = correlated_calibration(96)  # rounded to nearest with or without feedback: the same bytes
    assert nwc.encode(w, nwc.resolved(nwc.Config(), option[0]), cal).sha256() == enc.sha256()
    wider = nwc.Encoded(enc.codec, enc.shape, {"weight": w}, enc.header)
    with pytest.raises(CodecError, match="one float16 weight"):
        nwc.decode(wider)


@pytest.mark.parametrize("sensitivity", [1.0, 1000.0])
def test_the_plan_stores_a_sensitive_small_layer_as_float16_beyond_the_most_tans_levels(sensitivity):
    small, large = weight(24, 96, 1), weight(512, 128, 2)
    matrices = {"small": small, "large": large}
    calibrations = {"small": replace(correlated_calibration(96, seed=3), sensitivity=sensitivity),
                    "large": correlated_calibration(128, seed=4)}
    configs = nwc.plan(matrices, {n: nwc.Config(bits_per_weight=6) for n in matrices}, calibrations)
    # sensitive: float16 (16.2 bits/weight) is worth its bits; otherwise tans's most levels (10 bits/weight) or fewer
    assert configs["small"].float16 == (sensitivity > 1) and not configs["large"].float16
    encodings = {n: nwc.encode(matrices[n], configs[n], calibrations[n]) for n in matrices}
    assert sum(8 * e.nbytes for e in encodings.values()) <= 6 * (small.size + large.size)
    if sensitivity > 1:
        assert nwc.report(encodings["small"])["scalar"] == "float16"
        assert relative_error(small, nwc.decode(encodings["small"])) < 1e-3

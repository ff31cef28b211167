"""The tans codec: zero-point quantizer, exact bit accounting, mixed precision within a budget."""

from dataclasses import replace

import numpy as np
import pytest

from bie_compiler import codecs
from bie_compiler.codecs import budget_split, feedback, make_config, rotation, tans, tans_coder
from bie_compiler.errors import CodecError


def weights(seed, shape, scale=0.05):
    return (np.random.default_rng(seed).standard_t(4, shape) * scale).astype(np.float32)


def test_quantizer_has_odd_levels_and_an_exact_zero_centre():
    w = weights(0, (16, 300))
    w[:, :20] = 0.0
    w[3] = 0.0  # an all-zero channel
    for levels in (3, 5, 15, 255):
        codes, steps = tans.quantize(w, levels)
        assert codes.min() >= -(levels // 2) and codes.max() <= levels // 2
        assert (codes[:, :20] == 0).all() and steps[3] == 0
        decoded = tans.dequantize(codes, steps)
        assert (decoded[:, :20] == 0).all()
        # zero is a level, and every weight goes to its nearest level unless clipped
        inside = np.abs(codes) < levels // 2
        safe = np.where(steps > 0, steps, 1)[:, None]
        assert (np.abs(w / safe - codes)[inside] <= 0.5 + 1e-5).all()
    assert len(np.unique(tans.quantize(w, 3)[0])) == 3


def test_weights_on_the_grid_round_trip_exactly():
    rng = np.random.default_rng(1)
    step = np.float32(0.25)
    w = (rng.integers(-7, 8, (9, 40)) * step).astype(np.float32)
    w[:, 0] = 7 * step  # every channel reaches the top level, so the unclipped step is exactly 0.25
    enc = tans.encode(w, tans.Config(levels=15))
    np.testing.assert_array_equal(tans.decode(enc), w)


def test_config_validation():
    for bad in (dict(levels=4), dict(levels=1), dict(levels=257), dict(levels=5, bits_per_weight=2.0),
                dict(bits_per_weight=-1.0), dict(table_log=4), dict(table_log=16), dict(states=0), dict(stream_symbols=0),
                dict(levels=255, table_log=7), dict(tans_execution="lazy"), dict(lut_tables="fp16")):
        with pytest.raises(CodecError, match="tans"):
            make_config("tans", bad)
    assert tans.Config().fixed_levels == tans.DEFAULT_LEVELS
    assert tans.Config(bits_per_weight=3.0).fixed_levels == 0
    # the execution and the look-up tables choose the kernel, not the encoding: the builder's keywords, never in the
    # stored header
    config = tans.Config(tans_execution="stream", lut_tables="fp32")
    assert codecs.kernel_options(config) == {"tans_execution": "stream", "lut_tables": "fp32"}
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    assert tans.encode(w, config).sha256() == tans.encode(w, tans.Config()).sha256()


def test_exact_bit_accounting():
    w = weights(2, (40, 300))
    enc = tans.encode(w, tans.Config(levels=7, states=3, stream_symbols=1000))
    a = enc.arrays
    streams = -(-40 // 4)  # ceil(1000 / 300) = 4 rows per stream
    assert a["counts"].dtype == np.uint16 and a["counts"].shape == (7,)
    assert a["offsets"].dtype == np.uint32 and a["offsets"].shape == (streams + 1,)
    assert a["steps"].dtype == np.float32 and a["steps"].shape == (40,)
    total_bits = int(a["offsets"][-1])
    assert a["words"].shape == (total_bits // 32 + 3,)
    assert enc.nbytes == 2 * 7 + 4 * (streams + 1) + 4 * (total_bits // 32 + 3) + 4 * 40 + enc.header_bytes
    assert enc.bits_per_weight == 8 * enc.nbytes / (40 * 300)
    report = tans.report(enc)
    assert report["streams"] == streams
    assert report["payload_bits"] == total_bits - streams * 3 * 11
    assert report["payload_bits"] + report["overhead_bits"] == 8 * enc.nbytes


def test_entropy_coding_beats_fixed_width_packing():
    """Laplacian-like weights at 15 levels: coded payload well under log2(15) = 3.9 bits."""
    w = weights(3, (256, 512))
    enc = tans.encode(w, tans.Config(levels=15))
    codes, _ = tans.quantize(w, 15)
    p = np.bincount((codes + 7).ravel()) / codes.size
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    assert entropy < 3.0
    assert tans.report(enc)["payload_bits_per_weight"] <= 1.005 * entropy
    assert enc.bits_per_weight < entropy + 0.1


def test_decoded_symbols_are_the_quantizer_codes():
    w = weights(4, (33, 129))
    enc = tans.encode(w, tans.Config(levels=31, table_log=9, states=8, stream_symbols=500))
    codes, steps = tans.quantize(w, 31)
    np.testing.assert_array_equal(tans.decode_symbols(enc), codes)
    np.testing.assert_array_equal(tans.decode(enc), tans.dequantize(codes, steps))


@pytest.mark.parametrize("budget", [2.0, 3.0, 4.0])
def test_mixed_precision_meets_the_budget_with_measured_sizes(budget):
    layers = {"big": weights(5, (256, 256)), "small": weights(6, (64, 128), 1.0), "wide": weights(7, (16, 1024), 0.01)}
    plan = tans.plan(layers, {n: tans.Config(bits_per_weight=budget) for n in layers})
    bits = sum(8 * tans.encode(w, plan[n]).nbytes for n, w in layers.items())
    total = sum(w.size for w in layers.values())
    assert bits <= budget * total
    assert all(c.bits_per_weight == 0 and c.levels in tans.LEVEL_CHOICES for c in plan.values())
    # nothing affordable is left: raising any one layer to its next level would break the budget or not help
    for name, w in layers.items():
        higher = [lv for lv in tans.LEVEL_CHOICES if lv > plan[name].levels]
        if higher:
            extra = 8 * tans.encode(w, tans.Config(levels=higher[0])).nbytes - 8 * tans.encode(w, plan[name]).nbytes
            assert bits + extra > budget * total or extra <= 0


def _calibrated(layers: dict, sensitivities: list[float]) -> dict:
    """Correlated inputs per layer (feedback then spreads error widely, and its codes entropy-code larger)."""
    out = {}
    for i, (name, w) in enumerate(layers.items()):
        k = w.shape[1]
        mixing = np.random.default_rng(20 + i).standard_normal((k, k))
        x = np.random.default_rng(10 + i).standard_normal((512, k)) @ mixing
        out[name] = feedback.Calibration(x.T @ x, 512, act_order=True, sensitivity=sensitivities[i])
    return out


@pytest.mark.parametrize("rotate, budget", [(False, 3.0), (True, 2.5)])
def test_a_calibrated_budget_fits_the_feedback_codes(rotate, budget):
    """The levels chosen on round-to-nearest sizes overrun the budget once feedback codes them (and the rotation's
    signs are stored); the plan lowers them until what compile stores fits, then spends what is left: no layer's
    next level would still fit."""
    layers = {"a": weights(1, (128, 256)), "b": weights(2, (64, 128), 0.2), "c": weights(3, (96, 256), 0.01)}
    calibrations = _calibrated(layers, [1.0, 0.3, 2.0])
    configs = {n: tans.Config(bits_per_weight=budget, rotate=rotate) for n in layers}
    total = sum(w.size for w in layers.values())

    def stored_bits(plan):
        return sum(8 * codecs.encode("tans", w, plan[n], calibrations[n]).nbytes for n, w in layers.items())

    rotated = {n: rotation.rotate(w, rotation.signs(w.shape[1])).astype(np.float32) if rotate else w
               for n, w in layers.items()}
    seen = {n: rotation.rotated_calibration(c) if rotate else c for n, c in calibrations.items()}
    on_rounded_sizes = budget_split.plan(  # the split alone, as before the fit
        "tans", rotated, configs, seen, tans._options, lambda c, levels: replace(c, levels=levels, bits_per_weight=0.0))
    assert stored_bits(on_rounded_sizes) > budget * total
    fitted = codecs.plan("tans", layers, configs, calibrations)
    assert stored_bits(fitted) <= budget * total
    for n in layers:
        raised = tans.LEVEL_CHOICES[tans.LEVEL_CHOICES.index(fitted[n].levels) + 1]
        assert stored_bits({**fitted, n: replace(fitted[n], levels=raised)}) > budget * total


def test_fit_lowers_the_layer_losing_least_per_bit_saved_until_the_measured_bits_fit():
    options = {"a": [(3, 100, 9.0), (5, 200, 4.0), (7, 300, 1.0)], "b": [(3, 100, 9.0), (5, 200, 4.5), (7, 300, 1.0)]}
    measured = []

    def measure(choice):
        measured.append(dict(choice))
        return {n: {3: 110, 5: 220, 7: 330}[c] for n, c in choice.items()}  # 10 % over the planned sizes

    assert budget_split.fit("tans", options, {"a": 7, "b": 7}, 660, measure) == {"a": 7, "b": 7}
    # 660 measured > 600: per bit saved, a's 7 -> 5 loses 3.0 / 110, b's 3.5 / 110, either's 7 -> 3 8.0 / 220: a goes
    # down to 5, and 550 fits
    assert budget_split.fit("tans", options, {"a": 7, "b": 7}, 600, measure) == {"a": 5, "b": 7}
    assert measured[-1] == {"a": 5}  # only the lowered layer measured again
    with pytest.raises(CodecError, match="smallest choices"):
        budget_split.fit("tans", options, {"a": 3, "b": 3}, 200, measure)


def test_fit_spends_what_the_last_step_down_left_on_the_best_measured_step_up():
    options = {"a": [(3, 100, 9.0), (5, 200, 5.0), (7, 250, 1.0)], "b": [(3, 100, 9.0), (5, 200, 4.5), (7, 300, 1.0)]}
    measured = []

    def measure(choice):
        measured.append(dict(choice))
        return {n: {3: 110, 5: 220, 7: {"a": 275, "b": 330}[n]}[c] for n, c in choice.items()}  # 10 % over

    # 550 measured > 540: b's 7 -> 5 loses 3.5 per 110 bits saved, a's 5 -> 3 4.0 per 110; b goes down to 440, which
    # leaves 100 bits: a's 5 -> 7 (55 more, 4.0 less distortion) fits, b's 5 -> 7 (110) does not
    assert budget_split.fit("tans", options, {"a": 5, "b": 7}, 540, measure) == {"a": 7, "b": 5}
    assert measured[1:] == [{"b": 5}, {"a": 7}]
    # a step up that measures larger than expected is undone: a's 5 -> 7 expected at 495 of 500 bits, measured 520
    def larger(choice):
        return {n: 300 if (n, c) == ("a", 7) else b for (n, c), b in zip(choice.items(), measure(choice).values())}

    assert budget_split.fit("tans", options, {"a": 5, "b": 7}, 500, larger) == {"a": 5, "b": 5}


def test_plan_reads_each_matrix_once_and_holds_none_of_them():
    from bie_compiler.codecs.stored import LazyMapping

    layers = {"a": weights(12, (64, 128)), "b": weights(13, (32, 256), 0.3)}
    reads = []
    lazy = LazyMapping(layers, lambda name: reads.append(name) or layers[name].copy())  # as a model's files are read
    configs = {n: tans.Config(bits_per_weight=3.0) for n in layers}
    assert tans.plan(lazy, configs) == tans.plan(layers, configs)
    assert reads == ["a", "b"]


def test_more_budget_means_less_distortion():
    layers = {"a": weights(8, (128, 256)), "b": weights(9, (128, 128), 0.2)}

    def distortion(budget):
        plan = tans.plan(layers, {n: tans.Config(bits_per_weight=budget) for n in layers})
        return sum(((tans.decode(tans.encode(w, plan[n])) - w) ** 2).sum() / (w**2).sum() for n, w in layers.items())

    d2, d3, d4 = distortion(2.0), distortion(3.0), distortion(4.0)
    assert d2 > d3 > d4


def test_plan_keeps_fixed_layers_and_encode_plans_alone():
    layers = {"fixed": weights(10, (32, 256)), "free": weights(11, (32, 256))}
    plan = tans.plan(layers, {"fixed": tans.Config(levels=5), "free": tans.Config(bits_per_weight=2.5)})
    assert plan["fixed"] == tans.Config(levels=5)
    alone = tans.encode(layers["free"], tans.Config(bits_per_weight=2.5))
    assert alone.sha256() == tans.encode(layers["free"], plan["free"]).sha256()  # one layer: the same plan
    assert alone.bits_per_weight <= 2.5


def test_unreachable_budget_is_a_clear_error():
    with pytest.raises(CodecError, match="below the smallest coding"):
        tans.plan({"tiny": weights(12, (10, 32))}, {"tiny": tans.Config(bits_per_weight=2.0)})


def test_corrupted_encoding_fails_in_decode():
    enc = tans.encode(weights(13, (8, 64)), tans.Config(levels=7))
    words = enc.arrays["words"].copy()
    words[0] ^= np.uint32(1)
    bad = tans.Encoded(enc.codec, enc.shape, dict(enc.arrays, words=words), enc.header)
    with pytest.raises(CodecError, match="corrupted"):
        tans.decode(bad)
    with pytest.raises(CodecError, match="lacks"):
        tans.decode(tans.Encoded(enc.codec, enc.shape, enc.arrays, {k: v for k, v in enc.header.items() if k != "crc32"}))
    assert tans_coder.MAX_ALPHABET >= max(tans.LEVEL_CHOICES)

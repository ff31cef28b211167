"""The BitVert performance model against hand-computed tiles, stalls, DRAM traffic and energy."""

import numpy as np
import pytest

from bie_compiler.runtime.bitvert import perf_model as pm


def _tile_weights():
    """One full tile (32 channels x 16 reduction elements) with a few hand-picked weights."""
    w = np.zeros((32, 16), np.int8)
    w[0, 0], w[0, 1] = 7, 5  # sign-magnitude ones 3, 2; magnitude columns {0,1,2}
    w[1, 0] = -12  # ones |12| = 2, sign 1: 3; columns {2,3}; two's complement 11110100
    w[2, 3] = -15  # ones 4 + 1 = 5; columns {0..3}; two's complement 11110001
    w[3, :3] = -1  # ones 1 + 1 = 2 each; column {0}; two's complement 11111111 (3 ones per significance)
    w[4, 0], w[4, 8] = 3, -7  # one per pass: ones 2 and 3 + 1; columns {0,1} and {0,1,2}; 11111001
    return w


def _layer(w, m, columns=None, bitvert_bytes=1, **kw):
    n = w.shape[0]
    columns = np.full(n, 8) if columns is None else np.asarray(columns)
    return pm.LayerWorkload("l", w, m, columns, bitvert_bytes, **kw)


@pytest.mark.parametrize("accelerator, cycles", [
    ("stripes", 16),  # two passes of 8 weights over 8 multipliers, 8 bits each
    ("pragmatic", 6),  # row 4: 2 ones (3) in pass 1, then 4 (-7: three magnitude ones and the sign) in pass 2
    ("bitlet", 3),  # row 3: three -1 give three ones at every significance
    ("bitwave", 5),  # row 4: 2 magnitude columns in pass 1, 3 in pass 2 (no bit-flip applied to these weights)
])
def test_tile_cycles_by_hand(accelerator, cycles):
    perf = pm.simulate_layer(_layer(_tile_weights(), m=16), accelerator)
    assert perf.tile_cycles.tolist() == [[cycles]]
    assert perf.compute_cycles == cycles


def test_bitvert_cycles_are_kept_columns_with_chunks():
    w = np.zeros((64, 32), np.int8)
    interleaved = np.where(np.arange(64) % 2 == 0, 8, 4)  # sensitive and pruned (N = 4) channels alternate
    perf = pm.simulate_layer(_layer(w, m=16, columns=interleaved), "bitvert")
    # reordered into a sensitive chunk (tile row 0: 8 cycles) and a pruned chunk (tile row 1: 4 cycles)
    assert perf.tile_cycles.tolist() == [[8, 8], [4, 4]]
    assert perf.compute_cycles == 24
    assert perf.pe_cycles["inter_pe_stall"] == 0 and perf.pe_cycles["intra_pe_stall"] == 0


def test_output_tiles_multiply_cycles():
    perf = pm.simulate_layer(_layer(_tile_weights(), m=33), "pragmatic")  # 3 output tiles
    assert perf.compute_cycles == 3 * 6


def test_pragmatic_stalls_by_hand():
    perf = pm.simulate_layer(_layer(_tile_weights(), m=16), "pragmatic")
    c = perf.pe_cycles
    # a PE-cycle is shared by 8 multipliers; 16 outputs: busy = 16 / 8 x every one-bit
    assert c["busy"] == 2 * (5 + 3 + 5 + 6 + 6)
    # intra, per PE and pass: 8 x the pass's slowest multiplier minus their work, rows 0..4:
    # 8*3-5, 8*3-3, 8*5-5, 8*2-6, (8*2-2) + (8*4-4)
    assert c["intra_pe_stall"] == 2 * (19 + 21 + 35 + 10 + 42)
    # inter: per PE row and output, 6 - its cycles (3, 3, 5, 2, 6), and 27 empty rows x 6
    assert c["inter_pe_stall"] == 16 * (3 + 3 + 1 + 4 + 0) + 27 * 16 * 6
    assert c["padding"] == 0
    assert sum(c.values()) - c["memory_stall"] == pm.NUM_PES * perf.compute_cycles


def test_padding_and_utilization():
    w = np.ones((40, 20), np.int8)  # 2 x 2 weight tiles, 2 output tiles for M = 20
    perf = pm.simulate_layer(_layer(w, m=20), "stripes")
    # k tile 1 holds lanes 16..19 only: its second pass has no weight and is skipped
    assert perf.compute_cycles == 2 * 2 * (16 + 8)
    assert perf.pe_cycles["busy"] == 20 * 40 * 20  # each real weight keeps one of 8 multipliers busy 8 cycles
    assert perf.pe_cycles["padding"] == pm.NUM_PES * 96 - 16000
    assert perf.utilization == 16000 / (pm.NUM_PES * 96)


def test_dram_bytes_counted_once_and_energy():
    perf = pm.simulate_layer(_layer(_tile_weights(), m=16), "stripes")
    assert perf.dram_bytes == {"weights": 32 * 16 + 4 * 32, "activations": 0}  # activations stay on chip
    assert perf.dram_cycles == 640 * 8 // 128  # 40, not 8 x 40 as the reference's double multiplication gives
    assert perf.cycles == 40
    assert perf.pe_cycles["memory_stall"] == pm.NUM_PES * (40 - 16)
    assert perf.energy_pj == pytest.approx({
        "pe": 0.37e-3 / 800e6 * 1e12 * 512 * 16, "weight_sram": 145.0, "input_sram": 97.0, "dram": 1000.0 * 640 * 8 / 64})

    bv = pm.simulate_layer(_layer(_tile_weights(), m=16, columns=np.full(32, 4), bitvert_bytes=300), "bitvert")
    assert bv.dram_cycles == 19  # ceil(300 * 8 / 128)
    assert bv.energy_pj["weight_sram"] == pytest.approx(145.0 * 4 / 8)
    assert bv.energy_pj["pe"] == pytest.approx(0.45e-3 / 800e6 * 1e12 * 512 * 4)  # Table V: 0.45 mW at 800 MHz


def test_activations_spill_beyond_the_buffer():
    w = np.zeros((32, 256), np.int8)
    m = 1024  # 1024 x (256 + 32) bytes > 256 KB
    perf = pm.simulate_layer(_layer(w, m), "stripes")
    assert perf.dram_bytes["activations"] == m * (256 + 32)


def test_bitwave_uses_flipped_weights_and_their_bytes():
    w = _tile_weights()
    flipped = w.copy()
    flipped[2, 3] = -16  # one magnitude column instead of four
    flipped[4, 8] = -8  # one instead of three
    layer = _layer(w, m=16, bitwave_weight=flipped)
    perf = pm.simulate_layer(layer, "bitwave")
    assert perf.compute_cycles == 3  # rows 0 (3 + 0) and 4 (2 + 1) now have the most columns
    # per group of 8 weights: 8-bit mask + sign column + kept columns (8 bits each), 64 groups;
    # kept: row 0: 3, row 1: 2, row 2: 1, row 3: 1, row 4: 2 and 1
    groups_bits = 64 * (8 + 8) + 8 * (3 + 2 + 1 + 1 + 2 + 1)
    assert pm.bitwave_bytes(flipped) == groups_bits // 8 + 4 * 32
    assert perf.dram_bytes["weights"] == pm.bitwave_bytes(flipped)


def test_simulate_totals_and_ratios():
    layers = [_layer(_tile_weights(), m=16, columns=np.full(32, 4), bitvert_bytes=300)]
    report = pm.simulate(layers)
    acc = report["accelerators"]
    assert set(acc) == set(pm.ACCELERATORS)
    assert acc["stripes"]["cycles"] == 40 and acc["bitvert"]["cycles"] == 19
    assert report["bitvert_vs"]["stripes"]["speedup"] == pytest.approx(40 / 19)
    assert report["bitvert_vs"]["stripes"]["compute_speedup"] == pytest.approx(16 / 4)
    assert report["bitvert_vs"]["pragmatic"]["energy_ratio"] == pytest.approx(
        acc["pragmatic"]["energy_pj"] / acc["bitvert"]["energy_pj"])


def test_compute_bound_matches_the_papers_bounds():
    """Dense compute-bound layer: BitVert over Stripes = 16 / (beta 8 + (1 - beta)(8 - N))."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (320, 256)).astype(np.int8)
    for beta_chunks, pruned, bound in [(1, 2, 16 / 6.2), (2, 4, 16 / 4.8)]:  # 32 or 64 of 320 channels sensitive
        columns = np.where(np.arange(320) < 32 * beta_chunks, 8, 8 - pruned)
        report = pm.simulate([_layer(w, m=4096, columns=columns, bitvert_bytes=1)])
        assert report["bitvert_vs"]["stripes"]["compute_speedup"] == pytest.approx(bound)


def test_profile_json_round_trip():
    layer = _layer(_tile_weights(), m=48)
    for acc in pm.ACCELERATORS:
        prof = pm.profile(layer, acc)
        again = pm.WeightProfile.from_json(prof.to_json())
        assert pm.layer_perf(again, 48).to_json() == pm.simulate_layer(layer, acc).to_json()


def test_run_report_scales_stored_profiles_by_the_calls():
    from bie_compiler.runtime.bitvert import report as run_report

    layer = _layer(_tile_weights(), m=0, columns=np.full(32, 4), bitvert_bytes=300)
    stored = [("fc", {acc: p.to_json() for acc, p in pm.profiles(layer).items()})]
    rep = run_report.from_run(stored, [(0, 16), (0, 33)])  # two calls, M = 16 then 33
    assert [entry["m"] for entry in rep["layers"]] == [16, 33]
    # Stripes: 16 compute cycles per output tile, but 40 DRAM cycles per call
    assert rep["accelerators"]["stripes"]["cycles"] == 40 + max(3 * 16, 40)
    assert rep["accelerators"]["bitvert"]["cycles"] == 19 + max(3 * 4, 19)
    text = run_report.table(rep)
    assert "BitVert over stripes: 2.32x faster" in text  # 88 / 38 cycles

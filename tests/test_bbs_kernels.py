"""``bbs`` CPU matmul kernels against the reference decoder: LUT bit-serial GEMV, decode-once GEMV, the panel GEMM of
several rows (decode kernels: tests/test_conv_kernels.py)."""

import dataclasses

import numpy as np
import pytest

from bie_compiler.codecs import bbs, make_config
from bie_compiler.codecs.base import Encoded
from bie_compiler.codegen import ConvSpec, kernel_for
from bie_compiler.codegen.kernels import bbs_lut, lut
from bie_compiler.codegen.target import make_target
from bie_compiler.runtime.host import host_cpu, isa
from kernel_runs import assert_close, run

CONFIGS = [
    {"preset": "conservative"},
    {"preset": "moderate"},
    {"preset": "moderate", "sensitive_fraction": 0.0},  # pruned rows only, 100 = 6 blocks of 16 + 4 padding lanes
    {"pruned_columns": 6, "method": "avg", "sensitive_fraction": 1.0},  # sensitive rows only
    {"pruned_columns": 1, "method": "zps", "sensitive_fraction": 0.3},
]
SHAPES = [(1, 5), (100, 70), (48, 256), (512, 256)]  # (N, K): K not a multiple of 32 included; 512: many work
# items, the LUT kernel interleaving sensitive items with pruned blocks


@pytest.mark.parametrize("options", CONFIGS, ids=[str(o) for o in CONFIGS])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matmul_kernels_match_reference_decoder(options, n, k, target):
    rng = np.random.default_rng(n * k)
    w = rng.standard_t(4, (n, k)).astype(np.float32)
    enc = bbs.encode(w, make_config("bbs", options))
    call = kernel_for(enc, target, lut_tables="fp32")  # the exact tables (auto takes int8 at 4 kept columns)
    assert call.kind == ("bbs_lut" if lut.supported(target) else "bbs_decoded") and call.large_batch.kind == "bbs_gemm"
    without_avx512 = kernel_for(enc, make_target(mcpu="x86-64-v3"))
    decoded = bbs.decode(enc).astype(np.float64)
    # each exact for any row count; the pass runs the one-row kernels for one, the panel GEMM above
    for variant in (call, without_avx512, call.large_batch):
        for batch in (1, 5, 19):
            x = rng.standard_normal((batch, k)).astype(np.float32)
            ref = x @ decoded.T
            assert_close(run(variant.func, target, x, variant.constants, (batch, n)), ref)


@pytest.mark.parametrize("options", [{"preset": "moderate"}, {"preset": "moderate", "sensitive_fraction": 0.0},
                                     {"pruned_columns": 4, "method": "avg", "sensitive_fraction": 0.5}],
                         ids=["moderate", "pruned rows only", "avg"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_int8_tables_within_their_stated_bound(options, n, k, target):
    """The int8-table GEMV against the reference decoder: within ``int8_error_bound`` (plus fp32 rounding) per
    output, and not exact (the tables are quantized); the panel GEMM over the same re-laid-out words exact."""
    if not lut.int8_supported(target):
        pytest.skip("the int8 tables need AVX512-BW and VNNI on this host")
    rng = np.random.default_rng(n * k + 1)
    enc = bbs.encode(rng.standard_t(4, (n, k)).astype(np.float32), make_config("bbs", options))
    call = kernel_for(enc, target, lut_tables="int8")
    fp32 = kernel_for(enc, target, lut_tables="fp32")
    assert [c.nbytes for c in call.constants] == [c.nbytes for c in fp32.constants]  # the same bytes, moved
    decoded = bbs.decode(enc).astype(np.float64)
    for batch in (1, 5):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        ref = x @ decoded.T
        error = np.abs(run(call.func, target, x, call.constants, (batch, n)) - ref)
        bound = bbs_lut.int8_error_bound(x, enc)
        assert (error <= bound + 1e-5 * np.abs(ref).max()).all(), (error - bound).max()
        pruned = bound > 0  # the sensitive rows' outputs are exact
        assert pruned.any() == (int(enc.header["sensitive"]) < n)
        assert (error[pruned] > 0).all() or not pruned.any()  # quantized tables
        assert_close(run(call.large_batch.func, target, x, call.large_batch.constants, (batch, n)), ref)


def pruned_blocks_rotated(enc: Encoded) -> Encoded:
    """``enc`` with its whole blocks of 16 pruned rows stored in another order (block ``i`` moved to ``i - 1``, the
    first to the last whole place; a partial last block stays): the same weights, each block in the other slot of
    a pair of the int8-table GEMV (or, with an odd count, alone)."""
    count, n = int(enc.header["sensitive"]), enc.shape[0]
    whole = (n - count) // bbs.LANES
    blocks = enc.arrays["columns"].shape[0]
    order = np.r_[np.roll(np.arange(whole), -1), np.arange(whole, blocks)]  # new block -> old block
    rows = np.r_[np.arange(count), count + (order[:, None] * bbs.LANES + np.arange(bbs.LANES)).ravel()]
    rows = rows[rows < n]  # new stored row -> old stored row
    place = np.empty(n, np.int32)
    place[rows] = np.arange(n, dtype=np.int32)
    arrays = dict(enc.arrays, columns=enc.arrays["columns"][order], meta=enc.arrays["meta"][order],
                  scales=enc.arrays["scales"][rows], position=place[enc.arrays["position"]])
    return dataclasses.replace(enc, arrays=arrays)


# pruned blocks (K = 70): 5 (odd), 6 (even), 6 with N not a multiple of 32 and a partial last block; with 32 or 64
# sensitive rows 9, 10, and 9 with a partial last; all sensitive
@pytest.mark.parametrize("n,fraction", [(80, 0.0), (96, 0.0), (88, 0.0), (176, 0.1), (192, 0.1), (200, 0.2),
                                        (48, 1.0)])
def test_int8_gemv_blocks_alike_in_either_slot_of_a_pair(n, fraction, target):
    """The int8-table GEMV computes pruned blocks two to a work item (one alone with an odd count): within the
    stated bound, and each block's outputs bit-identical whichever slot computes it (the pruned blocks rotated by
    one: each whole block moves to the other slot, the first with an odd count of items to the last item), the same
    operations per output as one block per item."""
    if not lut.int8_supported(target):
        pytest.skip("the int8 tables need AVX512-BW and VNNI on this host")
    rng = np.random.default_rng(n)
    enc = bbs.encode(rng.standard_t(4, (n, 70)).astype(np.float32),
                     make_config("bbs", {"preset": "moderate", "sensitive_fraction": fraction}))
    rotated = pruned_blocks_rotated(enc)
    np.testing.assert_array_equal(bbs.decode(rotated), bbs.decode(enc))  # the same weights
    x = rng.standard_normal((3, 70)).astype(np.float32)
    outs = [run(c.func, target, x, c.constants, (3, n)) for c in (kernel_for(e, target, lut_tables="int8")
                                                                  for e in (enc, rotated))]
    np.testing.assert_array_equal(outs[1].view(np.uint32), outs[0].view(np.uint32))
    ref = x @ bbs.decode(enc).astype(np.float64).T
    error, bound = np.abs(outs[0] - ref), bbs_lut.int8_error_bound(x, enc)
    assert (error <= bound + 1e-5 * np.abs(ref).max()).all(), (error - bound).max()
    assert (bound > 0).any() == (fraction < 1)


def test_prefetches_follow_the_stream_of_each_slot_of_an_item():
    """A work item reads its blocks side by side, so the prefetch AHEAD_BYTES on runs past a block's end into the
    same slot of the next items (not into the flat next block, the item's own other block, read already); with one
    block an item that is the flat stream."""
    words = 128  # a block's
    assert bbs_lut.items_stream_ahead(4, 1, 100, 2, words) == 5 * words + 100  # within the block
    assert bbs_lut.items_stream_ahead(4, 1, 130, 2, words) == 7 * words + 2  # the next item's second block
    assert bbs_lut.items_stream_ahead(4, 0, 300, 2, words) == 8 * words + 44  # two items on, the first block
    assert all(bbs_lut.items_stream_ahead(first, 0, ahead, 1, words) == first * words + ahead
               for first in range(3) for ahead in range(0, 600, 37))


def test_int8_tables_only_where_4_columns_are_kept(target):
    if not lut.int8_supported(target):
        pytest.skip("the int8 tables need AVX512-BW and VNNI on this host")
    w = np.random.default_rng(2).standard_t(4, (40, 96)).astype(np.float32)
    for preset, fits in (("moderate", True), ("conservative", False)):
        enc = bbs.encode(w, bbs.Config(preset))
        columns = kernel_for(enc, target, lut_tables="int8").constants[3]
        np.testing.assert_array_equal(columns, bbs_lut.int8_nibbles(enc.arrays["columns"]) if fits
                                      else enc.arrays["columns"])
        assert kernel_for(enc, target).kind == ("bbs_lut_int8" if fits else "bbs_lut")  # the default: auto


@pytest.mark.skipif("avx512f" not in isa(host_cpu()), reason="the LUT kernel needs AVX-512 on this host")
def test_lut_kernel_uses_the_table_lookup_and_runs_in_parallel(target):
    enc = bbs.encode(np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32), bbs.Config())
    script = kernel_for(enc, target, lut_tables="fp32").func.script()
    assert "llvm.x86.avx512.permvar.sf.512" in script and "T.parallel" in script


def test_without_avx512_the_decode_once_gemv():
    enc = bbs.encode(np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32), bbs.Config())
    call = kernel_for(enc, make_target(mcpu="x86-64-v3"))
    assert call.kind == "bbs_decoded" and call.large_batch.kind == "bbs_gemm"


@pytest.mark.parametrize("mcpu", [None, "x86-64-v3"], ids=["host", "without AVX-512"])
@pytest.mark.parametrize("sensitive", [0.0, 0.3, 1.0])
def test_panel_gemm_merges_its_stored_rows_into_the_output_channels(mcpu, sensitive, target):
    """The panel GEMM computes in stored order and reads each output channel from its stored row: with AVX-512 a
    window of 16 channels as a permute of two spans of the stored rows (the last 4 of N = 100 one at a time),
    without it one load per channel."""
    build_for = target if mcpu is None else make_target(mcpu=mcpu)
    rng = np.random.default_rng(7)
    w = rng.standard_t(4, (100, 70)).astype(np.float32)
    enc = bbs.encode(w, make_config("bbs", {"preset": "moderate", "sensitive_fraction": sensitive}))
    gemm = kernel_for(enc, build_for).large_batch
    avx512 = mcpu is None and "avx512f" in isa(host_cpu())
    assert ("llvm.x86.avx512.vpermi2var.ps.512" in gemm.func.script()) == avx512
    decoded = bbs.decode(enc).astype(np.float64)
    for batch in (2, 8, 19):
        x = rng.standard_normal((batch, 70)).astype(np.float32)
        assert_close(run(gemm.func, build_for, x, gemm.constants, (batch, 100)), x @ decoded.T)


@pytest.mark.parametrize("preset", ["moderate", "conservative"])  # kept columns as nibbles by channel; as words
def test_decode_reads_the_sensitive_rows_only_where_they_are_taken(preset):
    """The sensitive/pruned choice is a lazy if_then_else: a Select evaluates both sides, and TVM simplifies
    each under its own condition, dropping the index clamps: pruned rows then read far past the sensitive
    rows (a segfault on MobileNet's classifier at batch 8)."""
    w = np.random.default_rng(0).standard_normal((100, 96)).astype(np.float32)
    enc = bbs.encode(w, bbs.Config(preset=preset, sensitive_channels=32))
    conv = ConvSpec((1, 1), (0, 0, 0, 0), (1, 1), (100, 96, 1, 1))
    script = kernel_for(enc, make_target("llvm"), conv).func.script()
    assert "T.if_then_else(position[v_i0] < 32," in script and "T.Select(position[v_i0] < 32," not in script
    assert ("nibbles[" in script) == (preset == "moderate") and ("columns[" in script) == (preset == "conservative")

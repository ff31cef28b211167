"""The nwc decoder run at load (tANS latents + synthesis network in one PrimFunc) against the numpy reference
decoder, and the dense kernels over what it writes against ``x @ decoded.T``; with ``nwc_decode="per-call"`` the
fused one-row matmul against ``x @ decoded.T`` and the decode kernel against the reference decoder; malformed
encodings refused."""

import numpy as np
import pytest
import tvm

from bie_compiler.codecs import feedback, nwc, nwc_tables
from bie_compiler.codegen import ConvSpec, kernel_for
from bie_compiler.errors import CodecError
from kernel_runs import assert_close, build, computed_constants, run


def weight(n, k, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(5, (n, k)) * np.exp(0.5 * rng.standard_normal(k)) * 0.05).astype(np.float32)


def calibration(k, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, k)) @ rng.standard_normal((k, k)) * np.exp(rng.standard_normal(k))
    return feedback.Calibration(x.T @ x, 200, damping=0.01)


def assert_decoded(got: np.ndarray, enc) -> None:
    """``got`` [N, K] is the reference decoder's weight up to the network's float rounding: 1e-5 of each column's
    scale, the unit the network computes in (a relative check fails on columns whose weights are near zero)."""
    assert np.all(np.abs(got - nwc.decode(enc)) <= 1e-5 * enc.arrays["scales"].astype(np.float32))


CASES = [  # (N, K, Config, calibrated, (states, channels with their own table)): N not a multiple of the chunk,
    # K not of the tANS states or of the tile; the latents' tables from the bank, their own, or both
    (1, 1, nwc.Config(quality=1), False, (1, 0)),
    (100, 40, nwc.Config(quality=7), True, (1, 0)),  # per-column levels from the Hessian diagonal
    (37, 300, nwc.Config(quality=12, table_log=9), False, (2, 16)),  # no bank for 2^9 states
    (800, 500, nwc.Config(quality=12), False, (32, 5)),
]


@pytest.mark.parametrize("n,k,config,calibrated,tables", CASES)
def test_decode_at_load_equals_the_reference_decoder_and_the_kernels_compute_from_it(n, k, config, calibrated, tables,
                                                                                     target):
    enc = nwc.encode(weight(n, k, n + k), config, calibration(k) if calibrated else None)
    assert len(set(enc.arrays["levels"].tolist())) == (3 if calibrated else 1)
    assert (enc.header["states"], int(np.sum(enc.arrays["latent_tables"] == nwc_tables.OWN))) == tables
    call = kernel_for(enc, target)
    (packed,) = computed_constants(call, target)
    unpacked = packed.transpose(0, 2, 1).reshape(-1, k)
    assert_decoded(unpacked[:n], enc)
    assert np.all(unpacked[n:] == 0)
    rng = np.random.default_rng(k)
    for variant, batch in ((call, 1), (call.large_batch, 5)):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        assert_close(run(variant.func, target, x, [packed], (batch, n)), x @ unpacked[:n].T.astype(np.float64))


@pytest.mark.parametrize("n,k,config,calibrated,tables", CASES[1:])  # partial chunks and tiles; (1, 1) at load only
def test_decoded_on_every_call_equals_the_reference_decoder(n, k, config, calibrated, tables, target):
    enc = nwc.encode(weight(n, k, n + k), config, calibration(k) if calibrated else None)
    call = kernel_for(enc, target, nwc_decode="per-call")
    assert call.at_load is None and not call.decodes and call.large_batch.decodes  # only the coded bytes kept
    rng = np.random.default_rng(k)
    x = rng.standard_normal((5, k)).astype(np.float32)  # not read: the decode kernel writes the weight [K, N]
    decoded = run(call.large_batch.func, target, x, call.constants, (k, n)).T
    assert_decoded(decoded, enc)
    for batch in (1, 3):  # the fused kernel takes any batch; the pass gives it one row
        x = rng.standard_normal((batch, k)).astype(np.float32)
        assert_close(run(call.func, target, x, call.constants, (batch, n)), x @ decoded.T.astype(np.float64))


def test_conv_weight_decoded_on_every_call(target):
    conv = ConvSpec(strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), kernel_shape=(6, 5, 3, 3))
    enc = nwc.encode(weight(6, 45, 3), nwc.Config(quality=5))
    call = kernel_for(enc, target, conv, nwc_decode="per-call")
    assert call.decodes and call.at_load is None
    x = np.zeros((1, 5, 8, 8), np.float32)
    assert_decoded(run(call.func, target, x, call.constants, (6, 5, 3, 3)).transpose(0, 2, 3, 1).reshape(6, 45), enc)


def test_conv_weight_is_decoded_at_load_in_oihw(target):
    conv = ConvSpec(strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), kernel_shape=(6, 5, 3, 3))
    w = weight(6, 45, 3)  # codec matrix [O, kh * kw * I], I fastest
    enc = nwc.encode(w, nwc.Config(quality=5))
    call = kernel_for(enc, target, conv)
    assert call.decodes
    (decoded,) = computed_constants(call, target)
    assert_decoded(decoded.transpose(0, 2, 3, 1).reshape(6, 45), enc)
    x = np.zeros((1, 5, 8, 8), np.float32)
    np.testing.assert_array_equal(run(call.func, target, x, [decoded], decoded.shape), decoded)


def test_malformed_encodings_are_refused_at_compile_and_at_load(target):
    enc = nwc.encode(weight(64, 32, 0), nwc.Config(quality=6))
    corrupted = nwc.Encoded(enc.codec, enc.shape, {**enc.arrays, "latent3.words": enc.arrays["latent3.words"] ^ 1},
                            enc.header)
    with pytest.raises(CodecError, match="corrupted"):
        kernel_for(corrupted, target)
    call = kernel_for(enc, target)
    decode = build(call.at_load.func, target)
    out = tvm.runtime.empty(call.constants[0].shape, "float32")
    counts, alphabets, tables, bank, offsets, *rest = call.at_load.stored
    assert np.all(tables != nwc_tables.OWN) and np.all(alphabets == 0)  # a small layer: every channel a bank row
    bad_bank = bank.copy()
    bad_bank[int(tables[0]) * nwc_tables.ALPHABET] += 1
    bad_tables = tables.copy()
    bad_tables[2] = len(nwc_tables.bank())
    bad_offsets = offsets.copy()
    bad_offsets[-1, -1] += 1 << 20
    bad_levels = rest[3].copy()
    bad_levels[0] = 200
    for stored, message in (([counts, alphabets, tables, bad_bank, offsets, *rest], "do not sum"),
                            ([counts, alphabets, bad_tables, bank, offsets, *rest], "beyond the bank"),
                            ([counts, alphabets, tables, bank, bad_offsets, *rest], "beyond the words"),
                            ([counts, alphabets, tables, bank, offsets, *rest[:3], bad_levels, *rest[4:]],
                             "quality level")):
        with pytest.raises(Exception, match=message):
            decode(*[tvm.runtime.tensor(a) for a in stored], out)


@pytest.mark.parametrize("nwc_decode", ["load", "per-call"])
def test_a_scalar_layer_runs_the_tans_kernels(nwc_decode, target):
    """Exactly, at 15 levels too: the load execution with the exact fp32 tables (nwc has no lut_tables option)."""
    w = weight(40, 96, 5)
    enc = nwc.encode(w, nwc.Config(tans_levels=15))
    call = kernel_for(enc, target, nwc_decode=nwc_decode)
    assert (call.at_load is None) == (nwc_decode == "per-call")
    decoded = nwc.decode(enc)
    x = np.random.default_rng(0).standard_normal((1, 96)).astype(np.float32)
    assert_close(run(call.func, target, x, computed_constants(call, target), (1, 40)), x @ decoded.T.astype(np.float64))


def test_a_float16_matmul_layer_is_widened_exactly_at_load_and_multiplied_from_float16_per_call(target):
    n, k = 41, 50  # N past one panel of 32 and not a multiple of the one-row kernel's 8 channels a task, K not
    # a multiple of its 16 lanes
    enc = nwc.encode(weight(n, k, 7), nwc.Config(float16=True))
    decoded = nwc.decode(enc)
    rng = np.random.default_rng(1)
    call = kernel_for(enc, target)
    (packed,) = computed_constants(call, target)
    unpacked = packed.transpose(0, 2, 1).reshape(-1, k)
    np.testing.assert_array_equal(unpacked[:n], decoded)
    assert np.all(unpacked[n:] == 0)
    for variant, batch in ((call, 1), (call.large_batch, 5)):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        assert_close(run(variant.func, target, x, [packed], (batch, n)), x @ decoded.T.astype(np.float64))
    call = kernel_for(enc, target, nwc_decode="per-call")
    assert call.at_load is None and not call.decodes and call.large_batch.decodes
    assert [c.dtype for c in call.constants] == [np.float16]  # only the float16 weight kept
    x = rng.standard_normal((5, k)).astype(np.float32)
    np.testing.assert_array_equal(run(call.large_batch.func, target, x, call.constants, (k, n)).T, decoded)
    for batch in (1, 3):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        assert_close(run(call.func, target, x, call.constants, (batch, n)), x @ decoded.T.astype(np.float64))


@pytest.mark.parametrize("nwc_decode", ["load", "per-call"])
def test_a_float16_conv_layer_is_widened_into_oihw(nwc_decode, target):
    conv = ConvSpec(strides=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), kernel_shape=(6, 5, 3, 3))
    enc = nwc.encode(weight(6, 45, 3), nwc.Config(float16=True))  # codec matrix [O, kh * kw * I], I fastest
    want = nwc.decode(enc).reshape(6, 3, 3, 5).transpose(0, 3, 1, 2)
    call = kernel_for(enc, target, conv, nwc_decode=nwc_decode)
    assert call.decodes and (call.at_load is None) == (nwc_decode == "per-call")
    x = np.zeros((1, 5, 8, 8), np.float32)
    np.testing.assert_array_equal(run(call.func, target, x, computed_constants(call, target), want.shape), want)

"""The tANS CPU kernels against the numpy reference decoder: the decoder bit-exact, the matmul at every batch path,
in both executions (``stream``: decoded on every call; ``load``: decoded once into the integer kernels' codes)."""

import numpy as np
import pytest
import tvm

from bie_compiler.codecs import tans
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import bitplane_lut, int8, lut, tans_matmul
from bie_compiler.codegen.kernels.decode import Layout
from kernel_runs import assert_close, build, call, computed_constants, run

CASES = [  # (N, K, Config): K not a multiple of the states or of 16, a short last stream, 1 to 8 states
    (1, 1, tans.Config(levels=3)),
    (37, 300, tans.Config(levels=15, stream_symbols=1000)),
    (64, 1024, tans.Config(levels=5, states=8, stream_symbols=4096)),
    (10, 7, tans.Config(levels=255, states=3, table_log=8)),
    (50, 129, tans.Config(levels=31, states=1, table_log=12, stream_symbols=300)),
]
BATCHES = (1, 2, 3, 8)  # fused (m <= FUSED_MAX_BATCH) and decode-to-buffer (larger m) paths
assert min(BATCHES) <= tans_matmul.FUSED_MAX_BATCH < max(BATCHES)


def encode(n, k, config, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, (n, k)) * (rng.random((n, k)) > 0.3)).astype(np.float32)
    return tans.encode(w, config)


def constants(enc):
    return [tvm.runtime.tensor(c) for c in tans_matmul.constants(enc)]


@pytest.mark.parametrize("n,k,config", CASES)
def test_decoder_kernel_is_bit_exact(n, k, config, target):
    enc = encode(n, k, config, n * k)
    out = tvm.runtime.empty((k, n), "float32")
    decoder = tans_matmul.decode_weights(**tans_matmul.stream_layout(enc), into=Layout.matmul(n, k), x_ndim=2)
    build(decoder, target)(tvm.runtime.tensor(np.zeros((1, k), np.float32)), *constants(enc), out)
    np.testing.assert_array_equal(out.numpy(), tans.decode(enc).T)


@pytest.mark.parametrize("n,k,config", CASES)
def test_matmul_kernel_matches_reference_decoder(n, k, config, target):
    enc = encode(n, k, config, n + k)
    matmul = kernel_for(enc, target, tans_execution="stream")
    assert matmul.func.attrs["tirx.is_scheduled"] and "T.parallel" in matmul.func.script()
    kernel = build(matmul.func, target)
    decoded = tans.decode(enc).astype(np.float64)
    rng = np.random.default_rng(k)
    for batch in BATCHES:
        x = rng.standard_normal((batch, k)).astype(np.float32)
        assert_close(call(kernel, x, matmul.constants, (batch, n)), x @ decoded.T, context=batch)


@pytest.mark.parametrize("n,k,config", CASES)
def test_load_execution_matches_the_stream_kernel_and_the_reference(n, k, config, target):
    """At load: the reference decoder's codes exactly, as the ``bie-bitplane`` kernels take them (the look-up-table
    kernel's two's complement planes with AVX-512, else 4-bit codes up to 15 levels and 8-bit above; padding zero
    whatever the buffer held); then batch 1 and batch 8 (the panel GEMM) agree with the stream kernel and
    the reference decoder."""
    enc = encode(n, k, config, 3 * n + k)
    load, stream = (kernel_for(enc, target, tans_execution=e) for e in ("load", "stream"))
    assert load.at_load is not None and stream.at_load is None
    computed = computed_constants(load, target)
    codes, steps = tans.decode_symbols(enc), enc.arrays["steps"]
    if lut.supported(target):
        assert load.kind == "tans_lut"
        want = [bitplane_lut.twos_complement_planes(codes, tans_matmul.lut_planes(config.levels)),
                bitplane_lut.lanes_of_scales(steps[:, None])]
    else:
        want = int8.Int8Weights.packed(codes, steps, tans_matmul.integer_bits(config.levels)).constants
    for got, expected in zip(computed, want):
        np.testing.assert_array_equal(got, expected)
    decoded = tans.decode(enc).astype(np.float64)
    rng = np.random.default_rng(n)
    x1 = rng.standard_normal((1, k)).astype(np.float32)
    from_load = run(load.func, target, x1, computed, (1, n))
    assert_close(from_load, x1 @ decoded.T)
    assert_close(from_load, run(stream.func, target, x1, stream.constants, (1, n)))
    x8 = rng.standard_normal((8, k)).astype(np.float32)
    from_load = run(load.large_batch.func, target, x8, computed, (8, n))
    assert_close(from_load, x8 @ decoded.T)
    assert_close(from_load, run(stream.func, target, x8, stream.constants, (8, n)))


def test_kernel_refuses_a_malformed_encoding(target):
    from bie_compiler.errors import CodecError

    enc = encode(8, 64, tans.Config(levels=7), 0)
    counts = enc.arrays["counts"].copy()
    counts[0] += 1
    bad = tans.Encoded(enc.codec, enc.shape, dict(enc.arrays, counts=counts), enc.header)
    with pytest.raises(CodecError, match="checksum"):
        kernel_for(bad, target)

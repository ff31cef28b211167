"""The tANS CPU kernels against the numpy reference decoder: the decoder bit-exact, the matmul at every batch path,
in both executions (``stream``: decoded on every call; ``load``: decoded once into the look-up-table kernels' words,
with int8 or fp32 tables, or the integer kernels' codes)."""

import numpy as np
import pytest
import tvm

from bie_compiler.codecs import tans
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import bitplane_lut, int8, lut, tans_matmul
from bie_compiler.codegen.kernels.decode import Layout
from kernel_runs import assert_close, build, call, computed_constants, run

CASES = [  # (N, K, Config): K not a multiple of the states or of 16, a short last stream, 1 to 32 states; 16 (the
    # default) and 32 run the vector decoder with AVX-512 (its reads permuted with VBMI, gathered in the target
    # fixture's second side): a row's tail in one or two vectors, tasks of 1 to 4 streams
    (1, 1, tans.Config(levels=3)),
    (37, 300, tans.Config(levels=15, stream_symbols=1000)),
    (64, 1024, tans.Config(levels=5, states=8, stream_symbols=4096)),
    (23, 90, tans.Config(levels=9, states=32, stream_symbols=200)),
    (10, 7, tans.Config(levels=255, states=3, table_log=8)),
    (50, 129, tans.Config(levels=31, states=1, table_log=12, stream_symbols=300)),
    (150, 40, tans.Config(levels=7, stream_symbols=80)),  # 75 streams: 3 tasks of the blocked decoders, the last short
]
BATCHES = (1, 2, 3, 8)  # fused (m <= FUSED_MAX_BATCH) and decode-to-buffer (larger m) paths
assert min(BATCHES) <= tans_matmul.FUSED_MAX_BATCH < max(BATCHES)


@pytest.fixture(params=["host", "host, gathered reads"])
def target(request):
    """The host target; on a CPU with AVX-512 VBMI (whose vector decoder permutes its bits out of a load), or
    without fast gathers, also the host target without VBMI and with fast gathers (LLVM's tuning), current while
    the test runs, so that the kernels built for it, directly or by ``kernel_for``, run the vector decoder with
    its second gather here too."""
    from bie_compiler.codegen.target import make_target

    host = make_target()
    if request.param == "host":
        yield host
        return
    if not lut.supported(host) or (tans_matmul.fast_gathers(host) and not tans_matmul.byte_permutes(host)):
        pytest.skip(f"{host} decodes with gathered reads (or has no vector decoder) as it is")
    gathered = {"kind": "llvm", "mcpu": host.attrs["mcpu"], "mattr": ["-avx512vbmi", "+fast-gather"]}
    with tvm.target.Target(gathered) as gathers:
        assert tans_matmul.vectorized(16) and not tans_matmul.byte_permutes(gathers)
        yield gathers


def encode(n, k, config, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(4, (n, k)) * (rng.random((n, k)) > 0.3)).astype(np.float32)
    return tans.encode(w, config)


def constants(enc):
    return [tvm.runtime.tensor(c) for c in tans_matmul.constants(enc)]


@pytest.mark.parametrize("n,k,config", CASES)
def test_decoder_kernels_are_bit_exact(n, k, config, target):
    """The decoder writing the dense weights in the matmul's layout (blocked: 64 channels a task) and the decoder
    alone (the symbols)."""
    enc = encode(n, k, config, n * k)
    out = tvm.runtime.empty((k, n), "float32")
    decoder = tans_matmul.decode_weights(**tans_matmul.stream_layout(enc), into=Layout.matmul(n, k), x_ndim=2)
    build(decoder, target)(tvm.runtime.tensor(np.zeros((1, k), np.float32)), *constants(enc), out)
    np.testing.assert_array_equal(out.numpy(), tans.decode(enc).T)
    symbols = tvm.runtime.tensor(np.full((n, k), 0x5A, np.uint8))
    build(tans_matmul.symbol_decoder(**tans_matmul.stream_layout(enc)), target)(*constants(enc)[:3], symbols)
    np.testing.assert_array_equal(symbols.numpy(), tans.decode_symbols(enc) + config.levels // 2)


@pytest.mark.parametrize("config", [tans.Config(levels=15), tans.Config(levels=31, table_log=15, states=5)])
def test_decoder_kernels_are_bit_exact_on_a_real_layer(model_dir, config, target):
    """The largest weight of the bundled transformer as the codec codes it: the decoder alone and the fused GEMV
    against the reference decoder. A table of 2^15 states holds the largest next-state bases its 16-bit entries
    allow, and 5 states of 15 bits fill the 57-bit windows 3 + 2."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(model_dir["transformer"]).graph
    w = max((numpy_helper.to_array(i) for i in graph.initializer if len(i.dims) == 2), key=np.size)
    enc = tans.encode(np.ascontiguousarray(w, np.float32), config)
    n, k = enc.shape
    symbols = tvm.runtime.tensor(np.full((n, k), 0x5A, np.uint8))
    build(tans_matmul.symbol_decoder(**tans_matmul.stream_layout(enc)), target)(*constants(enc)[:3], symbols)
    np.testing.assert_array_equal(symbols.numpy(), tans.decode_symbols(enc) + config.levels // 2)
    x = np.random.default_rng(k).standard_normal((1, k)).astype(np.float32)
    fused = run(tans_matmul.matmul(**tans_matmul.stream_layout(enc)), target, x, tans_matmul.constants(enc), (1, n))
    assert_close(fused, x @ tans.decode(enc).astype(np.float64).T)


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


def load_tables(config, target) -> str | None:
    """The look-up tables ``--tans-execution load`` gives a layer of ``config`` on ``target`` (``lut_tables`` auto),
    None where it runs the integer kernels."""
    if not lut.supported(target):
        return None
    return "int8" if lut.int8_supported(target) and tans.int8_tables_fit(config.levels) else "fp32"


@pytest.mark.parametrize("n,k,config", CASES)
def test_load_execution_matches_the_stream_kernel_and_the_reference(n, k, config, target):
    """At load: the reference decoder's codes exactly, as the ``bie-bitplane`` kernels take them (the look-up-table
    kernel's int8 tables' bytes up to 15 levels with AVX-512 VNNI, its two's complement planes with AVX-512, else
    4-bit codes up to 15 levels and 8-bit above; padding zero whatever the buffer held); then batch 1 (with int8
    tables: within their stated bound) and batch 8 (the panel GEMM) agree with the stream kernel and the reference
    decoder."""
    enc = encode(n, k, config, 3 * n + k)
    load, stream = (kernel_for(enc, target, tans_execution=e) for e in ("load", "stream"))
    assert load.at_load is not None and stream.at_load is None
    computed = computed_constants(load, target)
    codes, steps = tans.decode_symbols(enc), enc.arrays["steps"]
    tables = load_tables(config, target)
    if tables is not None:
        assert load.kind == "tans_lut" + ("_int8" if tables == "int8" else "")
        want = [bitplane_lut.words_of(codes, tans.lut_planes(config.levels), tables),
                bitplane_lut.lanes_of_scales(steps[:, None])]
    else:
        want = int8.Int8Weights.packed(codes, steps, tans_matmul.integer_bits(config.levels)).constants
    for got, expected in zip(computed, want):
        np.testing.assert_array_equal(got, expected)
    decoded = tans.decode(enc).astype(np.float64)
    rng = np.random.default_rng(n)
    x1 = rng.standard_normal((1, k)).astype(np.float32)
    from_load = run(load.func, target, x1, computed, (1, n))
    if tables == "int8":
        bound = bitplane_lut.int8_error_bound(x1, tans_matmul.lut_layout(enc), steps[:, None])
        assert (np.abs(from_load - x1 @ decoded.T) <= bound + 1e-5 * np.abs(x1 @ decoded.T).max()).all()
    else:
        assert_close(from_load, x1 @ decoded.T)
        assert_close(from_load, run(stream.func, target, x1, stream.constants, (1, n)))
    x8 = rng.standard_normal((8, k)).astype(np.float32)
    from_load = run(load.large_batch.func, target, x8, computed, (8, n))
    assert_close(from_load, x8 @ decoded.T)
    assert_close(from_load, run(stream.func, target, x8, stream.constants, (8, n)))


@pytest.mark.parametrize("n,k,config", [case for case in CASES if tans.int8_tables_fit(case[2].levels)])
def test_int8_table_bytes_at_load_are_the_reference_codes(n, k, config, target):
    """The at-load decoder of the int8-table GEMV (3 to 15 levels: 2, 3 and 4 planes with the sign; N not a multiple
    of 16, K not of 32), built here whatever this CPU has: ``bitplane_lut.int8_nibbles`` of the reference decoder's
    codes, byte for byte, the buffers holding garbage before."""
    enc = encode(n, k, config, 11 * n + k)
    want = [bitplane_lut.int8_nibbles(tans.decode_symbols(enc), tans.lut_planes(config.levels)),
            bitplane_lut.lanes_of_scales(enc.arrays["steps"][:, None])]
    out = [tvm.runtime.tensor(np.full(w.shape, 0x5A, w.dtype)) for w in want]
    build(tans_matmul.int8_lut_weights(**tans_matmul.stream_layout(enc)), target)(*constants(enc), *out)
    for got, expected in zip(out, want):
        np.testing.assert_array_equal(got.numpy(), expected)


def test_lut_tables_choose_the_load_gemv(target):
    """``lut_tables``: int8 up to 15 levels (auto and int8), fp32 when asked or above 15 levels, where the int8 tables
    have no room (the layer's fallback names it)."""
    if not lut.int8_supported(target):
        pytest.skip(f"{target} has no AVX-512 VNNI (the int8 tables' instructions)")
    kinds = {}
    for levels in (15, 17):
        enc = encode(20, 64, tans.Config(levels=levels), levels)
        kinds[levels] = [kernel_for(enc, target, lut_tables=asked).kind for asked in ("auto", "int8", "fp32")]
    assert kinds == {15: ["tans_lut_int8", "tans_lut_int8", "tans_lut"], 17: ["tans_lut"] * 3}
    from bie_compiler import codecs

    assert codecs.kernel_fallbacks(tans.Config(levels=15, lut_tables="int8")) == {}
    assert "up to 15 levels" in codecs.kernel_fallbacks(tans.Config(levels=17, lut_tables="int8"))["lut_tables"]
    assert "stream" in codecs.kernel_fallbacks(tans.Config(lut_tables="int8", tans_execution="stream"))["lut_tables"]


def test_kernel_refuses_a_malformed_encoding(target):
    from bie_compiler.errors import CodecError

    enc = encode(8, 64, tans.Config(levels=7), 0)
    counts = enc.arrays["counts"].copy()
    counts[0] += 1
    bad = tans.Encoded(enc.codec, enc.shape, dict(enc.arrays, counts=counts), enc.header)
    with pytest.raises(CodecError, match="checksum"):
        kernel_for(bad, target)


@pytest.mark.parametrize("n,k,config", CASES[1:3])
def test_decoder_kernel_in_a_conv_layout_is_bit_exact(n, k, config, target):
    """The OIHW layout of a conv (K runs over kh, kw, in-channel), which the decoder writes symbol by symbol."""
    kernel_shape = (n, k // 4, 2, 2) if k % 4 == 0 else (n, k, 1, 1)
    enc = encode(n, k, config, 7 * n + k)
    out = tvm.runtime.empty(kernel_shape, "float32")
    decoder = tans_matmul.decode_weights(**tans_matmul.stream_layout(enc), into=Layout.conv2d(kernel_shape), x_ndim=4)
    build(decoder, target)(tvm.runtime.tensor(np.zeros((1, kernel_shape[1], 4, 4), np.float32)), *constants(enc), out)
    _, i, kh, kw = kernel_shape
    want = tans.decode(enc).reshape(n, kh, kw, i).transpose(0, 3, 1, 2)  # K = (r * kw + s) * I + c
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("n,k,config", CASES)
def test_integer_codes_at_load_are_the_reference_codes(n, k, config, target):
    """The at-load decoder of CPUs without the look-up-table kernel (the int8 kernels' 4- or 8-bit codes), built here
    whatever this CPU has."""
    enc = encode(n, k, config, 5 * n + k)
    want = int8.Int8Weights.packed(tans.decode_symbols(enc), enc.arrays["steps"],
                                   tans_matmul.integer_bits(config.levels)).constants
    out = [tvm.runtime.tensor(np.full(w.shape, 0x5A, w.dtype)) for w in want]
    build(tans_matmul.integer_weights(**tans_matmul.stream_layout(enc)), target)(*constants(enc), *out)
    for got, expected in zip(out, want):
        np.testing.assert_array_equal(got.numpy(), expected)


def guarded_bytes(data: np.ndarray):
    """``data`` (bytes) copied to the end of a page followed by an unreadable page, within 64 bytes of it (TVM's
    alignment): a kernel reading past the end faults. Returns the mapping (keep it alive) and the tensor on it."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    span = -(-(data.nbytes + 64) // page) * page
    region = mmap.mmap(-1, span + page)
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert libc.mprotect(base + span, page, 0) == 0  # PROT_NONE
    start = (span - data.nbytes) // 64 * 64
    view = np.frombuffer(region, np.uint8, data.nbytes, start)
    view[:] = data
    return region, tvm.runtime.from_dlpack(view)


def test_forged_streams_stay_in_bounds(target):
    """Streams whose checksum was forged (what validation cannot catch) decode to garbage, but every kernel reads
    only the words: the last stream's words end next to an unreadable page, and its states, run on random bits,
    would read far past them without the kernels' end test."""
    enc = encode(40, 256, tans.Config(levels=15, stream_symbols=1024), 9)
    words = np.random.default_rng(0).integers(0, 2**32, enc.arrays["words"].size, dtype=np.uint32)
    offsets = enc.arrays["offsets"].copy()
    offsets[-2] = offsets[-1] - 16 * 11  # the last stream: its 16 states and no bits for its 1024 symbols
    forged = tans.Encoded(enc.codec, enc.shape, dict(enc.arrays, words=words, offsets=offsets), enc.header)
    lay = tans_matmul.stream_layout(forged)
    counts, offsets, _, steps = (tvm.runtime.tensor(c) for c in tans_matmul.constants(forged))
    mapping, guarded = guarded_bytes(words.view(np.uint8))
    levels = np.arange(15) - 7
    dense = tvm.runtime.empty((256, 40), "float32")
    decoder = tans_matmul.decode_weights(**lay, into=Layout.matmul(40, 256), x_ndim=2)
    build(decoder, target)(tvm.runtime.tensor(np.zeros((1, 256), np.float32)), counts, offsets, guarded, steps, dense)
    assert np.isin(np.rint(dense.numpy() / enc.arrays["steps"]), levels).all()
    y = tvm.runtime.empty((1, 40), "float32")
    build(tans_matmul.matmul(**lay), target)(tvm.runtime.tensor(np.ones((1, 256), np.float32)), counts, offsets,
                                            guarded, steps, y)
    assert np.isfinite(y.numpy()).all()
    del guarded
    mapping.close()

"""Each CPU kernel against the codec's reference decoder, on awkward shapes and batches."""

import re

import numpy as np
import pytest
import tvm

from bie_compiler.codecs import CODECS, kernel_options, make_config
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import int8, lut
from bie_compiler.codegen.target import make_target
from kernel_runs import assert_close, computed_constants, run

CASES = [
    ("bie-bitplane", {"bits": 2}),
    ("bie-bitplane", {"bits": 4}),
    ("bie-bitplane", {"bits": 8}),
    ("bie-bitplane", {"bits": 8, "group_size": 32}),
    ("bie-bitplane", {"bits": 5, "planes": 2}),
    ("bie-binary", {"layout": "bitmap"}),
    ("bie-binary", {"layout": "index", "density": 0.1}),
    ("bie-blocked", {"block_size": 128}),  # blocked_execution auto: load (the bitmap written at load)
    ("bie-blocked", {"block_size": 512, "density": 0.3}),
    ("bie-blocked", {"block_size": 128, "blocked_execution": "stream"}),  # the index kernels
    ("bie-blocked", {"block_size": 512, "density": 0.3, "blocked_execution": "stream"}),
    ("int8", {}),
    ("bitwave", {"pruned_columns": 4}),
]
SHAPES = [(1, 1), (37, 300), (64, 1024), (256, 96), (250, 97)]  # (N, K): K not a multiple of 128 included;
# 256 and 250 channels: one-row tiles of 4 panels (250: the last one ragged), K odd and even (4-bit codes: a byte
# holds two k, decoded in one loop step when K is even)


def run_kernel(call, target, x, n, constants=None):
    """``call``'s kernel on ``x``, over ``constants`` (default: its own; those written at load: computed_constants)."""
    return run(call.func, target, x, call.constants if constants is None else constants, (x.shape[0], n))


def exact_kernel(enc, config, target):
    """``kernel_for``'s kernel, with the exact fp32 look-up tables where the codec has ``lut_tables`` (its default,
    auto, takes int8 tables within a stated bound: tests/test_bitplane_lut.py, tests/test_bbs_kernels.py)."""
    options = kernel_options(config)  # the config's kernel fields, as the pass gives them
    return kernel_for(enc, target, **{**options, **({"lut_tables": "fp32"} if "lut_tables" in options else {})})


@pytest.mark.parametrize("codec,options", CASES, ids=[f"{c}-{o}" for c, o in CASES])
@pytest.mark.parametrize("n,k", SHAPES)
def test_kernel_matches_reference_decoder(codec, options, n, k, target):
    rng = np.random.default_rng(n * k)
    w = (rng.standard_t(4, (n, k)) * (rng.random((n, k)) > 0.5)).astype(np.float32)
    module, config = CODECS[codec], make_config(codec, options)
    enc = module.encode(w, config)
    call = exact_kernel(enc, config, target)
    # above one row: the panel GEMM, or a decode + matmul (decoders: tests/test_conv_kernels.py); none: the one
    # kernel for every batch (sparse index layouts)
    large = call.large_batch
    decoded = module.decode(enc).astype(np.float64)
    assert call.func.attrs["tirx.is_scheduled"]
    constants = computed_constants(call, target)
    for batch in (1, 5):  # exact for any row count; the pass runs the first for one
        x = rng.standard_normal((batch, k)).astype(np.float32)
        ref = x @ decoded.T
        assert_close(run_kernel(call, target, x, n, constants), ref)
        if large is not None and not large.decodes:
            assert_close(run_kernel(large, target, x, n, constants), ref)


# the bit-serial kernel, the integer one, grouped scales (rows of whole 16-byte vectors), the bitmap
PLANE_CASES = [("bie-bitplane", {"bits": 3}), ("bie-bitplane", {"bits": 4}),
               ("bie-bitplane", {"bits": 5, "group_size": 32}), ("bie-binary", {"layout": "bitmap"})]


@pytest.mark.parametrize("codec,options", PLANE_CASES, ids=[f"{c}-{o}" for c, o in PLANE_CASES])
@pytest.mark.parametrize("k", [1, 7, 8, 80, 127, 128, 129, 384])
def test_plane_kernels_at_any_k(codec, options, k, target):
    """Rows of KB = ceil(K / 8) bytes: one vector of KB < 16 bytes, whole 16-byte vectors, or a last vector
    overlapping the one before. The one-row kernel at one row and eight, and the kernel of several rows (the panel
    GEMM, or the decoder and the weight it writes, [K, N])."""
    n = 6
    rng = np.random.default_rng(k)
    config = make_config(codec, options)
    enc = CODECS[codec].encode(rng.standard_t(4, (n, k)).astype(np.float32), config)
    assert enc.arrays["signs"].shape == (n, -(-k // 8) if "group_size" not in options else -(-k // 128) * 16)
    call = exact_kernel(enc, config, target)
    decoded = CODECS[codec].decode(enc)
    for batch in (1, 8):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        ref = x @ decoded.T.astype(np.float64)
        assert np.abs(run_kernel(call, target, x, n) - ref).max() / max(np.abs(ref).max(), 1e-30) < 1e-5
    x = rng.standard_normal((8, k)).astype(np.float32)
    large = call.large_batch
    if large.decodes:
        np.testing.assert_allclose(run(large.func, target, x, large.constants, (k, n)), decoded.T, rtol=1e-6)
    else:
        assert_close(run_kernel(large, target, x, n), x @ decoded.T.astype(np.float64))


@pytest.mark.parametrize("options,constant,lanes", [
    ({"bits": 3}, "planes", 16),  # sign and 2 planes: the bit-plane kernel, 16 weights of a channel per vector
    ({"bits": 4}, "nibbles", 32),  # 4 bits: signed nibbles, 32 channels per vector, as many bytes as the planes
    ({"bits": 8}, "codes", 32),
])
def test_bitplane_kernel_form(target, options, constant, lanes):
    """Without AVX-512 (the look-up instruction): the forms below."""
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    config = make_config("bie-bitplane", options)
    enc = CODECS["bie-bitplane"].encode(w, config)
    call = exact_kernel(enc, config, target)
    if lut.supported(target):  # the look-up-table kernel at every width: its tables built as vectors of entries
        constant, lanes = "words", lut.WIDE
    script = call.func.script()
    assert "T.parallel" in script and f"T.vectorized({lanes})" in script and f"{constant}: T.Buffer" in script
    stored = sum(enc.arrays[a].nbytes for a in ("planes", "signs"))
    assert sum(c.nbytes for c in call.constants[:-1]) <= stored  # (the scales: the last constant in each form)


def test_int8_one_row_kernel_streams_its_codes(target):
    """The int8 GEMV: one parallel loop whose threads prefetch ahead in their share of the codes; exact at 8 rows,
    on a ragged last panel and a K that leaves a tail of k steps."""
    rng = np.random.default_rng(8)
    n, k = 70, 131
    enc = CODECS["int8"].encode(rng.standard_normal((n, k)).astype(np.float32), make_config("int8", {}))
    call = kernel_for(enc, target)
    script = call.func.script()
    assert script.count("T.parallel") == 1 and "llvm.prefetch" in script
    asm = tvm.compile(tvm.IRModule({"main": call.func.with_attr("global_symbol", "main")}), target).mod.inspect_source(
        "asm")
    assert "prefetcht1" in asm and "vcvtdq2ps" in asm and re.search(r"vfmadd\d{3}ps", asm)  # any operand order
    x = rng.standard_normal((8, k)).astype(np.float32)
    assert_close(run_kernel(call, target, x, n), x @ CODECS["int8"].decode(enc).astype(np.float64).T)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("make", ["packed", "by_channel"])
def test_int8_gemv_dispatches_on_the_layout(make, bits, target):
    """The one-row kernel is chosen by the integers' layout, not by the constants' names: 8-bit codes by channel are
    named like the panels of the streamed GEMV, and get the generic GEMV over their own layout, exact either way."""
    rng = np.random.default_rng(bits)
    n, k = 40, 70
    codes = rng.integers(-(1 << (bits - 1)) + 1, 1 << (bits - 1), (n, k)).astype(np.int8)
    scales = rng.random(n).astype(np.float32)
    weights = getattr(int8.Int8Weights, make)(codes, scales, bits)
    assert weights.layout == {("packed", 8): int8.BYTE_PANELS, ("packed", 4): int8.NIBBLE_PANELS,
                              ("by_channel", 8): int8.BYTE_ROWS, ("by_channel", 4): int8.NIBBLE_ROWS}[make, bits]
    func = int8.gemv(weights, n, k)
    assert ("llvm.prefetch" in func.script()) == (weights.layout == int8.BYTE_PANELS)  # the streamed GEMV
    x = rng.standard_normal((3, k)).astype(np.float32)
    assert_close(run(func, target, x, weights.constants, (3, n)), x @ (codes * scales[:, None]).astype(np.float64).T)


def test_index_kernels_are_parallel(target):
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    for codec, options in (("bie-binary", {"layout": "index"}), ("bie-blocked", {"blocked_execution": "stream"})):
        enc = CODECS[codec].encode(w, make_config(codec, options))
        assert "T.parallel" in kernel_for(enc, target).func.script()


@pytest.mark.parametrize("n,k", SHAPES)
def test_dense_kernel_of_a_layer_left_dense(n, k, target):
    from bie_compiler.codegen import dense_kernel

    rng = np.random.default_rng(n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    call = dense_kernel(w, target)
    assert call.large_batch.constants is call.constants  # one packed copy of the weight serves both kernels
    for kernel, batch in ((call, 1), (call.large_batch, 1), (call.large_batch, 5), (call.large_batch, 19)):
        assert "T.parallel" in kernel.func.script()
        x = rng.standard_normal((batch, k)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        assert_close(run_kernel(kernel, target, x, n), ref)
    with pytest.raises(NotImplementedError, match="cuda"):  # dlight's GPU rules schedule dense layers there
        dense_kernel(w, make_target("cuda"))


def test_weights_left_dense_get_the_dense_kernel(model_dir):
    """The pass routes every matmul weight it does not encode (skipped here) to the dense kernel, once per weight."""
    from bie_compiler.codegen import KERNEL_ATTR
    from bie_compiler.frontend import import_model
    from bie_compiler.passes import EncodingPolicy, encoding_passes, plan_encoding

    imported = import_model(model_dir["transformer"])
    plan = plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("bie-bitplane", skip=("*",)), make_target())
    mod = encoding_passes(plan)(imported.mod)
    kinds = [f.attrs[KERNEL_ATTR] for _, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and KERNEL_ATTR in f.attrs]
    assert sorted(kinds) == sorted(["dense_gemv", "dense_gemm"] * len(plan.records))
    assert all(r.codec == "dense" for r in plan.records)

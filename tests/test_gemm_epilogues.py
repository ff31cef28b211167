"""A GEMM (dense, or an encoded panel GEMM) and the elementwise kernel reading its output as one kernel above one row
(codegen/gemm_epilogues.py): the fused PrimFunc computes what the two kernels did, and a model's many-row copy calls
it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

import bie_compiler
from bie_compiler import codecs, parity
from bie_compiler.codecs import CODECS, make_config
from bie_compiler.codegen import cpu, gemm_epilogues, kernel_for
from bie_compiler.codegen.kernels import dense, sparse_index
from bie_compiler.codegen.schedules import matmul
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.unit_dims import ANY_DIMS, UNIT_DIMS

from check_results import assert_parity
from kernel_runs import computed_constants
from test_unit_epilogues import K, N, _block, _function, _kernel_calls

CODECS_WITH_PANELS = [("int8", {}), ("bbs", {"preset": "moderate"}), ("bie-bitplane", {"bits": 4})]


def _bias_gelu_residual(n: int = N, seq: int | None = None) -> tirx.PrimFunc:
    """``y [batch, seq, n] = gelu(h + b) + r`` (tanh form) in two blocks, h its first input; batch symbolic, seq too
    unless given (the bundled transformer's [batch, 16, n])."""
    batch = tirx.Var("batch", "int64")
    seq = tirx.Var("seq", "int64") if seq is None else tirx.IntImm("int64", seq)
    h, b, r = (te.placeholder(shape, name=name) for shape, name in (((batch, seq, n), "h"), ((n,), "b"),
                                                                       ((batch, seq, n), "r")))
    hb = te.compute(h.shape, lambda i, s, j: h[i, s, j] + b[j], name="hb")
    y = te.compute(h.shape, lambda i, s, j: 0.5 * hb[i, s, j] * (1.0 + te.tanh(
        0.7978845608 * (hb[i, s, j] + 0.044715 * hb[i, s, j] * hb[i, s, j] * hb[i, s, j]))) + r[i, s, j], name="y")
    return te.create_prim_func([h, b, r, y])


def _run(func: tirx.PrimFunc, *arrays) -> None:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target(),
                      tir_pipeline=cpu.TIR_PIPELINE)
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays[:-1]], arrays[-1])


@pytest.mark.parametrize("static_seq", [False, True], ids=["symbolic_seq", "static_seq"])
@pytest.mark.parametrize("batch, seq", [(1, 1), (1, 8), (8, 16), (3, 5)])
def test_fused_gemm_computes_the_gemm_then_the_epilogue(batch, seq, static_seq):
    """Over [batch, seq, N], seq symbolic or static: static, the tile's rows and columns are both static tasks and the
    symbolic batch loop runs inside them (the tile written back inside the batch loop: else the fusion failed and
    the GEMM and its epilogue ran as two kernels)."""
    rng = np.random.default_rng(batch * seq)
    weight = rng.standard_normal((N, K)).astype(np.float32)
    x, bias, residual = (rng.standard_normal(shape).astype(np.float32)
                         for shape in ((batch, seq, K), (N,), (batch, seq, N)))
    packed = dense.pack(weight)
    product = tvm.runtime.tensor(np.zeros((batch * seq, N), np.float32))
    _run(dense.gemm(N, K), x.reshape(-1, K), packed, product)
    want = tvm.runtime.tensor(np.zeros((batch, seq, N), np.float32))
    epilogue = _bias_gelu_residual(seq=seq if static_seq else None)
    _run(epilogue, product.numpy().reshape(batch, seq, N), bias, residual, want)

    fused = gemm_epilogues.fused_gemm(epilogue, 0, N, gemm_epilogues.dense_gemm(K))
    assert len(fused.params) == 5  # x, packed, bias, residual, out
    got = tvm.runtime.tensor(np.full((batch, seq, N), np.nan, np.float32))
    _run(fused, x, packed, bias, residual, got)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    h = x @ weight.T + bias
    reference = 0.5 * h * (1 + np.tanh(0.7978845608 * (h + 0.044715 * h ** 3))) + residual
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def _partitioned_parallel_loops(func: tirx.PrimFunc) -> list[bool]:
    """For each parallel loop of ``func``: whether it carries the loop-partition hint (its tail tile peeled)."""
    found = []

    def visit(loop):
        if loop.kind == tirx.ForKind.PARALLEL:
            found.append("pragma_loop_partition_hint" in loop.annotations)
        return loop

    tvm_ffi.structural_map(func.body, (tirx.For, visit), order="post")
    return found


@pytest.mark.parametrize("rows", [1, 8, 19])
def test_fused_dense_gemm_with_a_classifier_epilogue(rows):
    """A classifier: 1000 channels (not whole panels), the epilogue over [batch, 1000] in int64 as Relax gives it.
    Its tiles run unpredicated (predicated, every tile ran in scalars): computed over the zero-padded last panel
    (a 2-D product) or, where that does not apply, with the tail panel peeled."""
    n, k = 1000, 64
    batch = tirx.Var("batch", "int64")
    h, b = te.placeholder((batch, tirx.IntImm("int64", n)), name="h"), te.placeholder((tirx.IntImm("int64", n),), name="b")
    epilogue = te.create_prim_func([h, b, te.compute(h.shape, lambda i, j: h[i, j] + b[j], name="y")])
    rng = np.random.default_rng(rows)
    weight, x, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((n, k), (rows, k), (n,)))
    packed = dense.pack(weight)
    fused = gemm_epilogues.fused_gemm(epilogue, 0, n, gemm_epilogues.dense_gemm(k))
    blocks = []
    tvm_ffi.structural_map(fused.body, [(s_tir.SBlockRealize, lambda r: blocks.append(r.block.name_hint) or r)],
                           order="post")
    assert matmul.SLICE in blocks or _partitioned_parallel_loops(fused) == [True]
    got = tvm.runtime.tensor(np.full((rows, n), np.nan, np.float32))
    _run(fused, x, packed, bias, got)
    np.testing.assert_allclose(got.numpy(), x.astype(np.float64) @ weight.T + bias, rtol=1e-4, atol=1e-4)


def _row_sum_added(h: te.Tensor) -> te.Tensor:
    j = te.reduce_axis((0, N), "j")
    total = te.compute(h.shape[:-1], lambda i, s: te.sum(h[i, s, j], axis=j), name="total")
    return te.compute(h.shape, lambda i, s, c: total[i, s] + h[i, s, c], name="y")


def _panel_kernels(codec: str, options: dict, target, n: int = N, k: int = K, **kernel_options):
    rng = np.random.default_rng(n + k)
    w = (rng.standard_t(4, (n, k)) * (rng.random((n, k)) > 0.2)).astype(np.float32)
    config = make_config(codec, options)
    enc = CODECS[codec].encode(w, config)
    options = {**codecs.kernel_options(config), **kernel_options}  # the config's kernel fields, as the pass gives them
    return kernel_for(enc, target, **options), CODECS[codec].decode(enc).astype(np.float64)


def _gemms(target):
    """The dense GEMM's and each codec's panel GEMM's :class:`gemm_epilogues.Gemm`."""
    yield gemm_epilogues.dense_gemm(K)
    for codec, options in CODECS_WITH_PANELS:
        kernels, _ = _panel_kernels(codec, options, target)
        yield gemm_epilogues.gemm_of(kernels.large_batch.func, K)


def test_an_epilogue_that_reduces_or_splits_the_channels_is_not_fused(target):
    h = te.placeholder((tirx.Var("batch", "int64"), tirx.Var("seq", "int64"), N), name="h")
    heads = te.placeholder((h.shape[0], h.shape[1], 2, N // 2), name="heads")  # the product as [.., 2, N / 2]
    doubled = te.compute(heads.shape, lambda *i: heads[i] * 2.0, name="doubled")
    for gemm in _gemms(target):
        assert gemm_epilogues.fused_gemm(te.create_prim_func([h, _row_sum_added(h)]), 0, N, gemm) is None
        assert gemm_epilogues.fused_gemm(te.create_prim_func([heads, doubled]), 0, N, gemm) is None
        assert gemm_epilogues.fused_gemm(_bias_gelu_residual(), 0, N, gemm) is not None  # these shapes fuse


def test_only_gemm_kernels_are_rebuilt(target):
    kernels, _ = _panel_kernels("int8", {}, target)
    assert gemm_epilogues.gemm_of(kernels.func, K) is None  # the one-row GEMV: never fused here
    assert gemm_epilogues.gemm_of(_bias_gelu_residual(), K) is None


# the int8 tables' layout: the panel GEMM's decode reads the bytes as words (a view declared in the fused kernel too)
FUSED_PANELS = [(c, o, "fp32") for c, o in CODECS_WITH_PANELS] + [(c, o, "int8") for c, o in CODECS_WITH_PANELS[1:]]
FUSED_PANELS += [("bie-blocked", {"block_size": 64, "blocked_execution": "stream"}, "fp32"),  # a panel decoded in
                 # the codec's own statements
                 ("bie-binary", {"layout": "index"}, "fp32")]


@pytest.mark.parametrize("codec,options,tables", FUSED_PANELS, ids=[f"{c}-{t}" for c, _, t in FUSED_PANELS])
def test_fused_panel_gemm_computes_the_panel_gemm_then_the_epilogue(codec, options, tables, target, monkeypatch):
    """The fused kernel against the unfused panel GEMM and the epilogue run after it, and the float64 reference;
    ``bbs`` computes in stored order and merges the channels into place in the kernel (no gather kernel). N = 250: a
    ragged last panel; K odd; rows in ragged tiles."""
    monkeypatch.setattr(sparse_index, "sparse_rows", lambda *_: False)  # the index layouts' panels at K = 129
    n, k = 250, 129
    tables_option = {} if tables == "fp32" else {"lut_tables": tables}  # the int8 codec takes no tables
    kernels, decoded = _panel_kernels(codec, options, target, n, k, **tables_option)
    constants = computed_constants(kernels, target)
    gemm = gemm_epilogues.gemm_of(kernels.large_batch.func, k)
    epilogue = _bias_gelu_residual(n)
    fused = gemm_epilogues.fused_gemm(epilogue, 0, n, gemm)
    assert "unshuffle" not in fused.script() and "T.parallel" in fused.script()
    rng = np.random.default_rng(n)
    for batch, seq in [(1, 128), (8, 16), (3, 5)]:
        x, bias, residual = (rng.standard_normal(shape).astype(np.float32)
                             for shape in ((batch, seq, k), (n,), (batch, seq, n)))
        product = tvm.runtime.tensor(np.zeros((batch * seq, n), np.float32))
        _run(kernels.large_batch.func, x.reshape(-1, k), *constants, product)
        want = tvm.runtime.tensor(np.zeros((batch, seq, n), np.float32))
        _run(epilogue, product.numpy().reshape(batch, seq, n), bias, residual, want)
        got = tvm.runtime.tensor(np.full((batch, seq, n), np.nan, np.float32))
        _run(fused, x, *constants, bias, residual, got)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5 * np.abs(want.numpy()).max())
        h = x @ decoded.T + bias
        reference = 0.5 * h * (1 + np.tanh(0.7978845608 * (h + 0.044715 * h ** 3))) + residual
        np.testing.assert_allclose(got.numpy(), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


VARIANTS = {"dense": ("dense", {"skip": ("*",)}), "bbs": ("bbs", {"codec": "bbs", "options": {"preset": "moderate"}}),
            "int8": ("int8", {"codec": "int8"}), "bie-bitplane": ("bitplane", {"codec": "bie-bitplane",
                                                                                 "options": {"bits": 4}})}


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemm_epilogues")
    path = folder / "m.onnx"
    onnx.save(_block("batch", "seq"), path)
    return path, {}, folder


def _artefact(block, variant: str):
    path, artefacts, folder = block
    if variant not in artefacts:
        artefacts[variant] = bie_compiler.compile_model(path, folder / variant, **VARIANTS[variant][1], progress=None)
    return artefacts[variant]


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_many_row_copy_calls_each_gemm_with_its_epilogue(block, variant):
    artefact = _artefact(block, variant)
    general = [call for call in _kernel_calls(_function(artefact, ANY_DIMS)) if not call.startswith("shape_func")]
    kind = VARIANTS[variant][0]
    assert len(general) == 2 and all(f"_{kind}_gemm_fused_" in call for call in general), general
    assert len(_kernel_calls(_function(artefact, UNIT_DIMS))) == 2  # one token: the one-row kernels, fused alike


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", [(8, 16, K), (2, 3, K), (1, 1, K)])
def test_fused_model_matches_onnxruntime(block, variant, shape):
    """Dense against onnxruntime; the codecs against the model of their decoded weights (``check``'s parity: at one
    row ``bbs`` and ``bie-bitplane`` 4 have int8 look-up tables by default, each GEMV held to its stated bound)."""
    runner = bie_compiler.load(_artefact(block, variant))
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    if variant != "dense":
        assert_parity(parity.check_artefact(runner, block[0], {"x": x}), 1e-5)
        return
    want = ort.InferenceSession(str(block[0]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(runner({"x": x})["y"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

"""The matmul rule: attention's batched matmuls and dense layers, symbolic dims, epilogues."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import s_tir, te, topi

from bie_compiler.codegen import cpu
from bie_compiler.codegen.kernels import dense
from bie_compiler.codegen.schedules import matmul
from bie_compiler.codegen.target import make_target

SIZES = [{"b": 1, "s": 128}, {"b": 8, "s": 37}, {"b": 1, "s": 1}, {"b": 2, "s": 5}]


def i64(*dims):
    return [tvm.tirx.const(d, "int64") if isinstance(d, int) else d for d in dims]


def batched(a_shape, b_shape, epilogue=None):
    """``A @ B`` over the last two axes (the layout, int64 indices, Relax legalizes matmul to), then ``epilogue``."""
    a_shape, b_shape = i64(*a_shape), i64(*b_shape)
    a = te.placeholder(a_shape, "float32", "a")
    b = te.placeholder(b_shape, "float32", "b")
    k = te.reduce_axis(i64(0, a_shape[-1]), "k")
    out = te.compute((*a_shape[:-1], b_shape[-1]),
                     lambda *i: te.sum(a[(*i[:-1], k)] * b[(*i[:-2], k, i[-1])], axis=k), name="matmul")
    if epilogue is not None:
        out = epilogue(out)
    return te.create_prim_func([a, b, out])


def test_attention_scores_with_their_scale(check_rule):
    bb, s = te.var("b", "int64"), te.var("s", "int64")
    func = batched((bb, 12, s, 32), (bb, 12, 32, s), lambda x: topi.multiply(x, 0.17677669))
    script = check_rule(matmul.Matmul(), func, SIZES).script()
    assert "T.vectorized(T.int64(16))" in script and "T.parallel" in script  # a symbolic n: one-vector tiles
    # The tiles' only buffer is the register tile, indexed by (tile, position in tile): the scale is applied as it is
    # written back. Narrower than one vector (s 1 and 5 above), the plain loops run instead, with their product.
    assert script.count('scope="local"') == 1 and "T.int64(8), T.int64(16)), scope=\"local\"" in script
    assert "if s < T.int64(16):" in script and script.count("alloc_buffer") == 2


def test_attention_scores_of_a_static_sequence_narrower_than_a_tile(check_rule):
    """16 tokens (the bundled transformer's), batch symbolic: the scores' 16 columns are one vector and each tile is
    one vector wide, so no tile is a predicated tail (which TVM computes in scalars: 2.6x the time)."""
    bb = te.var("b", "int64")
    func = batched((bb, 4, 16, 32), (bb, 4, 32, 16), lambda x: topi.multiply(x, 0.17677669))
    script = check_rule(matmul.Matmul(), func, [{"b": 1}, {"b": 8}, {"b": 3}]).script()
    assert "T.vectorized(T.int64(16))" in script and "T.vectorized(T.int64(32))" not in script
    assert "T.parallel" in script and "T.where" not in script  # no block guarded by a predicate


def test_attention_values(check_rule):
    bb, s = te.var("b", "int64"), te.var("s", "int64")
    check_rule(matmul.Matmul(), batched((bb, 12, s, s), (bb, 12, s, 32)), SIZES)


def test_matmul_with_a_bias_chain_and_columns_not_a_multiple_of_the_tile(check_rule):
    m = te.var("s", "int64")
    bias = te.placeholder((80,), "float32", "bias")
    x = te.placeholder((m, 96), "float32", "x")
    w = te.placeholder((96, 80), "float32", "w")
    k = te.reduce_axis((0, 96), "k")
    out = te.compute((m, 80), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    func = te.create_prim_func([x, w, bias, topi.multiply(topi.add(out, bias), 0.5)])  # an epilogue chain
    script = check_rule(matmul.Matmul(), func, [{"s": 1}, {"s": 8}, {"s": 29}]).script()
    assert script.count("alloc_buffer") == 1  # both epilogues applied to the register tile


def test_packed_dense_gemm():
    """dense.gemm's packed weight layout is a matmul the micro-kernel takes; checked against numpy for 1 to 37 rows."""
    target = make_target()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 48)).astype("float32")
    for rows in (1, matmul.ROWS):
        lib = tvm.compile(tvm.IRModule({"main": dense.gemm(70, 48, rows=rows).with_attr("global_symbol", "main")}), target)
        for m in (1, 9, 37):
            x = rng.standard_normal((m, 48)).astype("float32")
            out = tvm.runtime.empty((m, 70), "float32")
            lib.mod["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(w)), out)
            np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-5, atol=1e-5)


def test_int64_matmul_of_a_ragged_width_and_symbolic_rows(check_rule):
    """As Relax legalizes a classifier (1000 classes) over a batch of rows: int64 indices, n not a multiple of the tile."""
    check_rule(matmul.Matmul(), batched((te.var("s", "int64"), 96), (96, 1000)), [{"s": 1}, {"s": 9}])


def _local_buffers(func) -> list:
    found = []
    tvm_ffi.structural_map(func.body, [(s_tir.SBlock, lambda b: found.extend(
        buf for buf in b.alloc_buffers if buf.scope() == "local") or b)], order="post")
    return found


@pytest.mark.parametrize("lead", [["m"], ["batch", 16]], ids=["rows", "batch_x_16"])
def test_dense_gemm_over_int64_rows_accumulates_one_tile(lead):
    """Rows symbolic in int64 (as Relax gives them): the static dims follow them into int64, so the accumulator is
    indexed by tile (a slab of ROWS x COLS that compaction makes registers); with int32 columns it stayed a whole
    [rows, N] buffer allocated on every call. 96 columns, 40 inputs; against numpy."""
    n, k = 96, 40
    shape = [tvm.tirx.Var(d, "int64") if isinstance(d, str) else d for d in lead] + [n]
    sch = s_tir.Schedule(dense.plain(shape, k))
    matmul.schedule_matmul(sch, sch.get_sblock(dense.BLOCK), batch_inside=len(lead) > 1)
    func = sch.mod["main"]
    (accumulator,) = _local_buffers(func)
    assert [int(d) for d in accumulator.shape[-2:]] == [matmul.ROWS, matmul.COLS], accumulator.shape
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target(),
                      tir_pipeline=cpu.TIR_PIPELINE)
    rng = np.random.default_rng(len(lead))
    w = rng.standard_normal((n, k)).astype("float32")
    for rows in (1, 8, 9):
        x = rng.standard_normal((rows, *[d for d in lead[1:]], k)).astype("float32")
        out = tvm.runtime.tensor(np.full((*x.shape[:-1], n), np.nan, np.float32))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(w)), out)
        np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-5, atol=1e-5)


def test_full_tiles_of_a_ragged_width_are_vectorized():
    """70 columns: two full 32-wide tiles and a predicated tail; the full tiles compute whole vectors (the tail is
    peeled off), where a predicate over every tile would leave the whole GEMV in scalars."""
    lib = tvm.compile(tvm.IRModule({"main": dense.gemm(70, 48, rows=1).with_attr("global_symbol", "main")}), make_target())
    assert f"<{matmul.COLS} x float>" in lib.mod.inspect_source("ll")


@pytest.mark.parametrize("n", [10, 48, 70])
def test_columns_past_the_last_are_computed_in_the_padded_tile(n):
    """A width that is not whole tiles (the classifier's 10 columns; 48 and 70: full tiles and a ragged one) is
    computed over whole tiles of the zero-padded packed weight, unpredicated in vectors, and only the tile's write-back
    drops the padding columns: no update block is predicated on its columns (TVM computes a predicated tile in
    scalars). Built with the models' TIR pipeline (parallel loops kept serial and parallel); against numpy for a
    partial row tile, one tile and more."""
    k = 48
    for rows in (1, matmul.ROWS):
        func = dense.gemm(n, k, rows=rows)
        blocks = []
        tvm_ffi.structural_map(func.body, [(s_tir.SBlockRealize, lambda r: blocks.append(r) or r)], order="post")
        update = next(r for r in blocks if r.block.name_hint == f"{dense.BLOCK}_update")
        assert "c_" not in str(update.predicate), update.predicate  # the rows' bound only
        assert any(r.block.name_hint == matmul.SLICE for r in blocks)
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target(),
                          tir_pipeline=cpu.TIR_PIPELINE)
        rng = np.random.default_rng(n + rows)
        w = rng.standard_normal((n, k)).astype("float32")
        for m in (1, 8, 9):
            x = rng.standard_normal((m, k)).astype("float32")
            out = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32))
            lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(w)), out)
            np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-5, atol=1e-5)


def test_declines_what_is_not_a_matmul():
    x = te.placeholder((te.var("s", "int64"), 64), "float32", "x")
    assert matmul.Matmul().apply(te.create_prim_func([x, topi.sum(x, axis=1)]), make_target(), False) is None


def test_one_row_tiles_span_several_panels():
    """A one-row tile of 256 channels is 4 panels of 32 (8 independent FMA chains per k, one per vector), each panel
    its own contiguous vector loop over the packed weight; correct for 1 and several rows."""
    assert matmul.gemv_panels(256) == 4 and matmul.gemv_panels(384) == 2 and matmul.gemv_panels(70) == 1
    func = dense.gemm(256, 40, rows=1)
    script = func.script()
    assert "T.unroll(T.int64(4))" in script and f"T.vectorized(T.int64({matmul.COLS}))" in script  # int64: the rows'
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target())
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 40)).astype("float32")
    for m in (1, 3):
        x = rng.standard_normal((m, 40)).astype("float32")
        out = tvm.runtime.empty((m, 256), "float32")
        lib.mod["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(w)), out)
        np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-5, atol=1e-5)


def test_k_unrolled_by_a_divisor_of_k():
    """A static K runs K_UNROLL (or the largest of 4, 2 dividing K) k steps per loop iteration; results unchanged."""
    assert [matmul.k_unroll(tvm.tirx.IntImm("int64", k)) for k in (48, 36, 42, 37)] == [matmul.K_UNROLL, 4, 2, 1]
    assert matmul.k_unroll(tvm.tirx.Var("k", "int64")) == 1
    rng = np.random.default_rng(2)
    for k in (36, 37):
        func = dense.gemm(40, k)
        assert (f"T.unroll(T.int64({matmul.k_unroll(tvm.tirx.IntImm('int64', k))}))" in func.script()) == (k == 36)
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target())
        w = rng.standard_normal((40, k)).astype("float32")
        x = rng.standard_normal((11, k)).astype("float32")
        out = tvm.runtime.empty((11, 40), "float32")
        lib.mod["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(w)), out)
        np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-5, atol=1e-5)

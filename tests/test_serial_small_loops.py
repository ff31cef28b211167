"""Parallel loops over little work made serial (statically, or by a run-time test on a symbolic size)."""

import numpy as np
import pytest
import tvm
import tvm.sym
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.script import tirx as T
from tvm.tirx import stmt as s

from bie_compiler.codegen import cpu
from bie_compiler.codegen.kernel_registry import AT_LOAD_ATTR, finish
from bie_compiler.codegen.kernels import dense
from bie_compiler.codegen.serial_small_loops import (CACHED_WEIGHT_BYTES, HANDOFF_WORD, SERIAL_WORK, STREAMED_ATTR,
                                                    STREAMED_SERIAL_WORK, STREAMED_WORD, cost, footprint, handoff,
                                                    mark_streamed_weights, memory_views, serial_when_small,
                                                    work)
from bie_compiler.codegen.target import make_target


def scaled_rows(rows) -> tirx.PrimFunc:
    """``y[i, j] = 2 x[i, j]`` over [rows, 256], rows in parallel, 16-lane vectors along j."""
    x = te.placeholder((rows, 256), "float32", "x")
    y = te.compute(x.shape, lambda i, j: x[i, j] * 2.0, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    i, j = sch.get_loops(sch.get_sblock("y"))
    _, lanes = sch.split(j, [None, 16])
    sch.parallel(i)
    sch.vectorize(lanes)
    return sch.mod["main"].with_attr("global_symbol", "main")


def lowered(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` through TVM's TIR lowering (what :func:`serial_when_small` sees in the build)."""
    target = make_target()
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(tvm.IRModule({"main": func}))
    return tvm.tirx.get_tir_pipeline("s_tir")[0](mod)["main"]


def loops(func: tirx.PrimFunc, kind) -> list:
    found = []
    tvm_ffi.structural_map(func.body, [(s.For, lambda f: found.append(f) or f if f.kind == kind else f)], order="post")
    return found


def test_work_counts_vector_operations_and_words_touched():
    (loop,) = loops(lowered(scaled_rows(8)), s.ForKind.PARALLEL)
    assert int(work(loop)) == 8 * 256 // 16 * 3  # per 16-lane vector: a load, a multiply, a store
    cached, streamed = footprint(loop)
    assert int(tvm.sym.Analyzer().simplify(cached)) == 2 * 8 * 256 and int(streamed) == 0  # x and y, float32


@T.prim_func
def _guarded_tail(x_handle: T.handle, y_handle: T.handle):
    """A tail of 16 lanes over rows of ``n``, as a scalar tail does: stored under a guard, and selected."""
    T.func_attr({"global_symbol": "main"})
    n = T.int64()
    x = T.match_buffer(x_handle, (4, n), "float32")
    y = T.match_buffer(y_handle, (4, n), "float32")
    for r in T.parallel(T.int64(4)):
        for j in range(T.int64(16)):
            if j < n:
                y[r, j] = x[r, j] * T.float32(2)
        for j in range(T.int64(16)):
            y[r, j] = T.if_then_else(j < n, x[r, j] * T.float32(2) + T.float32(1), T.float32(0))


@pytest.mark.parametrize("n", [0, 1, 5, 16, 40])
def test_work_of_a_guarded_tail_counts_the_iterations_it_lets_through(n):
    (loop,) = loops(lowered(_guarded_tail), s.ForKind.PARALLEL)
    through = min(n, 16)
    # guarded store: a load, a multiply, the store, for the lanes let through; selected value: the store, the select
    # and its comparison for every lane, the load, multiply and add for those let through (16 of each before)
    want = 4 * (3 * through + 16 * 3 + 3 * through)
    counted = work(loop)
    (size,) = [v for v in tirx.analysis.undefined_vars(counted) if v.name == "n"]
    at_n = tvm_ffi.structural_map(counted, (tirx.Var, lambda v: tirx.const(n, v.ty) if v.same_as(size) else v),
                                  order="post")
    assert int(tvm.sym.Analyzer().simplify(at_n)) == want


@pytest.mark.parametrize("rows,parallel", [(8, False), (4 * SERIAL_WORK // 256, True)])
def test_static_work_decides_once(rows, parallel):
    func = serial_when_small(lowered(scaled_rows(rows)))
    assert bool(loops(func, s.ForKind.PARALLEL)) == parallel
    assert not _conditions(func)  # decided at compile time


def test_symbolic_work_is_tested_at_run_time_and_both_forms_compute_the_same():
    func = serial_when_small(lowered(scaled_rows(te.var("rows", "int64"))))
    (choice,) = _conditions(func)
    assert choice.then_case.kind == s.ForKind.SERIAL and choice.else_case.kind == s.ForKind.PARALLEL
    lib = tvm.compile(tvm.IRModule({"main": scaled_rows(te.var("rows", "int64"))}), make_target(),
                      tir_pipeline=cpu.TIR_PIPELINE)
    for rows in (1, 4 * SERIAL_WORK // 256):  # the serial form, then the parallel one
        x = np.random.default_rng(rows).standard_normal((rows, 256)).astype("float32")
        y = tvm.runtime.tensor(np.full_like(x, np.nan))
        lib["main"](tvm.runtime.tensor(x), y)
        np.testing.assert_array_equal(y.numpy(), 2 * x)


def _conditions(func: tirx.PrimFunc) -> list:
    """The run-time choices between a serial and a parallel form of a loop."""
    found = []

    def collect(node):
        if isinstance(node.then_case, s.For) and isinstance(node.else_case, s.For):
            found.append(node)
        return node

    tvm_ffi.structural_map(func.body, [(s.IfThenElse, collect)], order="post")
    return found


# A 384x384 GEMV (the encoder's attention projections): above STREAMED_SERIAL_WORK when its weight is streamed.
GEMV_N = GEMV_K = 384


def _gemv_module(n: int = GEMV_N, k: int = GEMV_K) -> tvm.IRModule:
    return tvm.IRModule({"main": finish(dense.gemm(n, k, rows=1), "dense_gemv").with_attr("global_symbol", "main")})


@pytest.mark.parametrize("weight_bytes,streamed", [(CACHED_WEIGHT_BYTES, False), (CACHED_WEIGHT_BYTES + 1, True)])
def test_kernel_weights_are_streamed_when_the_model_outgrows_the_cache(weight_bytes, streamed):
    func = mark_streamed_weights(_gemv_module(), weight_bytes)["main"]
    assert (STREAMED_ATTR in func.attrs) == streamed
    if streamed:  # f(x, packed, out): the constants between the activation and the output
        assert [str(name) for name in func.attrs[STREAMED_ATTR]] == ["packed"]


def test_functions_run_at_load_and_other_kernels_are_not_marked():
    mod = _gemv_module()
    mod["at_load"] = mod["main"].with_attrs({AT_LOAD_ATTR: True, "global_symbol": "at_load"})
    mod["plain"] = scaled_rows(8).with_attr("global_symbol", "plain")
    marked = mark_streamed_weights(mod, 10 * CACHED_WEIGHT_BYTES)
    assert STREAMED_ATTR in marked["main"].attrs
    assert STREAMED_ATTR not in marked["at_load"].attrs and STREAMED_ATTR not in marked["plain"].attrs


def test_streamed_words_cost_more_and_split_the_gemv_over_threads():
    plain = lowered(_gemv_module()["main"])
    marked = lowered(mark_streamed_weights(_gemv_module(), 10 * CACHED_WEIGHT_BYTES)["main"])
    (loop,) = loops(marked, s.ForKind.PARALLEL)
    simplify = tvm.sym.Analyzer().simplify
    weight_words = GEMV_N * GEMV_K
    cached, streamed = footprint(loop, frozenset({"packed"}))
    assert int(simplify(streamed)) == weight_words
    all_cached = int(simplify(_at_one_row(sum(footprint(loop)), marked)))  # the weight as cached words
    assert int(simplify(_at_one_row(cached, marked))) == all_cached - weight_words
    assert int(simplify(_at_one_row(work(loop), marked))) + all_cached >= SERIAL_WORK  # as cached words: split
    streamed_cost = int(simplify(_at_one_row(cost(loop, frozenset({"packed"})), marked)))
    assert streamed_cost == STREAMED_WORD * weight_words + int(simplify(_at_one_row(cached, marked)))
    assert streamed_cost >= STREAMED_SERIAL_WORK  # streamed: split as well, held to the streams' bound
    assert _one_row_form(serial_when_small(plain)) == s.ForKind.PARALLEL
    assert _one_row_form(serial_when_small(marked)) == s.ForKind.PARALLEL


def test_a_gemv_streaming_less_than_its_bound_stays_on_one_thread():
    """A 256x256 GEMV: split as cached words (above SERIAL_WORK), not when its weight is streamed (below
    STREAMED_SERIAL_WORK: a second thread's bandwidth does not pay the hand-offs of so short a stream)."""
    plain = lowered(_gemv_module(256, 256)["main"])
    marked = lowered(mark_streamed_weights(_gemv_module(256, 256), 10 * CACHED_WEIGHT_BYTES)["main"])
    (loop,) = loops(marked, s.ForKind.PARALLEL)
    simplify = tvm.sym.Analyzer().simplify
    assert SERIAL_WORK <= int(simplify(_at_one_row(cost(loop, frozenset({"packed"})), marked))) < STREAMED_SERIAL_WORK
    assert _one_row_form(serial_when_small(plain)) == s.ForKind.PARALLEL
    assert _one_row_form(serial_when_small(marked)) == s.ForKind.SERIAL


def test_gemv_with_streamed_weights_computes_x_times_w():
    mod = mark_streamed_weights(_gemv_module(), 10 * CACHED_WEIGHT_BYTES)
    lib = tvm.compile(mod, make_target(), tir_pipeline=cpu.TIR_PIPELINE)
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((GEMV_N, GEMV_K)).astype("float32")
    for rows in (1, 8):
        x = rng.standard_normal((rows, GEMV_K)).astype("float32")
        out = tvm.runtime.tensor(np.full((rows, GEMV_N), np.nan, "float32"))
        lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(weight)), out)
        want = x.astype(np.float64) @ weight.T.astype(np.float64)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _one_row_form(func: tirx.PrimFunc):
    """The kind of the GEMV's tile loop at one row (m = 1): chosen at run time, or fixed."""
    (choice,) = _conditions(func) or [None]
    if choice is None:
        (loop,) = loops(func, s.ForKind.PARALLEL) or loops(func, s.ForKind.SERIAL)[:1]
        return loop.kind
    taken = tvm.sym.Analyzer().simplify(_at_one_row(choice.condition, func))
    return (choice.then_case if int(taken) else choice.else_case).kind


def _at_one_row(expr, func: tirx.PrimFunc):
    """``expr`` with the variables ``func`` binds replaced by their values and the row count ``m`` 1."""
    values = {}

    def collect(bind):
        values[bind.var] = bind.value
        return bind

    tvm_ffi.structural_map(func.body, (s.Bind, collect), order="post")

    def replace(var):
        return tirx.const(1, var.ty) if var.name == "m" else values.get(var, var)

    while not (new := tvm_ffi.structural_map(expr, (tirx.Var, replace), order="post")).same_as(expr):
        expr = new
    return expr


@T.prim_func
def _summed_twice(w: T.Buffer((64, 16), "float32"), out: T.Buffer((64,), "float32")):
    """Each row of ``w`` summed, then summed again through a flat view of the same memory (as the one-row GEMVs
    declare their weights again as the stream a thread reads)."""
    T.func_attr({"global_symbol": "main"})
    flat = T.decl_buffer((1024,), "float32", data=w.data)
    for i in T.parallel(64):
        out[i] = T.float32(0)
        for j in range(16):
            out[i] = out[i] + w[i, j] + flat[i * 16 + j]


def test_views_of_one_memory_count_once_and_stream_as_the_weight():
    func = lowered(_summed_twice)
    (loop,) = loops(func, s.ForKind.PARALLEL)
    views = memory_views(func.body)
    simplify = tvm.sym.Analyzer().simplify
    assert [int(simplify(words)) for words in footprint(loop, views=views)] == [64 * 16 + 64, 0]
    assert [int(simplify(words)) for words in footprint(loop)] == [2 * 64 * 16 + 64, 0]  # seen as two buffers
    assert [int(simplify(words)) for words in footprint(loop, frozenset({"w"}), views)] == [64, 64 * 16]


def test_cost_is_the_larger_of_operations_and_streamed_words():
    func = lowered(_summed_twice)
    (loop,) = loops(func, s.ForKind.PARALLEL)
    views = memory_views(func.body)
    simplify = tvm.sym.Analyzer().simplify
    operations = int(simplify(work(loop)))
    assert int(simplify(cost(loop, frozenset(), views))) == operations + 64 * 16 + 64  # w and out cached
    assert int(simplify(cost(loop, frozenset({"w"}), views))) == max(operations, STREAMED_WORD * 64 * 16) + 64
    assert operations < STREAMED_WORD * 64 * 16  # the streamed words decide here


def test_one_row_bbs_gemv_of_a_streamed_ffn_weight_runs_on_one_thread():
    """The encoder's FFN one-row bbs GEMV (384x1536, 377 KB streamed): its look-ups overlap the prefetched stream, so
    it costs its streamed words, above SERIAL_WORK; but every task reads the activation tables the calling thread
    fills, and the results come back through the kernel's scratch, so its hand-off keeps it on one thread (on two it
    took 1.3x as long)."""
    from bie_compiler.codecs import bbs
    from bie_compiler.codegen.kernels import bbs_decoded, bbs_lut

    weight = np.random.default_rng(5).standard_normal((1536, 384)).astype("float32")
    enc = bbs.encode(weight, bbs.Config("moderate", sensitive_channels=320))
    target = make_target()
    with target:
        func = bbs_lut.gemv(enc).with_attrs({"global_symbol": "main", STREAMED_ATTR: [
            "scales", "position", "sensitive", "columns", "meta"]})  # every constant (bbs_decoded.constants)
    marked = lowered(func)
    (loop,) = loops(marked, s.ForKind.PARALLEL)
    simplify = tvm.sym.Analyzer().simplify
    views = memory_views(marked.body)
    streamed = frozenset(func.attrs[STREAMED_ATTR])
    cached, streaming = (int(simplify(_at_one_row(w, marked))) for w in footprint(loop, streamed, views))
    scales, _, *streams = bbs_decoded.constants(enc)  # position is read after the loop, by the output unshuffle
    assert streaming * 4 == scales.nbytes + sum(c.nbytes for c in streams)  # each once, its stream view too
    assert int(simplify(_at_one_row(work(loop), marked))) < STREAMED_WORD * streaming
    assert STREAMED_WORD * streaming + cached >= SERIAL_WORK
    # the padded activations, the tables (12 groups of 7 tables of 32 entries) and the group sums, filled before the
    # loop (not the accumulators and results its tasks write)
    handed = int(simplify(_at_one_row(handoff(loop, marked.body, views), marked)))
    assert handed == 384 + 12 * 7 * 32 + 12
    assert STREAMED_WORD * streaming + cached < SERIAL_WORK + HANDOFF_WORD * handed
    assert _one_row_form(serial_when_small(marked)) == s.ForKind.SERIAL


@T.prim_func
def _table_then_rows(x: T.Buffer((64,), "float32"), w: T.Buffer((64, 64), "float32"), out: T.Buffer((64,), "float32")):
    """A table of ``x`` filled on the calling thread and read by every task of the parallel loop, whose results go
    through scratch of its own to the output."""
    T.func_attr({"global_symbol": "main"})
    table = T.alloc_buffer((64,), "float32")
    results = T.alloc_buffer((64,), "float32")
    for k in range(64):
        table[k] = x[k] * T.float32(2)
    for i in T.parallel(64):
        row = T.alloc_buffer((1,), "float32")
        row[0] = T.float32(0)
        for k in range(64):
            row[0] = row[0] + w[i, k] * table[k]
        results[i] = row[0]
    for i in range(64):
        out[i] = results[i]


def test_handoff_counts_the_scratch_written_before_a_parallel_loop_that_it_reads():
    func = lowered(_table_then_rows)
    (loop,) = loops(func, s.ForKind.PARALLEL)
    # the table; not the results, written by the tasks, nor row, declared per task
    assert int(tvm.sym.Analyzer().simplify(handoff(loop, func.body))) == 64
    # a bound the loop's cost reaches: serial, as its hand-off adds HANDOFF_WORD a word to the bound; lowered by that
    # much, parallel
    work_and_words = int(tvm.sym.Analyzer().simplify(cost(loop, frozenset(), memory_views(func.body))))
    assert _one_row_form(serial_when_small(func, threshold=work_and_words)) == s.ForKind.SERIAL
    assert _one_row_form(serial_when_small(func, threshold=work_and_words - HANDOFF_WORD * 64)) == s.ForKind.PARALLEL


@T.prim_func
def _rows_then_scaled(x: T.Buffer((64,), "float32"), w: T.Buffer((64, 64), "float32"),
                      out: T.Buffer((64,), "float32")):
    """A parallel GEMV into scratch, then an epilogue on the calling thread that writes its result over that scratch
    (as a fused epilogue's output shares the GEMV accumulator's)."""
    T.func_attr({"global_symbol": "main"})
    acc = T.alloc_buffer((64,), "float32")
    for i in T.parallel(64):
        acc[i] = T.float32(0)
        for k in range(64):
            acc[i] = acc[i] + w[i, k] * x[k]
    for i in range(64):
        acc[i] = acc[i] * T.float32(2)
    for i in range(64):
        out[i] = acc[i]


@T.prim_func
def _rows_then_scaled_twice(x: T.Buffer((64,), "float32"), w: T.Buffer((64, 64), "float32"),
                            out: T.Buffer((64,), "float32")):
    """:func:`_rows_then_scaled` run twice, the second GEMV adding the scaled results of the first (the only store
    to them comes after the parallel loop)."""
    T.func_attr({"global_symbol": "main"})
    acc = T.alloc_buffer((64,), "float32")
    for r in range(2):
        for i in T.parallel(64):
            out[i] = T.if_then_else(r > 0, acc[i], T.float32(0))
            for k in range(64):
                out[i] = out[i] + w[i, k] * x[k]
        for i in range(64):
            acc[i] = out[i] * T.float32(2)


@pytest.mark.parametrize("prim_func,handed", [(_rows_then_scaled, 0), (_rows_then_scaled_twice, 64)])
def test_handoff_counts_stores_before_the_loop_or_repeated_before_its_next_run(prim_func, handed):
    """Scratch written after the parallel loop is no hand-off (the loop stays split where its cost reaches the bound)
    unless a loop around both writes it again before the parallel loop's next run."""
    func = lowered(prim_func)
    (loop,) = loops(func, s.ForKind.PARALLEL)
    views = memory_views(func.body)
    assert int(tvm.sym.Analyzer().simplify(handoff(loop, func.body, views))) == handed
    work_and_words = int(tvm.sym.Analyzer().simplify(cost(loop, frozenset(), views)))
    kept = loops(serial_when_small(func, threshold=work_and_words), s.ForKind.PARALLEL)
    assert bool(kept) == (handed == 0)

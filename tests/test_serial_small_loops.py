"""Parallel loops over little work made serial (statically, or by a run-time test on a symbolic size)."""

import numpy as np
import pytest
import tvm
import tvm.sym
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.tirx import stmt as s

from bie_compiler.codegen import cpu
from bie_compiler.codegen.serial_small_loops import SERIAL_WORK, footprint, serial_when_small, work
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
    assert int(tvm.sym.Analyzer().simplify(footprint(loop))) == 2 * 8 * 256  # x and y, float32


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

"""The row-reduction rule: softmax and layer norm, rows in parallel, symbolic rows and row lengths."""

import numpy as np
import pytest
import tvm
from tvm import relax, te, topi

from bie_compiler.codegen.schedules import reduction
from bie_compiler.codegen.softmax import softmax as lane_softmax
from bie_compiler.codegen.target import make_target

SIZES = [{"b": 1, "s": 128}, {"b": 8, "s": 37}, {"b": 1, "s": 1}, {"b": 2, "s": 5}]


@pytest.mark.parametrize("softmax", [topi.nn.softmax, topi.nn.fast_softmax, lambda x, axis: lane_softmax(x)],
                         ids=["topi", "topi-fast", "lane-partial"])
def test_softmax_over_a_symbolic_row(check_rule, softmax):
    b, s = te.var("b", "int64"), te.var("s", "int64")
    x = te.placeholder((b, tvm.tirx.const(12, "int64"), s, s), "float32", "x")
    script = check_rule(reduction.RowReduction(), te.create_prim_func([x, softmax(x, -1)]), SIZES).script()
    assert "T.parallel" in script and "T.vectorized" in script


def test_lane_partial_softmax_is_one_pass_over_rows(check_rule):
    """The exponentials are recomputed per row, not kept: one parallel loop over rows, and no buffer of the input's
    size between the passes (the rule's per-row scalars and lane partials only)."""
    r, n = te.var("r", "int64"), te.var("n", "int64")
    x = te.placeholder((r, n), "float32", "x")
    script = check_rule(reduction.RowReduction(), te.create_prim_func([x, lane_softmax(x)]),
                        [{"r": 3, "n": 37}, {"r": 1536, "n": 128}, {"r": 2, "n": 1}]).script()
    assert script.count("T.parallel") == 1
    assert "alloc_buffer((r, n)" not in script


def test_lane_partial_softmax_is_softmax():
    """Against numpy, rows shorter and longer than the lanes, and a row of -inf-free large values."""
    target = make_target()
    x = te.placeholder((te.var("r", "int64"), te.var("n", "int64")), "float32", "x")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, lane_softmax(x)]).with_attr("global_symbol", "main")}),
                      target)
    rng = np.random.default_rng(0)
    for rows, n in ((3, 1), (2, 15), (4, 16), (5, 37)):
        xv = (rng.standard_normal((rows, n)) * 20).astype("float32")
        out = tvm.runtime.empty((rows, n), "float32")
        lib.mod["main"](tvm.runtime.tensor(xv), out)
        e = np.exp(xv.astype(np.float64) - xv.max(-1, keepdims=True))
        np.testing.assert_allclose(out.numpy(), e / e.sum(-1, keepdims=True), rtol=1e-6, atol=1e-7)


def test_layer_norm_reduces_in_vector_lanes(check_rule):
    b, s = te.var("b", "int64"), te.var("s", "int64")
    x = te.placeholder((b, s, 384), "float32", "x")
    gamma, beta = te.placeholder((384,), "float32", "gamma"), te.placeholder((384,), "float32", "beta")
    out = topi.nn.layer_norm(x, gamma, beta, axis=[-1], epsilon=1e-12)
    script = check_rule(reduction.RowReduction(), te.create_prim_func([x, gamma, beta, out]), SIZES).script()
    assert "_rf" in script  # the sums are LANES partial sums (rfactor), not a scalar loop


def _global_average_pool(channels: int, plane: int) -> tvm.tirx.PrimFunc:
    """GlobalAveragePool as Relax legalizes it: a sum over the plane's two axes into [batch, C, 1, 1], then the
    division by the plane's size."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tvm.tirx.Var("b", "int64"), channels, plane, plane], "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=True)))
    mod = relax.transform.LegalizeOps()(bb.get())
    return next(f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


def test_global_average_pool_sums_in_vector_lanes(check_rule):
    """The cnn's pool over 16x16 planes: the plane's two axes one reduction of 256, summed as LANES partial sums
    (rfactor; a scalar chain of adds per channel before, 14x slower at batch 8); a plane of 7x7 (not whole lanes)
    is left to the other rules."""
    script = check_rule(reduction.RowReduction(), _global_average_pool(32, 16), [{"b": 1}, {"b": 8}]).script()
    assert "_rf" in script and "T.vectorized" in script
    assert reduction.RowReduction().apply(_global_average_pool(64, 7), make_target(), False) is None


def test_declines_a_lone_reduction():
    x = te.placeholder((te.var("s", "int64"), 64), "float32", "x")
    assert reduction.RowReduction().apply(te.create_prim_func([x, topi.sum(x, axis=1)]), make_target(), False) is None

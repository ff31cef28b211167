"""The elementwise rule (fused chains, transposes) and the fast polynomial math it vectorizes."""

import math

import numpy as np
import pytest
import tvm
from tvm import relax, te, topi

from bie_compiler.codegen import cpu
from bie_compiler.codegen.fast_math import fast_math
from bie_compiler.codegen.schedules import elementwise
from bie_compiler.codegen.target import make_target

SIZES = [{"b": 1, "s": 128}, {"b": 8, "s": 37}, {"b": 1, "s": 1}]


def test_gelu_chain_is_one_vectorized_pass(check_rule):
    b, s = te.var("b", "int64"), te.var("s", "int64")
    x, bias = te.placeholder((b, s, 1536), "float32", "x"), te.placeholder((1536,), "float32", "bias")
    h = topi.add(x, bias)
    gelu = topi.multiply(topi.multiply(h, topi.add(topi.fast_erf(topi.divide(h, math.sqrt(2.0))), 1.0)), 0.5)
    script = check_rule(elementwise.Elementwise(), te.create_prim_func([x, bias, gelu]), SIZES).script()
    assert "alloc_buffer" not in script and "T.vectorized" in script and "T.parallel" in script


@pytest.mark.parametrize("axes", [(0, 2, 1, 3), (0, 2, 3, 1)])
def test_transposes(check_rule, axes):
    b, s = te.var("b", "int64"), te.var("s", "int64")
    x = te.placeholder((b, s, 12, 32), "float32", "x")
    check_rule(elementwise.Elementwise(), te.create_prim_func([x, topi.transpose(x, axes)]), SIZES)


def test_a_symbolic_vector(check_rule):
    x = te.placeholder((te.var("s", "int64"),), "float32", "x")
    check_rule(elementwise.Elementwise(), te.create_prim_func([x, topi.exp(x)]), [{"s": 1}, {"s": 100}, {"s": 4099}])


@pytest.mark.parametrize("fast,exact,bound", [(topi.fast_erf, math.erf, 5e-7), (topi.fast_exp, math.exp, 2e-7),
                                              (topi.fast_tanh, math.tanh, 5e-7)])
def test_fast_math_is_accurate(fast, exact, bound):
    """Relative error against float64 over the range that matters (exp: down to a softmax's -30)."""
    xs = np.concatenate([np.linspace(-30 if exact is math.exp else -8, 8, 200001), [0.0, 1e-6, -1e-6]]).astype("float32")
    a = te.placeholder((xs.size,), "float32", "a")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, fast(a)]).with_attr("global_symbol", "main")}),
                      make_target())
    out = tvm.runtime.empty(xs.shape, "float32")
    lib.mod["main"](tvm.runtime.tensor(xs), out)
    want = np.array([exact(float(v)) for v in xs])
    assert (np.abs(out.numpy() - want) / np.maximum(np.abs(want), 1e-30)).max() <= bound


def test_fast_math_rewrites_operators_and_leaves_function_calls():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 8], "float32"))
    with bb.function("inner", [x]):
        bb.emit_func_output(x)
    inner = bb.get().get_global_var("inner")
    y = relax.Var("y", relax.TensorType([4, 8], "float32"))
    with bb.function("main", [y]):
        h = bb.emit(relax.Call(inner, [y]))
        bb.emit_func_output(bb.emit(relax.op.nn.softmax(relax.op.erf(h))))
    script = fast_math(bb.get())["main"].script()
    assert "R.erf" not in script and "R.nn.softmax" not in script and "inner(" in script


def test_a_static_row_no_vector_multiple(check_rule):
    """A bias add over 1000 classes: 8-lane pieces that divide the row, no tested tail."""
    x = te.placeholder((te.var("b", "int64"), tvm.tirx.const(1000, "int64")), "float32", "x")
    bias = te.placeholder((tvm.tirx.const(1000, "int64"),), "float32", "bias")
    script = check_rule(elementwise.Elementwise(), te.create_prim_func([x, bias, topi.add(x, bias)]),
                        [{"b": 1}, {"b": 3}]).script()
    assert "T.vectorized(T.int64(8))" in script


def test_softmax_runs_over_one_axis_of_rows():
    """Attention's softmax over [b, heads, s, s] computes over the rows viewed as [b * heads * s, s] (no per-row
    index divisions) and equals the float64 softmax, for symbolic sizes from one token up."""
    bb = relax.BlockBuilder()
    b, s = tvm.tirx.Var("b", "int64"), tvm.tirx.Var("s", "int64")
    x = relax.Var("x", relax.TensorType([b, 12, s, s], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.softmax(x, axis=-1))
        bb.emit_func_output(y)
    mod = bb.get()
    rewritten = fast_math(mod)
    kernel = next(f for gv, f in rewritten.functions_items() if gv.name_hint == "softmax")
    assert len(kernel.params[0].ty.shape) == 2
    vm = relax.VirtualMachine(tvm.compile(mod, make_target(), relax_pipeline=cpu.pipeline(), tir_pipeline=cpu.TIR_PIPELINE),
                              tvm.cpu())
    rng = np.random.default_rng(0)
    for shape in ((1, 12, 128, 128), (2, 12, 5, 5), (1, 12, 1, 1)):
        xv = (rng.standard_normal(shape) * 5).astype("float32")
        e = np.exp(xv.astype(np.float64) - xv.max(-1, keepdims=True))
        np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(xv)).numpy(), e / e.sum(-1, keepdims=True),
                                   rtol=1e-6, atol=1e-7)


def test_gelu_operator_uses_the_polynomial_erf():
    """Relax's ``nn.gelu`` (ONNX ``Gelu``, as the dynamo exporter writes it) is rewritten with the polynomial erf and
    equals the float64 GELU."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tvm.tirx.Var("n", "int64"), 384], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.gelu(x))
        bb.emit_func_output(y)
    mod = bb.get()
    rewritten = fast_math(mod)
    assert "R.nn.gelu" not in rewritten["main"].script()
    kernel = next(f for gv, f in rewritten.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.erf" not in kernel.script()
    vm = relax.VirtualMachine(tvm.compile(mod, make_target(), relax_pipeline=cpu.pipeline(), tir_pipeline=cpu.TIR_PIPELINE),
                              tvm.cpu())
    xv = (np.random.default_rng(0).standard_normal((5, 384)) * 3).astype("float32")
    want = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in xv.astype(np.float64).ravel()]).reshape(xv.shape)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(xv)).numpy(), want, rtol=1e-6, atol=1e-6)

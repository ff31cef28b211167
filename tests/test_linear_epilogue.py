"""Branching epilogues (the NaN-preserving ReLU) folded into a chain, so the conv and matmul rules take them."""

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx

from bie_compiler.codegen.schedules.conv2d import Conv2D
from bie_compiler.codegen.schedules.linear_epilogue import linear_epilogue
from bie_compiler.codegen.schedules.matmul import Matmul
from bie_compiler.codegen.target import make_target
from bie_compiler.passes import PropagateNaN


def fused_relu(op: str) -> tirx.PrimFunc:
    """conv2d (16 -> 32 channels, 3x3 stride 2 on 32x32) or matmul ([batch, 64] x [64, 48]) + bias, then ReLU,
    as the build sees it: PropagateNaN's select, legalized and fused into one PrimFunc."""
    bb = relax.BlockBuilder()
    n = tirx.Var("batch", "int64")
    if op == "conv":
        x, w = relax.Var("x", relax.TensorType([n, 16, 32, 32], "float32")), relax.Var("w", relax.TensorType([32, 16, 3, 3], "float32"))
        b = relax.Var("b", relax.TensorType([1, 32, 1, 1], "float32"))
    else:
        x, w = relax.Var("x", relax.TensorType([n, 64], "float32")), relax.Var("w", relax.TensorType([64, 48], "float32"))
        b = relax.Var("b", relax.TensorType([48], "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = relax.op.nn.conv2d(x, w, strides=2, padding=1) if op == "conv" else relax.op.matmul(x, w)
            out = bb.emit_output(bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, b)))))
        bb.emit_func_output(out)
    with make_target():
        mod = relax.get_pipeline("zero")(PropagateNaN()(bb.get()))
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    return func


def run(func: tirx.PrimFunc, batch: int) -> np.ndarray:
    """``func`` on seeded random arguments (its input with a NaN and an infinity); its output."""
    rng = np.random.default_rng(0)
    shapes = [[batch if not isinstance(s, tirx.IntImm) else int(s) for s in p.ty.shape] for p in func.params]
    args = [rng.standard_normal(s).astype("float32") for s in shapes]
    args[0].flat[[3, 40]] = np.nan, np.inf
    args = [tvm.runtime.tensor(a) for a in args]
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target()).mod
    lib["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("op,rule", [("conv", Conv2D()), ("matmul", Matmul())])
def test_nan_relu_epilogue_is_scheduled_by_its_rule(op, rule):
    func = fused_relu(op)
    linear = linear_epilogue(func)
    blocks = [b.name_hint for b in _blocks(linear)]
    assert not any("less_equal" in b or "T_add" in b for b in blocks), blocks  # the branch folded into the select
    sch = rule.apply(linear, make_target(), False)
    assert sch is not None
    for batch in (1, 3):
        want, got = run(func, batch), run(sch.mod["main"], batch)
        assert np.isnan(want).any()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # NaN where the reference has NaN


def test_blocks_read_by_a_reduction_stay():
    """The conv's padding block is read by the conv: still there, as the conv rule needs it."""
    assert "pad_temp" in [b.name_hint for b in _blocks(linear_epilogue(fused_relu("conv")))]


def _blocks(func: tirx.PrimFunc) -> list:
    sch = s_tir.Schedule(func)
    return [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]

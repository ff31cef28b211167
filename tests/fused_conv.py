"""Fused conv PrimFuncs as the CPU build sees them (Relax legalized and fused), and a runner for them."""

import numpy as np
import tvm
from tvm import relax, tirx

from bie_compiler.codegen.target import make_target


def fused_conv(batch, cin, height, width, cout, kernel, stride=1, groups=1, epilogue="relu6"):
    """conv2d (weight a function argument, 'same' padding) + bias, then relu6 (clip), relu, the NaN-keeping relu
    (nanrelu), a residual add or nothing; or the conv alone (bare)."""
    bb = relax.BlockBuilder()
    n = tirx.Var("batch", "int64")  # symbolic, as in the compiled models
    x = relax.Var("x", relax.TensorType([n, cin, height, width], "float32"))
    w = relax.Var("w", relax.TensorType([cout, cin // groups, kernel, kernel], "float32"))
    b = relax.Var("b", relax.TensorType([1, cout, 1, 1], "float32"))
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    params = [x, w, b]
    if epilogue == "residual":
        params.append(relax.Var("r", relax.TensorType([n, cout, out_h, out_w], "float32")))
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=kernel // 2, groups=groups))
            if epilogue != "bare":  # bare: the conv writes the output (its result read by several ops)
                y = bb.emit(relax.op.add(y, b))
            if epilogue == "relu6":
                y = bb.emit(relax.op.maximum(relax.op.minimum(y, relax.const(6.0)), relax.const(0.0)))
            elif epilogue == "relu":
                y = bb.emit(relax.op.nn.relu(y))
            elif epilogue == "nanrelu":  # PropagateNaN's ReLU: its input read twice, an epilogue DAG
                zero = relax.const(0.0)
                y = bb.emit(relax.op.where(relax.op.less_equal(y, zero), zero, y))
            elif epilogue == "residual":
                y = bb.emit(relax.op.add(params[-1], y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with make_target():
        mod = relax.get_pipeline("zero")(bb.get())
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    return func, batch


def run(func, batch, seed=0):
    """``func`` built for the host CPU, run on seeded random arguments; its output."""
    rng = np.random.default_rng(seed)
    shapes = [[batch if not isinstance(s, tirx.IntImm) else int(s) for s in p.ty.shape] for p in func.params]
    args = [tvm.runtime.tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target()).mod
    lib["main"](*args)
    return args[-1].numpy()


def scheduled_and_plain(rule, case) -> tuple[np.ndarray, np.ndarray]:
    """The outputs of ``fused_conv(*case)`` as ``rule`` schedules it (it must take it) and unscheduled."""
    func, batch = fused_conv(*case)
    sch = rule.apply(func, make_target(), False)
    assert sch is not None
    return run(sch.mod["main"], batch), run(func, batch)


def expand_depthwise(cin, height, width, channels, kernel=3, stride=1, epilogue="relu6"):
    """A 1x1 conv (cin -> channels) + bias + relu6, then a depthwise conv + bias + ``epilogue`` (relu6 or none),
    fused by the CPU build's fusion with every pointwise/depthwise pair fused: the one PrimFunc."""
    from bie_compiler.codegen.cpu import linear_epilogue_pass
    from bie_compiler.codegen.fuse_expand_depthwise import fuse_expand_depthwise

    bb = relax.BlockBuilder()
    n = tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType([n, cin, height, width], "float32"))
    params = [x] + [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in [
        ("w1", [channels, cin, 1, 1]), ("b1", [1, channels, 1, 1]),
        ("w2", [channels, 1, kernel, kernel]), ("b2", [1, channels, 1, 1])]]
    _, w1, b1, w2, b2 = params
    relu6 = lambda y: relax.op.maximum(relax.op.minimum(y, relax.const(6.0)), relax.const(0.0))  # noqa: E731
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(relu6(relax.op.add(relax.op.nn.conv2d(x, w1), b1)))
            y = bb.emit(relax.op.add(relax.op.nn.conv2d(y, w2, strides=stride, padding=kernel // 2, groups=channels), b2))
            if epilogue == "relu6":
                y = bb.emit(relu6(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    fuse = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), fuse_expand_depthwise(min_bytes=0), relax.transform.FuseTIR(), linear_epilogue_pass]
    with make_target():
        mod = tvm.transform.Sequential(fuse)(bb.get())
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    return func

"""Small constant-size buffers kept on the stack (no workspace calls per parallel task), large ones left alone."""

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, te
from tvm.tirx import stmt as s

from bie_compiler.codegen import cpu
from bie_compiler.codegen.schedules.depthwise_conv2d import DepthwiseConv2D
from bie_compiler.codegen.stack_buffers import DISABLE_LOWER_BUILTIN, STACK_BYTES, stack_buffers
from bie_compiler.codegen.target import make_target

from fused_conv import fused_conv, run
from test_serial_small_loops import lowered


def rows_through_a_buffer(width: int):
    """``y[i, :] = x[i, :] + 1`` per row i in parallel, each row staged in a ``width``-float buffer first."""
    x = te.placeholder((64, width), "float32", "x")
    staged = te.compute(x.shape, lambda i, j: x[i, j] + 1.0, name="staged")
    y = te.compute(x.shape, lambda i, j: staged[i, j] * 2.0, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    i, _ = sch.get_loops(sch.get_sblock("y"))
    sch.parallel(i)
    sch.compute_at(sch.get_sblock("staged"), i)
    return sch.mod["main"].with_attr("global_symbol", "main")


def allocations(func) -> dict:
    found = {}
    tvm_ffi.structural_map(func.body, [(s.AllocBuffer, lambda a: found.setdefault(a.buffer.name, a) and a)],
                           order="post")
    return {name: DISABLE_LOWER_BUILTIN in a.annotations for name, a in found.items()}


def test_marks_small_buffers_only():
    assert allocations(stack_buffers(lowered(rows_through_a_buffer(64)))) == {"staged": True}
    assert allocations(stack_buffers(lowered(rows_through_a_buffer(STACK_BYTES // 4 + 16)))) == {"staged": False}


def test_depthwise_conv_allocates_no_workspace_and_computes_the_same():
    func, batch = fused_conv(1, 96, 7, 7, 96, 3, 1, 96)  # a padded plane and a register tile per channel
    scheduled = DepthwiseConv2D().apply(func, make_target(), False).mod["main"]
    built = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), make_target(),
                        tir_pipeline=cpu.TIR_PIPELINE)
    lib = built.mod.imports[0] if built.mod.imports else built.mod
    assert "TVMBackendAllocWorkspace" not in lib.inspect_source("ll")
    rng = np.random.default_rng(0)
    shapes = [[batch if not isinstance(d, tvm.tirx.IntImm) else int(d) for d in p.ty.shape] for p in func.params]
    args = [tvm.runtime.tensor(rng.standard_normal(shape).astype("float32")) for shape in shapes]
    built.mod["main"](*args)
    np.testing.assert_allclose(args[-1].numpy(), run(func, batch), rtol=1e-5, atol=1e-5)

"""The CPU build keeps its kernels' arguments noalias in LLVM, with the VM's shape function in the module."""

import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

from bie_compiler.codegen.cpu import lower, mark_single_argument_noalias, schedule
from bie_compiler.codegen.parallel_compile import compile_in_parallel
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.tir_pipeline import TIR_PIPELINE


def _symbolic_batch_add() -> tvm.IRModule:
    """y = x + 1 with a symbolic batch: the VM computes shapes in a generated one-argument shape function."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tirx.Var("batch", "int64"), 64], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.add(relax.op.multiply(x, x), relax.const(1.0)))
        bb.emit_func_output(y)
    return bb.get()


def test_kernels_get_noalias_compute_functions():
    target = make_target()
    with target:
        scheduled = schedule()(_symbolic_batch_add())
    executable = compile_in_parallel(scheduled, target, lower(), TIR_PIPELINE, workers=1)  # one LLVM module
    llvm_ir = executable.mod.imports[0].inspect_source("ll")
    assert "define internal" in llvm_ir and "shape_func" in llvm_ir
    # TVM emits a kernel's body as a separate "<name>_compute_" function with noalias pointer arguments only
    # when every function of the module is tirx.noalias.
    assert "_compute_(ptr noalias" in llvm_ir


@T.prim_func
def _one_buffer(h: T.Buffer((4,), "int64")):
    h[1] = h[0] * T.int64(2)


@T.prim_func
def _two_buffers(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32")):
    for i in range(4):
        b[i] = a[i]


def test_only_single_argument_functions_are_marked():
    mod = mark_single_argument_noalias(tvm.IRModule({"one": _one_buffer, "two": _two_buffers}))
    assert mod["one"].attrs["tirx.noalias"]
    assert not (mod["two"].attrs and mod["two"].attrs.get("tirx.noalias"))

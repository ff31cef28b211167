"""The CPU build compiles its kernels in parts, one per core: the executable runs, exports and computes what the
one-part build computes; a build with pass instruments stays one part, so that they see every pass."""

import numpy as np
import tvm
from tvm import relax
from tvm.ir.instrument import PassTimingInstrument

from bie_compiler.codegen.cpu import lower, schedule
from bie_compiler.codegen.parallel_compile import compile_in_parallel
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.tir_pipeline import TIR_PIPELINE

ROWS, K, N = 8, 64, 48


def _three_kernels() -> tvm.IRModule:
    """softmax(relu(x @ w) + b) @ v: several PrimFuncs to deal into parts."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([ROWS, K], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.matmul(x, relax.const(rng.standard_normal((K, N)).astype("float32"))))
            h = bb.emit(relax.op.add(relax.op.nn.relu(h), relax.const(rng.standard_normal(N).astype("float32"))))
            h = bb.emit(relax.op.nn.softmax(h, axis=-1))
            y = bb.emit_output(relax.op.matmul(h, relax.const(rng.standard_normal((N, 16)).astype("float32"))))
        bb.emit_func_output(y)
    target = make_target()
    with target:
        return schedule()(bb.get())


def _run(executable, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _kinds(executable) -> list[str]:
    """The kinds of the executable's compiled kernel libraries (the VM links an empty C module beside static ones)."""
    return sorted(m.kind for m in executable.mod.imports if m.kind != "c")


def test_parts_run_export_and_agree_with_one_part(tmp_path):
    mod, target = _three_kernels(), make_target()
    x = np.random.default_rng(1).standard_normal((ROWS, K)).astype("float32")
    one = compile_in_parallel(mod, target, lower(), TIR_PIPELINE, workers=1)
    two = compile_in_parallel(mod, target, lower(), TIR_PIPELINE, workers=2)
    assert _kinds(one) == ["llvm"] and _kinds(two) == ["static_library", "static_library"]
    expected = _run(one, x)
    np.testing.assert_array_equal(_run(two, x), expected)
    two.export_library(str(tmp_path / "model.so"))
    np.testing.assert_array_equal(_run(tvm.runtime.load_module(str(tmp_path / "model.so")), x), expected)


def test_instrumented_build_stays_one_part():
    mod, target = _three_kernels(), make_target()
    timing = PassTimingInstrument()
    with tvm.transform.PassContext(instruments=[timing]):
        executable = compile_in_parallel(mod, target, lower(), TIR_PIPELINE, workers=2)
        assert "SerialWhenSmall" in timing.render()  # the TIR pipeline ran on this thread
    assert _kinds(executable) == ["llvm"]

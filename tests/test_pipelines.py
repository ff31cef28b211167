"""The registered Relax pipelines build an encoded module from plain ``tvm.compile``."""

import numpy as np
import tvm
from tvm import relax

from bie_compiler.codegen import cpu, cuda  # noqa: F401  (importing them registers bie_llvm and bie_cuda)
from bie_compiler.codegen.target import make_target
from bie_compiler.frontend import import_model
from bie_compiler.parity import decoded_model, make_inputs, run_onnxruntime
from bie_compiler.passes import EncodingPolicy, PropagateNaN, encoding_passes, plan_encoding


def encoded(path, target, codec="bie-bitplane", options=None):
    imported = import_model(path)
    mod = PropagateNaN()(imported.mod)
    plan = plan_encoding(mod, imported.constant_names, EncodingPolicy(codec, options or {}), target)
    return imported, plan, encoding_passes(plan)(mod)


def test_tvm_compile_with_bie_llvm_matches_the_decoded_model(model_dir):
    target = make_target()
    imported, plan, mod = encoded(model_dir["transformer"], target, options={"bits": 4})
    assert all(r.codec == "bie-bitplane" for r in plan.records)
    vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline="bie_llvm"), tvm.cpu())
    reference = decoded_model(imported.model, plan.records)
    for batch in (1, 3):
        inputs = make_inputs(imported.inputs, batch=batch, seed=batch)
        got = vm["main"](*(tvm.runtime.tensor(v) for v in inputs.values())).numpy()
        want = run_onnxruntime(reference, inputs)[0]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_tvm_compile_with_bie_cuda_makes_a_kernel_of_every_prim_func(model_dir):
    """Without a GPU the device module is CUDA source: every layer's kernel is in it."""
    target = make_target("cuda")
    _, plan, mod = encoded(model_dir["mlp"], target, "bbs")
    executable = tvm.compile(mod, target, relax_pipeline="bie_cuda")
    kernels = cuda.global_functions(cuda.device_source(executable))
    for name in plan.encoded:
        stem = "bbs_" + name.replace(".", "_")
        assert any(k.startswith(stem) for k in kernels), (stem, kernels)

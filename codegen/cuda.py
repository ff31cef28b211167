"""The CUDA build: lower Relax, give every kernel a GPU schedule, compile, check the device code.

Our encoded-weight kernels arrive scheduled for the GPU and opaque (see
``kernel_for``). The rest is legalized and fused, and dlight's GPU rules
schedule it (matmul, GEMV, reductions; ``Fallback`` binds whatever is left to
threads). Host code is LLVM for the target's host CPU.

With a CUDA target, TVM 0.27 compiles a PrimFunc that has no thread bindings
into host code without a word, so the model would run its layers on the CPU.
The build refuses that twice: before compiling, every PrimFunc must bind
threads; after, every PrimFunc, and so every encoded layer's kernel, must be a
``__global__`` function of the generated CUDA source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from . import LAYER_ATTR
from .weights import Weights, split_weights

_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\(")
_THREAD_BINDING = ("T.thread_binding(", "T.launch_thread(")


class DeviceCodeError(RuntimeError):
    """A kernel did not become GPU code (a bug in a schedule, not in the user's input)."""


@dataclass
class CudaBuild:
    """The executable, its CUDA source, the device kernels of each encoded layer, the weights ``main`` takes."""

    executable: relax.VMExecutable
    source: str
    layer_kernels: dict[str, list[str]]  # layer name -> __global__ functions computing it
    weights: Weights


def device_source(executable: relax.VMExecutable) -> str:
    """The CUDA C++ source of the executable's device module (found by kind among the imported modules)."""
    pending = list(executable.mod.imports)
    while pending:
        module = pending.pop()
        if module.kind == "cuda":
            return module.inspect_source()
        pending.extend(module.imports)
    raise DeviceCodeError("the executable has no CUDA device module: every kernel was compiled as host code")


def global_functions(source: str) -> list[str]:
    """The names of the ``__global__`` functions defined or declared in a CUDA source, once each."""
    return list(dict.fromkeys(_GLOBAL.findall(source)))


def _prim_funcs(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def check_thread_bindings(mod: tvm.IRModule) -> None:
    """Refuse a module where a PrimFunc binds no GPU threads (it would silently run on the host)."""
    unbound = sorted(name for name, f in _prim_funcs(mod).items() if not any(t in f.script() for t in _THREAD_BINDING))
    if unbound:
        raise DeviceCodeError(f"no GPU thread bindings, so they would run on the host CPU: {', '.join(unbound)}")


@tvm.transform.module_pass(opt_level=0, name="CheckThreadBindings")
def _check_thread_bindings(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """:func:`check_thread_bindings` as a pass (its error reaches the caller of the pass as a RuntimeError)."""
    check_thread_bindings(mod)
    return mod


def schedule() -> tvm.transform.Pass:
    """Legalize, fold constants, fuse, give every PrimFunc dlight's GPU schedule."""
    rules = dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
    return tvm.transform.Sequential([relax.get_pipeline("zero"), dl.ApplyDefaultSchedule(*rules)],
                                    name="BieCudaSchedule")


@tvm.transform.module_pass(opt_level=0, name="CudaLowering")
def _lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """TVM's default GPU pipeline for the current target (it needs the target to be built)."""
    return relax.get_default_pipeline(tvm.target.Target.current())(mod)


@relax.register_pipeline("bie_cuda")
def pipeline() -> tvm.transform.Pass:
    """The Relax pipeline of the CUDA build (``tvm.compile(mod, target, relax_pipeline="bie_cuda")`` on an
    encoded module); :func:`build` runs the same passes and checks the generated source too."""
    return tvm.transform.Sequential([schedule(), _check_thread_bindings, _lower], name="bie_cuda")


def _kernels_of(name: str, kernels: list[str]) -> list[str]:
    # TVM names a PrimFunc's device kernels "<name>_kernel", with a suffix when it launches several.
    return [k for k in kernels if k == f"{name}_kernel" or k.startswith(f"{name}_kernel_")]


def build(mod: tvm.IRModule, target: tvm.target.Target) -> CudaBuild:
    with target:
        mod = schedule()(mod)
    check_thread_bindings(mod)
    funcs = _prim_funcs(mod)  # the kernels' names, each to be found in the source
    mod, weights = split_weights(mod)
    executable = tvm.compile(mod, target, relax_pipeline=_lower)
    source = device_source(executable)
    kernels = global_functions(source)
    missing = sorted(name for name in funcs if not _kernels_of(name, kernels))
    if missing:
        raise DeviceCodeError(f"no __global__ kernel in the generated CUDA source for: {', '.join(missing)}")
    layer_kernels: dict[str, list[str]] = {}
    for name, func in funcs.items():
        if func.attrs is not None and LAYER_ATTR in func.attrs:
            layer_kernels.setdefault(str(func.attrs[LAYER_ATTR]), []).extend(_kernels_of(name, kernels))
    return CudaBuild(executable, source, layer_kernels, weights)

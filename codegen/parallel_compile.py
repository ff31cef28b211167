"""A Relax module compiled for the VM with its PrimFuncs compiled in parallel, one part per core.

``tvm.compile`` runs the TIR pipeline and LLVM over every PrimFunc of a module as one LLVM module, on one core, and
for a model with large kernels that is most of the compile time. Here the lowered module's
PrimFuncs are dealt into one part per core (largest first, each to the lightest part; a function's printed size
stands for its cost), each part is lowered, compiled and written to an object file in a thread (TVM's calls release
the GIL, so the C++ passes and LLVM run side by side), and the executable imports the objects as static libraries:
``export_library`` links them as they are, and ``relax.VirtualMachine`` links them when it runs the executable in
memory. A build with pass instruments (``--timing``) stays one part on the caller's thread: the instruments record
the passes of the thread they run on.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax import vm_build


def compile_in_parallel(mod: tvm.IRModule, target: tvm.target.Target, relax_pipeline: tvm.transform.Pass,
                        tir_pipeline: str, workers: int | None = None) -> relax.VMExecutable:
    """``tvm.compile(mod, target, relax_pipeline=relax_pipeline, tir_pipeline=tir_pipeline)``, its PrimFuncs
    compiled in ``workers`` parts at once (default: this process's cores)."""
    with target:
        mod = relax_pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    # tvm.compile's own steps (relax.build): it has no hook between the VM code generation and the TIR build
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    ctx = tvm.transform.PassContext.current()
    workers = min(workers or len(os.sched_getaffinity(0)), len(funcs))
    if workers <= 1 or len(ctx.instruments) > 0:
        tir_mod = tvm.IRModule(dict(funcs), attrs=mod.attrs) if funcs else None
        return vm_build._vmlink(builder, target, tir_mod, tir_pipeline, ext_libs, params)
    parts = _dealt(funcs, workers)
    with tempfile.TemporaryDirectory(prefix="bie-kernels-") as folder, ThreadPoolExecutor(workers) as pool:
        def part_library(index: int) -> tvm.runtime.Module:
            part = tvm.IRModule(dict(parts[index]), attrs=mod.attrs)
            # a thread starts outside the caller's pass context: the same options, without instruments
            with tvm.transform.PassContext(opt_level=ctx.opt_level, config=dict(ctx.config),
                                           required_pass=list(ctx.required_pass),
                                           disabled_pass=list(ctx.disabled_pass)):
                library = tvm.tirx.build(part, target=target, pipeline=tir_pipeline)
            path = str(Path(folder) / f"kernels{index}.o")
            library.write_to_file(path)
            # the object's bytes are read into the module here: the folder may go
            return tvm.runtime.load_static_library(path, [str(f.attrs["global_symbol"]) for _, f in parts[index]])

        ext_libs += pool.map(part_library, range(workers))
    return vm_build._vmlink(builder, target, None, tir_pipeline, ext_libs, params)


def _dealt(funcs: list, parts: int) -> list[list]:
    """``funcs`` dealt into ``parts`` lists of about equal printed size: largest first, each to the lightest."""
    sized = sorted(((len(f.script(show_meta=False)), i) for i, (_, f) in enumerate(funcs)), reverse=True)
    dealt, loads = [[] for _ in range(parts)], [0] * parts
    for size, i in sized:
        lightest = loads.index(min(loads))
        dealt[lightest].append(funcs[i])
        loads[lightest] += size
    return dealt

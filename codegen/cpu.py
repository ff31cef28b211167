"""The LLVM build: lower Relax, schedule the dense ops, compile.

Our encoded-weight kernels arrive scheduled and opaque (see ``kernel_for``);
everything else is legalized, fused, and given dlight's CPU schedules where
one applies (GEMV and reductions: parallel outer loops).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl


def build(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    with target:
        mod = relax.get_pipeline("zero")(mod)  # legalize, fold constants, fuse
        mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod)
    return tvm.compile(mod, target)

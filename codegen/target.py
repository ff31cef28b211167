"""Compilation targets by name, with the host CPU named explicitly for LLVM."""

from __future__ import annotations

import tvm
from tvm.target import codegen as llvm_codegen

from bie_compiler.errors import OptionError

TARGETS = ("llvm",)
PLANNED = {"cuda": "the CUDA lowering (issue 6)", "bitvert": "the BitVert target (issue 5): waits for the bbs codec (issue 3) to offload its layers"}


def host_cpu() -> str:
    """LLVM's name for this machine's CPU. TVM's LLVM refuses "native" and falls back to generic code."""
    cpu = llvm_codegen.llvm_get_system_cpu()
    return cpu if cpu and llvm_codegen.llvm_is_valid_cpu(cpu, llvm_codegen.llvm_get_system_triple()) else "generic"


def make_target(kind: str = "llvm", mcpu: str | None = None) -> tvm.target.Target:
    if kind in PLANNED:
        raise OptionError(f"target {kind!r} is not implemented yet ({PLANNED[kind]}); available: {', '.join(TARGETS)}")
    if kind not in TARGETS:
        raise OptionError(f"unknown target {kind!r}; available: {', '.join(TARGETS)}")
    cpu = mcpu or host_cpu()
    if not llvm_codegen.llvm_is_valid_cpu(cpu, llvm_codegen.llvm_get_system_triple()):
        raise OptionError(f"LLVM does not know the CPU {cpu!r} (try one of: {host_cpu()}, generic, x86-64-v3)")
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu})

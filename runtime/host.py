"""The machine an artefact runs on: LLVM's name for this CPU and the instructions a CPU has."""

from __future__ import annotations

import tvm
from tvm.target import codegen as llvm_codegen

# LLVM features that change which instructions exist (others only tune code generation).
_ISA_PREFIXES = ("avx", "sse", "ssse", "fma", "bmi", "f16c", "amx", "vaes", "vpclmulqdq", "gfni", "popcnt", "lzcnt")


def host_cpu() -> str:
    """LLVM's name for this machine's CPU. TVM's LLVM refuses "native" and falls back to generic code."""
    cpu = llvm_codegen.llvm_get_system_cpu()
    return cpu if cpu and llvm_codegen.llvm_is_valid_cpu(cpu, llvm_codegen.llvm_get_system_triple()) else "generic"


def isa(mcpu: str) -> set[str]:
    """The instruction-set features of the CPU LLVM calls ``mcpu``."""
    features = llvm_codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    return {f for f in features if f.startswith(_ISA_PREFIXES)}

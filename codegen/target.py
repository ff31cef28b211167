"""Compilation targets by name, with the host CPU named explicitly for LLVM.

``cuda`` is a GPU target (``arch``, default sm_90) whose host code is LLVM for
the host CPU; the manifest records both (see :func:`describe`). ``bitvert`` is
the host's LLVM target marked with the bitvert key: bbs layers are offloaded
to the simulated accelerator (``codegen/bitvert.py``), the rest runs on the host.
"""

from __future__ import annotations

import re

import tvm
from tvm.target import codegen as llvm_codegen

from bie_compiler.errors import OptionError
from bie_compiler.runtime.host import host_cpu

from . import bitvert

TARGETS = ("llvm", "cuda", "bitvert")
DEFAULT_CUDA_ARCH = "sm_90"


def make_target(kind: str = "llvm", mcpu: str | None = None, arch: str | None = None) -> tvm.target.Target:
    """The TVM target for ``kind``; ``mcpu`` names the (host) CPU, ``arch`` the GPU architecture (cuda only)."""
    if kind not in TARGETS:
        raise OptionError(f"unknown target {kind!r}; available: {', '.join(TARGETS)}")
    cpu = mcpu or host_cpu()
    if not llvm_codegen.llvm_is_valid_cpu(cpu, llvm_codegen.llvm_get_system_triple()):
        raise OptionError(f"LLVM does not know the CPU {cpu!r} (try one of: {host_cpu()}, generic, x86-64-v3)")
    host = tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    if kind == "cuda":
        arch = arch or DEFAULT_CUDA_ARCH
        if not re.fullmatch(r"sm_[1-9][0-9]{1,2}[af]?", arch):
            raise OptionError(f"--arch {arch!r}: expected a CUDA architecture such as sm_80 or sm_90")
        # 48 KiB: the static shared memory a thread block may use on every architecture (dlight asks for it).
        return tvm.target.Target({"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152}, host=host)
    if arch is not None:
        raise OptionError(f"--arch {arch!r} applies to --target cuda only (target is {kind!r})")
    return bitvert.make_target(host) if kind == "bitvert" else host


def describe(target: tvm.target.Target) -> dict:
    """What the manifest records: the kind, the (host) CPU, and the GPU architecture for cuda."""
    if target.kind.name == "cuda":
        return {"kind": "cuda", "arch": str(target.attrs["arch"]), "mcpu": str(target.host.attrs["mcpu"])}
    kind = "bitvert" if bitvert.is_bitvert(target) else target.kind.name
    return {"kind": kind, "mcpu": str(target.attrs["mcpu"])}

"""The GPU a cuda artefact runs on, and how its CUDA source gets compiled there.

A cuda artefact built on a machine without a GPU holds CUDA source, not
machine code: TVM compiles it when the library is loaded, through the
``tvm_callback_cuda_compile`` hook that ``tvm.support.nvcc`` registers, with
NVRTC (the ``cuda-bindings`` package) or else nvcc. Both are checked here, so
a machine that cannot run the artefact says why before anything is loaded.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil

import tvm

from bie_compiler.errors import ArtefactError


def _capability(arch: str) -> tuple[int, int]:
    match = re.fullmatch(r"sm_(\d+)(\d)[af]?", arch)  # sm_90 -> (9, 0), sm_100a -> (10, 0)
    if not match:
        raise ArtefactError(f"the manifest names an unknown CUDA architecture {arch!r}")
    return int(match.group(1)), int(match.group(2))


def cuda_device(arch: str) -> tvm.runtime.Device:
    """``tvm.cuda(0)``, once it is known to exist, to be at least ``arch``, and to have a CUDA compiler."""
    device = tvm.cuda(0)
    if not device.exist:
        raise ArtefactError(
            f"artefact was compiled for CUDA ({arch}) but this machine has no CUDA device "
            "(tvm.cuda(0) does not exist); run it where an NVIDIA GPU is present, or recompile with --target llvm"
        )
    have = tuple(int(v) for v in device.compute_version.split("."))
    if have < _capability(arch):
        raise ArtefactError(f"artefact was compiled for {arch}; this GPU ({device.device_name}) is sm_{have[0]}{have[1]}")
    importlib.import_module("tvm.support.nvcc")  # registers tvm_callback_cuda_compile, which compiles the source at load

    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        if shutil.which("nvcc") is None:
            raise ArtefactError(
                "the artefact's CUDA source must be compiled on this machine: install cuda-bindings (NVRTC) "
                "or put nvcc on PATH"
            )
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    return device

"""Load a verified artefact and run it on numpy arrays, by input and output name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.target import codegen as llvm_codegen

from bie_compiler.errors import ArtefactError, BieError

from .artefact import LIBRARY, read_manifest
from .threads import configure_thread_pool

# LLVM features that change which instructions exist (others only tune code generation).
_ISA_PREFIXES = ("avx", "sse", "ssse", "fma", "bmi", "f16c", "amx", "vaes", "vpclmulqdq", "gfni", "popcnt", "lzcnt")


def _isa(mcpu: str) -> set[str]:
    features = llvm_codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    return {f for f in features if f.startswith(_ISA_PREFIXES)}


def check_host(target: dict) -> tvm.runtime.Device:
    """The device to run on; refuses an artefact whose code needs a device or instructions this machine lacks."""
    if target.get("kind") not in ("llvm", "cuda", "bitvert"):
        raise ArtefactError(f"artefact was compiled for {target.get('kind')!r}; "
                            "this machine runs 'llvm', 'cuda' and 'bitvert' artefacts")
    from bie_compiler.codegen.target import host_cpu

    missing = _isa(target["mcpu"]) - _isa(host_cpu())
    if missing:
        raise ArtefactError(
            f"artefact was compiled for CPU {target['mcpu']!r}, which has instructions this machine "
            f"({host_cpu()}) lacks: {', '.join(sorted(missing))}; recompile with --mcpu"
        )
    if target["kind"] == "cuda":  # host code as above, kernels on the GPU
        from .cuda_device import cuda_device

        return cuda_device(target["arch"])
    if target["kind"] == "bitvert":  # host code as above, offloaded layers on the simulated device
        from .bitvert import device

        device.register()
    return tvm.cpu()


class Runner:
    """A loaded artefact: ``runner({"x": array}) -> {"y": array}``."""

    def __init__(self, artefact_dir: str | Path):
        self.path = Path(artefact_dir)
        self.manifest = read_manifest(self.path)
        self.device = check_host(self.manifest["target"])
        configure_thread_pool()
        try:
            lib = tvm.runtime.load_module(str(self.path / LIBRARY))
            self.vm = relax.VirtualMachine(lib, self.device)
        except Exception as e:  # a library that passed the checksum but TVM cannot load
            raise ArtefactError(f"{self.path / LIBRARY}: TVM cannot load it: {str(e).strip().splitlines()[-1]}") from None
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def _check_inputs(self, inputs: dict) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise BieError(f"inputs: expected {self.input_names}; missing {missing}, unexpected {extra}")
        arrays = []
        for spec in self.inputs:
            a = np.asarray(inputs[spec["name"]])
            fixed = [(i, d) for i, d in enumerate(spec["shape"]) if isinstance(d, int)]
            if a.dtype.name != spec["dtype"] or a.ndim != len(spec["shape"]) or any(a.shape[i] != d for i, d in fixed):
                raise BieError(f"input {spec['name']!r}: expected {spec['dtype']} {spec['shape']}, got {a.dtype} {list(a.shape)}")
            arrays.append(np.ascontiguousarray(a))
        return arrays

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.vm["main"](*[tvm.runtime.tensor(a, self.device) for a in self._check_inputs(inputs)])
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return {name: v.numpy() for name, v in zip(self.output_names, values)}  # .numpy() copies back to the host

    __call__ = run

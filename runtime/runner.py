"""Load a verified artefact and run it on numpy arrays, by input and output name."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from bie_compiler.errors import ArtefactError, BieError

from .artefact import LIBRARY, WEIGHTS, VerifiedLibrary, read_manifest, verified_bytes
from .host import host_cpu, isa
from .progressive_precision import keep_top_planes
from .threads import configure_thread_pool
from .weights_file import unpack


def check_host(target: dict) -> tvm.runtime.Device:
    """The device to run on; refuses an artefact whose code needs a device or instructions this machine lacks."""
    if target.get("kind") not in ("llvm", "cuda", "bitvert"):
        raise ArtefactError(f"artefact was compiled for {target.get('kind')!r}; "
                            "this machine runs 'llvm', 'cuda' and 'bitvert' artefacts")
    missing = isa(target["mcpu"]) - isa(host_cpu())
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


ALIGNMENT = 64  # bytes; TVM's kernels assume it of every buffer (a misaligned one passed zero-copy crashes them)
BOUND_MAIN = "bie_main_bound"  # the VM's name of main with the staged inputs and the weights bound to it
IN_PLACE_BYTES = 1 << 16  # smaller inputs are copied into an aligned buffer: cheaper than checking their alignment


class InputSpec:
    """One input as the artefact declares it, prepared once so each call checks it cheaply."""

    def __init__(self, spec: dict):
        self.name = spec["name"]
        self.shape = spec["shape"]
        self.dtype = np.dtype(spec["dtype"])
        self.ndim = len(self.shape)
        self.fixed = [(axis, d) for axis, d in enumerate(self.shape) if isinstance(d, int)]
        # an index input: the kernels gather rows without bounds checks, so its values are checked here
        self.range = spec.get("range")

    def out_of_range(self, a: np.ndarray) -> str | None:
        low, high = self.range
        if a.size and (a.min() < low or a.max() >= high):
            return (f"input {self.name!r}: values must be in [{low}, {high}) (the rows of the table it indexes), "
                    f"got {a.min()}..{a.max()}")
        return None

    def accepts(self, a: np.ndarray) -> bool:
        if a.dtype != self.dtype or a.ndim != self.ndim:
            return False
        shape = a.shape
        for axis, d in self.fixed:
            if shape[axis] != d:
                return False
        return True


def aligned_empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data is 64-byte aligned (numpy's are 16-byte aligned)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)  # reshape keeps a 0-d shape 0-d


class StagedInput:
    """One input's way into the VM: in place when it is large, C-contiguous and aligned, else copied into
    an aligned buffer kept while the input's shape stays (callers hold the runner's lock)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.shape = None  # the buffer's, an accepted input's shape
        self.buffer_tensor = None
        self.bound_tensor = None  # the buffer main was last bound to (Runner._bind)

    def tensor(self, a: np.ndarray) -> tvm.runtime.Tensor:
        if a.nbytes >= IN_PLACE_BYTES and a.flags.c_contiguous and a.flags.writeable:  # no read-only DLPack export
            tensor = tvm_ffi.from_dlpack(a)  # unchecked: tvm.runtime.from_dlpack's check raises, which costs ~50 us
            if tensor.data_ptr() % ALIGNMENT == 0:
                return tensor
        if a.shape != self.shape:
            self.buffer = aligned_empty(a.shape, self.dtype)
            self.buffer_tensor = tvm_ffi.from_dlpack(self.buffer)
            self.shape = a.shape
        self.buffer[...] = a
        return self.buffer_tensor


class Runner:
    """A loaded artefact: ``runner({"x": array}) -> {"y": array}``.

    Safe to call from several threads: calls into the VM are serialized by a lock.
    One VM per thread would run calls concurrently, but each call's kernels already
    use every core of the thread pool, so concurrent calls would only oversubscribe
    the cores (and multiply the VM's workspace memory).
    """

    def __init__(self, artefact_dir: str | Path, expect_sha256: str | None = None, check_finite: bool = False,
                 planes: int | None = None):
        """``check_finite``: refuse inputs holding NaN or Inf, and outputs that are not finite though every
        input was (where the encoded kernels' arithmetic differs from onnxruntime's: see the README).
        ``planes``: keep only the top ``planes`` magnitude planes of every bie-bitplane layer (progressive
        precision: the same artefact, a coarser model)."""
        self.path = Path(artefact_dir)
        self.check_finite = check_finite
        self.manifest = read_manifest(self.path, verify_files=False, expect_sha256=expect_sha256)
        library = VerifiedLibrary(self.path, self.manifest)  # the bytes hashed are the bytes loaded
        for name in set(self.manifest["files"]) - {LIBRARY, WEIGHTS}:
            verified_bytes(self.path, self.manifest, name)
        # every offset, size and tANS stream checked before the code that reads them is loaded
        weights = unpack(verified_bytes(self.path, self.manifest, WEIGHTS), str(self.path / WEIGHTS),
                         self.manifest["weights"])
        self.device = check_host(self.manifest["target"])
        configure_thread_pool()
        if planes is not None:
            weights = keep_top_planes(weights, self.manifest["weights"]["progressive"], planes, self.path)
        self.weights = [tvm.runtime.tensor(w, self.device) for w in weights]  # what main takes after the inputs
        try:
            with library as path:
                lib = tvm.runtime.load_module(path)
            self.vm = relax.VirtualMachine(lib, self.device)
        except Exception as e:  # a library that passed the checksum but TVM cannot load
            raise ArtefactError(f"{self.path / LIBRARY}: TVM cannot load it: {str(e).strip().splitlines()[-1]}") from None
        at_load = self.manifest["weights"].get("at_load")
        if at_load:  # main's weights computed from the stored ones once (tANS streams decoded: tans --tans-execution)
            self.weights = list(self.vm[at_load](self.weights))
        self.inputs = self.manifest["inputs"]
        self.outputs = self.manifest["outputs"]
        self.input_names = [i["name"] for i in self.inputs]
        self.output_names = [o["name"] for o in self.outputs]
        self._specs = [InputSpec(spec) for spec in self.inputs]
        self._staged = [StagedInput(spec.dtype) for spec in self._specs]
        self._inputs = list(zip(self._specs, self._staged))
        self._names = {spec.name for spec in self._specs}
        self._main = self.vm["main"]  # each vm["main"] looks the function up again
        self._bound = None  # see _bind
        self._lock = threading.Lock()  # the VM keeps per-call state (registers, frames): one call at a time
        self._on_host = self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type()

    def _bind(self, args: list) -> None:
        """``main`` with ``args`` (every input's staging buffer, which stays while the shapes do) and the weights
        bound inside the VM: its call passes no arguments, where passing a hundred or more weights costs as much
        as a small model's kernels."""
        self.vm.save_function("main", BOUND_MAIN, *args, *self.weights)
        self._bound = self.vm[BOUND_MAIN]
        for staged, tensor in zip(self._staged, args):
            staged.bound_tensor = tensor

    def _input_error(self, inputs) -> BieError:
        if not isinstance(inputs, dict):
            return BieError(f"inputs: expected a dict by input name ({self.input_names}), got {type(inputs).__name__}")
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self._names]
        return BieError(f"inputs: expected {self.input_names}; missing {missing}, unexpected {extra}")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # One pass, no helper calls: on a small model this path costs as much as the model itself.
        if not isinstance(inputs, dict) or inputs.keys() != self._names:
            raise self._input_error(inputs)
        with self._lock:  # also over the staging buffers, and the outputs, which may be one of them
            args = []
            staged_all = self._on_host  # every input in its staging buffer: the bound main runs
            rebind = False  # a staging buffer main was not bound to
            for spec, staged in self._inputs:
                a = inputs[spec.name]
                if a.__class__ is not np.ndarray:
                    a = np.asarray(a)
                # the shape of the staging buffer was accepted: an input of that shape and dtype needs no more checks
                if (a.shape != staged.shape or a.dtype is not spec.dtype) and not spec.accepts(a):
                    raise BieError(f"input {spec.name!r}: expected {spec.dtype} {spec.shape}, got {a.dtype} {list(a.shape)}")
                if spec.range is not None and (problem := spec.out_of_range(a)):
                    raise BieError(problem)
                if self.check_finite and a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise BieError(f"input {spec.name!r} holds NaN or Inf (refused by check_finite: encoded kernels "
                                   "that skip zero weights do not propagate them as onnxruntime does)")
                if not self._on_host:
                    args.append(tvm.runtime.tensor(a if a.flags.c_contiguous else a.copy(), self.device))
                    continue
                tensor = staged.tensor(a)
                args.append(tensor)
                if tensor is not staged.buffer_tensor:
                    staged_all = False
                elif tensor is not staged.bound_tensor:
                    rebind = True
            try:
                if staged_all:
                    if rebind:
                        self._bind(args)
                    result = self._bound()
                else:
                    result = self._main(*args, *self.weights)
            except (tvm.error.InternalError, RuntimeError, ValueError, TypeError) as e:  # code and manifest disagree
                raise ArtefactError(f"{self.path}: running the artefact failed: {str(e).strip().splitlines()[-1][:300]}") from None
            # copied: an output may also be a VM constant, which the caller must not be able to change
            if not self._on_host:
                values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
                outputs = {name: v.numpy() for name, v in zip(self.output_names, values)}
            elif result.__class__ is tvm.runtime.Tensor:  # one output: no comprehension (a sixth of the call)
                outputs = {self.output_names[0]: np.from_dlpack(result).copy()}
            else:
                outputs = {name: np.from_dlpack(v).copy() for name, v in zip(self.output_names, result)}
        if self.check_finite:
            self._check_outputs(outputs)
        return outputs

    def _check_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        for name, value in outputs.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise BieError(f"output {name!r} is not finite though every input was: an intermediate sum "
                               "overflowed float32 (inputs too large in magnitude for the encoded kernels; see the "
                               "README on NaN and Inf)")

    __call__ = run

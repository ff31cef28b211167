"""Build here (no GPU needed) everything the GPU machine runs: artefacts, kernels, inputs and references.

The GPU machine gets TVM's runtime only (``TVM_USE_RUNTIME_LIB=1``; the
compiler library does not travel), so every module is compiled here and its
CUDA device code compiled by nvcc here too (a fatbin for sm_90, the same nvcc
call that ``tvm.support.nvcc`` makes at load time), stored by the SHA-256 of
the source that the runtime hands to ``tvm_callback_cuda_compile`` when it
loads the module (``run_on_device.py`` registers a callback that looks it up).

* ``art/<model>-<case>/``: every bundled model x every codec case of
  ``tests/test_cuda.py`` (and ``int8``, whose layers stay dense), built as the
  tests build them, plus ``check.npz``: the weights ``main`` takes after its
  inputs, inputs at batch 1 and 8 and the outputs of onnxruntime on the
  decoded-weights model (``parity.decoded_model``).
* ``bench/<N>x<K>/``: each codec of ``cuda_gemv.py``'s kernel (``kernel_for``)
  for N x K weights, with a real encoding of a block of rows (and, for ``bbs``,
  of K) that ``tiling`` stacks to the full size on the device; the activations
  at batch 16 and the block's reference outputs. Also the dense fp16 GEMV and
  the copy kernel of ``cuda_gemv.py``.
* ``tvm.tar.gz``: the tvm Python package without the compiler library.

    python benchmarks/gpu/prepare.py OUT_DIR [--shapes 4096x4096,8192x28672,28672x8192] [--only-bench]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests/, benchmarks/
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the helpers tests/test_cuda.py imports
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tvm  # noqa: E402
from tvm.support import nvcc  # noqa: E402

import tiling  # noqa: E402
from benchmarks import cuda_gemv  # noqa: E402
from bie_compiler import compile_model  # noqa: E402
from bie_compiler.codecs import CODECS, make_config  # noqa: E402
from bie_compiler.codegen import kernel_for  # noqa: E402
from bie_compiler.codegen.kernels import bitplane_cuda  # noqa: E402
from bie_compiler.codegen.target import make_target  # noqa: E402
from bie_compiler.frontend import load_model  # noqa: E402
from bie_compiler.parity import decoded_model, make_inputs, run_onnxruntime  # noqa: E402
from bie_compiler.report import LayerRecord  # noqa: E402
from bie_compiler.runtime.artefact import DEVICE_SOURCE, WEIGHTS  # noqa: E402
from bie_compiler.runtime.weights_file import unpack  # noqa: E402
from tests.test_cuda import KERNEL_CASES, MODELS  # noqa: E402

ARCH = "sm_90"
HOST_CPU = "x86-64-v3"  # the GPU machine's CPU is not this one: AVX2, no AVX-512/AMX in the host code
GENCODE = ["-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
BATCHES = (1, 8)
BENCH_BATCH = 16
BLOCK_ROWS = 64  # rows encoded for real per codec; the kernels see them stacked to N
BBS_BLOCK = (512, 4096)  # bbs: enough rows for its sensitive fraction (a multiple of 32 per layer), K stacked too
SEED = 0
TUNED = ("bie-bitplane 4-bit", "bie-binary bitmap")  # also timed with the look-up-table kernel's TUNINGS
TUNINGS = (bitplane_cuda.Tuning(), bitplane_cuda.WIDE_WARPS,  # those that tuning_for does not pick for the layer
           bitplane_cuda.Tuning(words_per_lane=4, words_at_once=32))


def fatbin(source: str, out: Path) -> None:
    """Compile the CUDA source as the runtime's nvcc path would, stored under its SHA-256."""
    path = out / "fatbin" / f"{hashlib.sha256(source.encode()).hexdigest()}.fatbin"
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tvm.target.Target({"kind": "cuda", "arch": ARCH}):
        path.write_bytes(bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=GENCODE, compiler="nvcc")))


def device_sources(lib) -> list[str]:
    pending, found = list(lib.imports), []
    while pending:
        module = pending.pop()
        if module.kind == "cuda":
            found.append(module.inspect_source())
        pending.extend(module.imports)
    return found


def artefacts(models: Path, out: Path) -> None:
    cases = {**KERNEL_CASES, "int8-dense": ("int8", {})}
    for model in MODELS:
        onnx_model = load_model(models / f"{model}.onnx")
        for case, (codec, options) in cases.items():
            path = out / "art" / f"{model}-{case}"
            t = time.time()
            compile_model(models / f"{model}.onnx", path, codec, options, target="cuda", arch=ARCH, mcpu=HOST_CPU,
                          min_weights=0, progress=None)
            manifest = json.loads((path / "manifest.json").read_text())
            reference = decoded_model(onnx_model, [LayerRecord.from_json(r) for r in manifest["layers"]])
            # the weights main takes after its inputs, checked here: the device has TVM's runtime only
            weights = unpack((path / WEIGHTS).read_bytes(), str(path / WEIGHTS), manifest["weights"])
            saved = {f"weights/{i}": w for i, w in enumerate(weights)}
            for batch in BATCHES:
                inputs = make_inputs(manifest["inputs"], batch=batch, seed=batch)
                saved.update({f"b{batch}/in/{k}": v for k, v in inputs.items()})
                saved.update({f"b{batch}/out/{i}": v for i, v in enumerate(run_onnxruntime(reference, inputs))})
            np.savez(path / "check.npz", **saved)
            fatbin((path / DEVICE_SOURCE).read_text(), out)
            (path / DEVICE_SOURCE).unlink()  # the fatbin stands for it; the source travels inside model.so
            print(f"{model}-{case}: {time.time() - t:.1f}s", flush=True)


def block_weights(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(5, (n, k)) * (rng.random((n, k)) > 0.5)).astype(np.float32)


def is_view(enc, constants) -> bool:
    """Whether ``constants`` are the encoding's arrays in order, each maybe viewed as another dtype."""
    return len(enc.arrays) == len(constants) and all(
        a.nbytes == c.nbytes and np.array_equal(a.view(c.dtype), c) for a, c in zip(enc.arrays.values(), constants))


def tiled_constants(full: list[np.ndarray], block: list[np.ndarray], copies: int):
    """[(the block's constant, axis)]: each of the full layer's constants is ``copies`` of the block's along
    ``axis`` (the channels' axis; -1: the same array); None if not."""
    found = []
    for f, b in zip(full, block, strict=True):
        axes = [a for a in range(b.ndim) if f.shape[a] != b.shape[a]]
        axis = axes[0] if axes else -1
        if len(axes) > 1 or not np.array_equal(f, b if axis < 0 else np.concatenate([b] * copies, axis=axis)):
            return None
        found.append((b, axis))
    return found


def bench(shapes: list[tuple[int, int]], out: Path) -> None:
    target = make_target("cuda", mcpu=HOST_CPU, arch=ARCH)
    index = {"batch": BENCH_BATCH, "shapes": []}

    def export(lib, path: Path) -> None:
        lib.export_library(str(path))
        for source in device_sources(lib):
            fatbin(source, out)

    (out / "bench").mkdir(parents=True, exist_ok=True)
    export(cuda_gemv.copy_module(target), out / "bench" / "copy.so")
    for n, k in shapes:
        folder = out / "bench" / f"{n}x{k}"
        folder.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(SEED).standard_normal((BENCH_BATCH, k)).astype(np.float32)
        np.save(folder / "x.npy", x)
        export(cuda_gemv.dense_fp16_module(target, n, k), folder / "dense_fp16.so")
        kernels = []
        for label, codec, options in cuda_gemv.CODECS:
            t = time.time()
            rows, cols = BBS_BLOCK if codec == "bbs" else (BLOCK_ROWS, k)
            module = CODECS[codec]
            block = module.encode(block_weights(rows, cols, n * 7 + k), make_config(codec, options))
            k_copies = k // cols
            full = tiling.stack(tiling.stack_k(block, k_copies) if k_copies > 1 else block, n // rows)
            call = kernel_for(full, target)
            name = label.replace(" ", "_").replace("%", "pct")
            saved = {f"block/{a}": v for a, v in block.arrays.items()}
            tiled = tiled_constants(call.constants, kernel_for(block, target).constants, n // rows) \
                if k_copies == 1 and not is_view(full, call.constants) else None
            if tiled is None:  # the kernel reads the encoding's arrays, some viewed as another dtype
                assert is_view(full, call.constants), label
            else:  # constants rewritten at compile time: the block's, stacked along their channel axis on the device
                saved.update({f"kernel/{i}": c for i, (c, _) in enumerate(tiled)})
            # outputs of the stacked weights: the block's, repeated; x's K copies summed first
            x_folded = x.reshape(BENCH_BATCH, k_copies, cols).sum(1).astype(np.float64)
            reference = x_folded @ module.decode(block).astype(np.float64).T
            np.savez(folder / f"{name}.npz", reference=reference, **saved)  # the same for every tuning
            funcs = {"": call.func}
            if label in TUNED:  # the look-up-table kernel's other tunings, over the same constants
                layout = bitplane_cuda.Layout(n, k, call.constants[0].shape[0] - 1, 0, 0, 1)  # bench: per channel
                assert call.constants[1].shape == (n, 1)
                funcs.update({f" [{t.channels_per_warp} ch/warp, {t.words_per_lane} words/lane]":
                              bitplane_cuda.matmul(layout, tuning=t) for t in TUNINGS
                              if t != bitplane_cuda.tuning_for(layout)})
            for suffix, func in funcs.items():
                variant = name + suffix.replace(" ", "_").replace("/", "_per_").replace(",", "").replace("[", "")\
                    .replace("]", "")
                export(tvm.compile(tvm.IRModule({"kernel": func.with_attr("global_symbol", "kernel")}), target).mod,
                       folder / f"{variant}.so")
                kernels.append({"label": label + suffix, "name": variant, "data": name, "codec": codec,
                                "block": [rows, cols],
                                "k_copies": k_copies, "copies": n // rows, "header": block.header,
                                "constants": [[a, c.dtype.name] for a, c in zip(full.arrays, call.constants)]
                                if tiled is None else [], "tile_axes": [axis for _, axis in tiled or []],
                                "constant_bytes": int(sum(c.nbytes for c in call.constants)),
                                "bits_per_weight": 8 * sum(c.nbytes for c in call.constants) / (n * k)})
            print(f"{n}x{k} {label}: {time.time() - t:.1f}s", flush=True)
        index["shapes"].append({"n": n, "k": k, "folder": folder.name, "kernels": kernels})
    (out / "bench" / "index.json").write_text(json.dumps(index, indent=1, default=int))


def runtime_package(out: Path) -> None:
    """tvm's Python package without libtvm_compiler.so and the headers (runtime-only mode needs neither)."""
    root = Path(tvm.__file__).parent
    skip = {"lib/libtvm_compiler.so", "3rdparty", "include", "src", "web", "lib64"}

    def keep(info: tarfile.TarInfo):
        rel = info.name.split("/", 1)[1] if "/" in info.name else ""
        return None if rel in skip or "__pycache__" in info.name else info

    with tarfile.open(out / "tvm.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="tvm", filter=keep)
    # the codecs (numpy) for stacking the blocks, without bie_compiler/__init__ (which imports the compiler)
    pkg = out / "pkg" / "bie_compiler"
    shutil.rmtree(pkg, ignore_errors=True)
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "bie_compiler" / "codecs", pkg / "codecs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "bie_compiler" / "errors.py", pkg / "errors.py")
    (pkg / "runtime").mkdir()  # the tANS coder's stream layout (numpy)
    for module in ("__init__.py", "tans_streams.py"):
        shutil.copy(repo / "runtime" / module, pkg / "runtime" / module)
    for script in ("run_on_device.py", "tiling.py", "device.sh"):
        shutil.copy(Path(__file__).resolve().parent / script, out / script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", type=Path, default=Path("models"), help="the bundled models' .onnx files")
    parser.add_argument("--shapes", default="4096x4096,8192x28672,28672x8192", help="N x K of the benchmark layers")
    parser.add_argument("--only-bench", action="store_true")
    args = parser.parse_args()
    if shutil.which("nvcc") is None:
        sys.exit("prepare.py needs nvcc on PATH (the device code is compiled here)")
    args.out.mkdir(parents=True, exist_ok=True)
    runtime_package(args.out)
    if not args.only_bench:
        artefacts(args.models, args.out)
    bench([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")], args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

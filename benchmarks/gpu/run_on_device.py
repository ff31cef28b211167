"""On the GPU machine: parity of every prepared artefact, then the kernel benchmarks (see prepare.py).

Runs with TVM's runtime only (``TVM_USE_RUNTIME_LIB=1``). The CUDA modules
hold their source; when one is loaded the runtime asks
``tvm_callback_cuda_compile`` for its binary, and the callback here returns
the fatbin that prepare.py compiled for that source (by SHA-256), or compiles
it with this machine's nvcc if there is none (reported as a miss).

A kernel that faults leaves the CUDA context unusable, so each section runs
in a child process that records one result per line and exits after the
first error; the parent starts a new child at the next item.

    python run_on_device.py PREPARED_DIR RESULTS_DIR [--budget-s 330]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

TOLERANCE = 1e-4  # parity.DEFAULT_TOLERANCE: relative to the largest reference output
FLUSH_BYTES = 256 * 2**20  # more than the L2 of any current GPU
COPY_BYTES = 2**30
GENCODE = ["-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda"]
MISSES: list[str] = []


def setup(prepared: Path):
    """Import tvm in runtime-only mode with the CUDA runtime library and the fatbin callback; the device."""
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    for pattern in ("/usr/local/cuda*/lib64/libcudart.so.13", "/usr/local/cuda*/targets/x86_64-linux/lib/libcudart.so.13",
                    f"{sys.prefix}/lib/python3*/site-packages/nvidia/cu13/lib/libcudart.so.13",
                    f"{sys.prefix}/lib/python3*/site-packages/nvidia/**/libcudart.so.13"):
        found = sorted(glob.glob(pattern, recursive=True))
        if found:
            ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)  # libtvm_runtime_cuda.so needs it by soname
            break
    import tvm
    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    for name in ("tvm_runtime_extra", "tvm_runtime_cuda"):  # loaded by the compiler's backends otherwise
        _LOADED_LIBS[name] = load_lib_ctypes(package="tvm", target_name=name, extra_lib_paths=[lib_dir],
                                             mode="RTLD_LOCAL")

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def compile_cached(code, *_):
        digest = hashlib.sha256(code.encode()).hexdigest()
        path = prepared / "fatbin" / f"{digest}.fatbin"
        if path.exists():
            return bytearray(path.read_bytes())
        MISSES.append(digest)
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "k.cu", Path(tmp) / "k.fatbin"
            src.write_text(code)
            subprocess.run(["nvcc", "--fatbin", *NVCC_FLAGS, *GENCODE, "-o", str(out), str(src)], check=True)
            return bytearray(out.read_bytes())

    # the codecs (numpy) without bie_compiler/__init__, which imports the TVM compiler
    package = types.ModuleType("bie_compiler")
    package.__path__ = [str(prepared / "pkg" / "bie_compiler")]
    sys.modules["bie_compiler"] = package
    sys.path.insert(0, str(prepared))
    device = tvm.cuda(0)
    if not device.exist:
        sys.exit("no CUDA device")
    return tvm, device


def rel_err(outputs, references) -> float:
    y = np.concatenate([np.asarray(o, np.float64).ravel() for o in outputs])
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in references])
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))


# ---------------------------------------------------------------- parity


def parity_items(prepared: Path) -> list[str]:
    return sorted(p.name for p in (prepared / "art").iterdir())


def parity_one(tvm, device, prepared: Path, name: str) -> dict:
    from tvm.runtime.vm import VirtualMachine

    folder = prepared / "art" / name
    manifest = json.loads((folder / "manifest.json").read_text())
    vm = VirtualMachine(tvm.runtime.load_module(str(folder / "model.so")), device)
    data = np.load(folder / "check.npz")
    weights = [tvm.runtime.tensor(data[f"weights/{i}"], device) for i in range(manifest["weights"]["tensors"])]
    row = {"artefact": name, "layers_on_gpu_kernels": len(manifest["device_code"]["layer_kernels"])}
    for batch in (1, 8):
        inputs = [tvm.runtime.tensor(data[f"b{batch}/in/{spec['name']}"], device) for spec in manifest["inputs"]]
        result = vm["main"](*inputs, *weights)
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        refs = [data[k] for k in sorted((k for k in data.files if k.startswith(f"b{batch}/out/")),
                                        key=lambda k: int(k.rsplit("/", 1)[1]))]
        row[f"rel_err_b{batch}"] = rel_err([v.numpy() for v in values], refs)
    row["passed"] = all(row[f"rel_err_b{b}"] <= TOLERANCE for b in (1, 8))
    return row


# ---------------------------------------------------------------- benchmarks


def evaluate(tvm, device, module, name, args, bytes_read: int) -> dict:
    """Median seconds of one call, cold (L2 flushed before each) and warm (back to back)."""
    once = module.time_evaluator(name, device, number=1, repeat=1)(*args).mean
    repeats = int(min(30, max(3, 0.4 / max(once, 1e-6))))
    cold = module.time_evaluator(name, device, number=1, repeat=repeats, cache_flush_bytes=FLUSH_BYTES)(*args).median
    warm = module.time_evaluator(name, device, number=repeats, repeat=3)(*args).median
    return {"cold_us": cold * 1e6, "warm_us": warm * 1e6, "bytes_read": bytes_read,
            "cold_GBps": bytes_read / cold / 1e9, "warm_GBps": bytes_read / warm / 1e9}


def torch_time(fn, bytes_read: int) -> dict:
    import torch

    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cold = []
    for _ in range(20):
        flush.zero_()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        cold.append(start.elapsed_time(end) * 1e-3)
    start.record()
    for _ in range(50):
        fn()
    end.record()
    torch.cuda.synchronize()
    warm = start.elapsed_time(end) * 1e-3 / 50
    cold = float(np.median(cold))
    return {"cold_us": cold * 1e6, "warm_us": warm * 1e6, "bytes_read": bytes_read,
            "cold_GBps": bytes_read / cold / 1e9, "warm_GBps": bytes_read / warm / 1e9}


def bench_items(prepared: Path) -> list[str]:
    index = json.loads((prepared / "bench" / "index.json").read_text())
    items = ["copy"]
    for shape in index["shapes"]:
        items += [f"{shape['folder']}/cublas", f"{shape['folder']}/dense_fp16"]
        items += [f"{shape['folder']}/{k['name']}" for k in shape["kernels"]]
    return items


def bench_one(tvm, device, prepared: Path, item: str) -> list[dict]:
    import torch

    index = json.loads((prepared / "bench" / "index.json").read_text())
    batch = index["batch"]
    if item == "copy":
        n = COPY_BYTES // 4
        src, dst = tvm.runtime.empty((n,), "float32", device), tvm.runtime.empty((n,), "float32", device)
        module = tvm.runtime.load_module(str(prepared / "bench" / "copy.so"))
        rows = [{"item": "copy (TVM)", **evaluate(tvm, device, module, "copy", [src, dst], 2 * COPY_BYTES)}]
        a, b = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
        rows.append({"item": "copy (torch copy_)", **torch_time(lambda: b.copy_(a), 2 * COPY_BYTES)})
        return rows
    folder, what = item.split("/")
    shape = next(s for s in index["shapes"] if s["folder"] == folder)
    n, k = shape["n"], shape["k"]
    x = np.load(prepared / "bench" / folder / "x.npy")
    common = {"n": n, "k": k}
    if what in ("cublas", "dense_fp16"):
        gen = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn((n, k), generator=gen, device="cuda", dtype=torch.float16)
        xs = torch.from_numpy(x).to("cuda", torch.float16)
        if what == "cublas":
            rows = []
            for m in (1, batch):
                xm = xs[:m].contiguous()
                rows.append({"item": "dense fp16 (cuBLAS, torch)", "batch": m, **common,
                             **torch_time(lambda: torch.nn.functional.linear(xm, w), n * k * 2 + m * k * 2 + m * n * 2)})
            return rows
        module = tvm.runtime.load_module(str(prepared / "bench" / folder / "dense_fp16.so"))
        args = [tvm.runtime.from_dlpack(xs[:1].contiguous()), tvm.runtime.from_dlpack(w),
                tvm.runtime.empty((1, n), "float32", device)]
        module["gemv"](*args)
        ref = torch.nn.functional.linear(xs[:1].float(), w.float()).cpu().numpy()
        err = rel_err([args[2].numpy()], [ref])
        return [{"item": "dense fp16 (TVM dlight GEMV)", "batch": 1, **common, "rel_err": err, "passed": err < 1e-3,
                 **evaluate(tvm, device, module, "gemv", args, n * k * 2 + k * 2 + n * 4)}]
    import tiling
    from bie_compiler.codecs.base import Encoded

    spec = next(s for s in shape["kernels"] if s["name"] == what)
    data = np.load(prepared / "bench" / folder / f"{spec['data']}.npz")
    if spec["tile_axes"]:  # constants rewritten at compile time: the block's, stacked along the channels
        constants = [data[f"kernel/{i}"] if axis < 0 else np.concatenate([data[f"kernel/{i}"]] * spec["copies"], axis)
                     for i, axis in enumerate(spec["tile_axes"])]
    else:
        block = Encoded(spec["codec"], tuple(spec["block"]), {a: data[f"block/{a}"] for a, _ in spec["constants"]},
                        spec["header"])
        full = tiling.stack(tiling.stack_k(block, spec["k_copies"]) if spec["k_copies"] > 1 else block,
                            spec["copies"])
        constants = [full.arrays[a].view(dtype) for a, dtype in spec["constants"]]
    constants = [tvm.runtime.tensor(c, device) for c in constants]
    module = tvm.runtime.load_module(str(prepared / "bench" / folder / f"{what}.so"))
    reference = np.tile(data["reference"], (1, spec["copies"]))
    rows = []
    for m in (1, batch):
        args = [tvm.runtime.tensor(x[:m], device), *constants, tvm.runtime.empty((m, n), "float32", device)]
        module["kernel"](*args)
        err = rel_err([args[-1].numpy()], [reference[:m]])
        rows.append({"item": spec["label"], "codec": spec["codec"], "batch": m, **common,
                     "bits_per_weight": spec["bits_per_weight"], "rel_err": err, "passed": err <= TOLERANCE,
                     **evaluate(tvm, device, module, "kernel", args, spec["constant_bytes"] + x[:m].nbytes + m * n * 4)})
        if spec["codec"] == "tans" and m == 1:
            rows[-1]["Gsym_per_s"] = n * k / (rows[-1]["cold_us"] * 1e-6) / 1e9
    return rows


# ---------------------------------------------------------------- driver


SETUP_FAILED = 4
SECTIONS = {"parity": (parity_items, lambda *a: [parity_one(*a)]), "bench": (bench_items, bench_one)}


def selected(items: list[str], match: str) -> list[str]:
    return [i for i in items if not match or any(m in i for m in match.split(","))]


def child(prepared: Path, results: Path, section: str, start: int, deadline: float, match: str) -> int:
    try:
        tvm, device = setup(prepared)
    except Exception as e:  # noqa: BLE001 - nothing can run: the parent stops
        print(f"[{section}] setup failed: {type(e).__name__}: {e}", flush=True)
        return SETUP_FAILED
    items_of, run = SECTIONS[section]
    items = selected(items_of(prepared), match)
    with open(results / f"{section}.jsonl", "a") as log:
        for i in range(start, len(items)):
            if time.time() > deadline:
                log.write(json.dumps({"item": items[i], "skipped": "out of time budget"}) + "\n")
                continue
            t = time.time()
            try:
                rows = run(tvm, device, prepared, items[i])
            except Exception as e:  # noqa: BLE001 - recorded, and the context may be unusable: a new child goes on
                log.write(json.dumps({"item": items[i], "index": i, "error": f"{type(e).__name__}: {e}"[:2000]}) + "\n")
                log.flush()
                print(f"[{section}] {items[i]}: ERROR {e}"[:600], flush=True)
                return 3
            for row in rows:
                row.update(index=i, seconds=round(time.time() - t, 2), nvcc_misses=len(MISSES))
                log.write(json.dumps(row) + "\n")
                print(f"[{section}] {json.dumps(row)}", flush=True)
            log.flush()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting new items after this")
    parser.add_argument("--sections", default="parity,bench")
    parser.add_argument("--match", default="", help="only the items whose name contains one of these (comma-separated)")
    parser.add_argument("--child", nargs=3, metavar=("SECTION", "START", "DEADLINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args.prepared, args.results, args.child[0], int(args.child[1]), float(args.child[2]), args.match)
    deadline = time.time() + args.budget_s
    for section in args.sections.split(","):
        (args.results / f"{section}.jsonl").touch()
        start = 0
        while True:
            code = subprocess.call([sys.executable, __file__, str(args.prepared), str(args.results),
                                    "--match", args.match, "--child", section, str(start), str(deadline)])
            if code == SETUP_FAILED:
                return 1
            if code == 0:
                break
            log = args.results / f"{section}.jsonl"
            done = max((json.loads(line).get("index", -1) for line in log.read_text().splitlines()), default=-1)
            if done < start:  # the child died inside an item without a word (a crash, not an exception)
                with open(log, "a") as f:
                    f.write(json.dumps({"index": start, "error": f"the process died (exit {code})"}) + "\n")
                done = start
            start = done + 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

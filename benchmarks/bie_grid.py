"""The BIE paper's benchmark grid: every BIE codec against dense, quantized and sparse baselines.

Matrix sizes 256x256 to 2048x1024, magnitude sparsity 0 to 95 %, trained-like weights (heavy-tailed,
per-channel scales, as models/common.py makes them). For each cell and method, over ``--runs`` weight draws:
compression ratio against fp32 (every stored byte counted), reconstruction error of the decoded weights
(MSE, MAE, RMSE, max), encode time, the matrix-vector time at batch 1 (our kernels compiled with TVM,
the baselines with numpy / scipy.sparse), and the runtime bytes each method keeps resident. Each figure
is a mean with a 95 % confidence interval (Student t over the runs). Writes CSV (and PNG plots when
matplotlib is installed: `make bench-grid` installs it) and prints the table.

    .venv/bin/python benchmarks/bie_grid.py [--runs 10] [--out benchmarks/results/bie_grid]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SIZES = [(256, 256), (512, 512), (1024, 1024), (2048, 1024)]  # N x K
SPARSITIES = [0.0, 0.5, 0.7, 0.9, 0.95]
T95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}  # two-sided t, n - 1 dof


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="weight draws per cell (confidence intervals over them)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bie_grid")
    p.add_argument("--quick", action="store_true", help="two sizes, three sparsities, 3 runs (a smoke test)")
    p.add_argument("--json", type=Path, help="write every figure here")
    return p.parse_args()


def weight(n: int, k: int, sparsity: float, seed: int) -> np.ndarray:
    from bie_compiler.models.common import layer_rng, trained_weight

    return trained_weight(layer_rng(seed, f"grid{n}x{k}"), (n, k), fan_in=k, out_axis=0, sparsity=sparsity)


def per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Symmetric per-channel uniform quantization (the paper's 4-/8-bit baselines): decoded and stored bytes."""
    top = 2 ** (bits - 1) - 1
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-30) / top
    q = np.clip(np.rint(w / scale), -top, top)
    return (q * scale).astype(np.float32), w.size * bits // 8 + 4 * w.shape[0]


def baselines(w: np.ndarray) -> dict:
    """name -> (decoded weight, stored bytes, matvec(x) -> y, resident bytes)."""
    import scipy.sparse as sp

    out = {"fp32": (w, w.nbytes, lambda x: w @ x, w.nbytes)}
    w16 = w.astype(np.float16)
    out["fp16"] = (w16.astype(np.float32), w16.nbytes, lambda x: w16 @ x.astype(np.float16), w16.nbytes)
    for bits in (8, 4):
        decoded, stored = per_channel(w, bits)
        codes = np.rint(decoded / np.maximum(np.abs(decoded).max(1, keepdims=True), 1e-30) * (2 ** (bits - 1) - 1))
        codes = codes.astype(np.int8)
        scale = (np.abs(decoded).max(1) / (2 ** (bits - 1) - 1)).astype(np.float32)
        out[f"int{bits}"] = (decoded, stored, lambda x, c=codes, s=scale: (c @ x) * s, stored)
    for name, fmt in (("csr", sp.csr_matrix), ("coo", sp.coo_matrix)):
        m = fmt(w)
        stored = m.data.nbytes + sum(getattr(m, a).nbytes for a in ("indices", "indptr", "row", "col") if hasattr(m, a))
        out[name] = (w, stored, lambda x, m=m: m @ x, stored)
    return out


OURS = {  # label -> (codec, options)
    "bie-binary": ("bie-binary", {}),
    "bie-binary index": ("bie-binary", {"layout": "index"}),
    "bie-blocked": ("bie-blocked", {}),
    "bie-bitplane 4": ("bie-bitplane", {"bits": 4}),
    "bie-bitplane 8": ("bie-bitplane", {"bits": 8}),
}


def ours(w: np.ndarray, threads: int) -> dict:
    """Our codecs: encode (timed), decode, and the batch-1 kernel compiled with TVM."""
    import tvm

    from bie_compiler import codecs
    from bie_compiler.codegen import kernel_for
    from bie_compiler.codegen.target import make_target

    target = make_target("llvm")
    out = {}
    for label, (codec, options) in OURS.items():
        module = codecs.get_codec(codec)
        started = time.perf_counter()
        enc = module.encode(w, codecs.make_config(codec, options))
        encode_s = time.perf_counter() - started
        call = kernel_for(enc, target)
        kernel = tvm.compile(tvm.IRModule({"main": call.func.with_attr("global_symbol", "main")}), target).mod["main"]
        dev = tvm.cpu()
        consts = [tvm.runtime.tensor(c, dev) for c in call.constants]
        y = tvm.runtime.empty((1, w.shape[0]), "float32", dev)

        def matvec(x, kernel=kernel, consts=consts, y=y, inputs={}):
            if id(x) not in inputs:  # converted once, as the baselines take numpy arrays as they are
                inputs[id(x)] = tvm.runtime.tensor(x[None, :], dev)
            kernel(inputs[id(x)], *consts, y)
            return y

        resident = sum(int(c.nbytes) for c in call.constants)
        out[label] = (module.decode(enc), enc.nbytes, matvec, resident, encode_s)
    return out


def mean_ci(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    return statistics.mean(values), T95.get(len(values), 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def run(args: argparse.Namespace) -> dict:
    sizes, sparsities, runs = (SIZES[:2], [0.0, 0.5, 0.9], 3) if args.quick else (SIZES, SPARSITIES, args.runs)
    rows = []
    for n, k in sizes:
        for sparsity in sparsities:
            samples: dict[str, dict[str, list[float]]] = {}
            for seed in range(runs):
                w = weight(n, k, sparsity, seed)
                x = np.random.default_rng(seed).standard_normal(k).astype(np.float32)
                methods = {name: (*v, 0.0) for name, v in baselines(w).items()}
                methods.update(ours(w, args.threads))
                for name, (decoded, stored, matvec, resident, encode_s) in methods.items():
                    err = decoded - w
                    s = samples.setdefault(name, {})
                    for metric, value in (
                        ("compression", w.nbytes / stored), ("bits_per_weight", 8 * stored / w.size),
                        ("mse", float(np.mean(err ** 2))), ("mae", float(np.mean(np.abs(err)))),
                        ("rmse", float(np.sqrt(np.mean(err ** 2)))), ("max_err", float(np.abs(err).max())),
                        ("encode_ms", 1e3 * encode_s), ("resident_kib", resident / 1024),
                        ("matvec_us", 1e6 * common.median_seconds(lambda: matvec(x), 20, 5)),
                    ):
                        s.setdefault(metric, []).append(value)
            for name, metrics in samples.items():
                row = {"n": n, "k": k, "sparsity": sparsity, "method": name, "runs": runs}
                for metric, values in metrics.items():
                    row[metric], row[f"{metric}_ci95"] = mean_ci(values)
                rows.append(row)
            print(f"{n}x{k} sparsity {sparsity:.0%}: done", file=sys.stderr, flush=True)
    write(rows, args.out)
    return {"rows": rows}


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (make bench-grid installs it)", file=sys.stderr)
        return
    largest = max((r["n"], r["k"]) for r in rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and (r["n"], r["k"]) == largest]
        xs = [100 * r["sparsity"] for r in mine]
        for ax, metric in zip(axes, ("compression", "matvec_us", "rmse")):
            ax.errorbar(xs, [r[metric] for r in mine], yerr=[r[f"{metric}_ci95"] for r in mine], label=method,
                        marker="o", capsize=3)
    for ax, title in zip(axes, ("compression vs fp32", "matrix-vector time (us)", "RMSE of decoded weights")):
        ax.set_title(f"{title}, {largest[0]}x{largest[1]}")
        ax.set_xlabel("sparsity (%)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "grid.png", dpi=110)


def report(res: dict) -> None:
    rows = res["rows"]
    print(f"{'size':>10} {'sparsity':>8} {'method':<17} {'ratio':>7} {'b/w':>6} {'matvec us':>16} {'RMSE':>10} "
          f"{'max err':>9} {'encode ms':>10} {'KiB':>8}")
    for r in rows:
        print(f"{r['n']}x{r['k']:<5} {r['sparsity']:>8.0%} {r['method']:<17} {r['compression']:>7.2f} "
              f"{r['bits_per_weight']:>6.2f} {r['matvec_us']:>8.1f} +-{r['matvec_us_ci95']:<6.1f} {r['rmse']:>10.2e} "
              f"{r['max_err']:>9.2e} {r['encode_ms']:>10.2f} {r['resident_kib']:>8.1f}")


if __name__ == "__main__":
    common.main(parse_args, run, report)

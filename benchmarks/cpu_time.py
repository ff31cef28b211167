"""On-CPU time per call of artefacts and of onnxruntime, one thread each, interleaved in one process.

On a machine shared with other jobs, wall-clock medians mostly measure how long
each side waited for a core: the ratios of ``bench`` swing by 2x between runs.
The CPU time a single-threaded call consumes leaves the waiting out (what is
left of the other jobs is their share of the caches and of memory bandwidth),
so it compares kernels and artefacts of one model there. It says nothing about
two threads, which only a quiet machine can measure (``models_speed.py``).

Each side runs ``--calls`` calls per block, blocks interleaved over all sides
``--blocks`` times, after a warm-up; reported: the 10th percentile and the
median of the blocks' CPU time per call, and each artefact's ratio to
onnxruntime (10th percentiles). Inputs are seeded normal samples of the given
shape; the model is the one the first artefact was compiled from, or ``--model``. With ``--cold-cache``,
each call is preceded, outside its timing, by ``bench``'s cache flush (twice the last-level cache
rewritten from every core), so every side reads its weights from memory.

    python benchmarks/cpu_time.py ART [ART ...] --input x:1x1x384 [--model M.onnx] [--calls 20] [--blocks 30]
                                  [--cold-cache] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artefacts", nargs="+", type=Path, help="artefact folders (of one model)")
    p.add_argument("--input", action="append", required=True, metavar="NAME:AxB",
                   help="an input's shape, e.g. x:1x1x384 (repeatable)")
    p.add_argument("--model", type=Path, help="the .onnx onnxruntime runs (default: the first artefact's source)")
    p.add_argument("--calls", type=int, default=20, help="calls per timed block (default %(default)s)")
    p.add_argument("--blocks", type=int, default=30, help="timed blocks per side (default %(default)s)")
    p.add_argument("--cold-cache", action="store_true", help="the caches flushed before each call (untimed)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    args.threads = 1
    return args


def run(args: argparse.Namespace) -> dict:
    import bie_compiler
    from bie_compiler.bench import cache_flush_bytes
    from bie_compiler.bench_worker import CacheFlush

    rng = np.random.default_rng(0)
    feeds = {}
    for spec in args.input:
        name, _, dims = spec.partition(":")
        feeds[name] = rng.standard_normal([int(d) for d in dims.split("x")]).astype(np.float32)
    model = args.model or Path(json.loads((args.artefacts[0] / "manifest.json").read_text())["source_model"]["path"])
    session = common.ort_session(model.read_bytes(), threads=1)
    sides = {str(a): (lambda r=bie_compiler.load(a): r(feeds)) for a in args.artefacts}
    sides["onnxruntime"] = lambda: session.run(None, feeds)
    for call in sides.values():
        deadline = time.perf_counter() + common.WARMUP_SECONDS
        while time.perf_counter() < deadline:
            call()
    flush_bytes = cache_flush_bytes()[0] if args.cold_cache else 0
    flush = CacheFlush(flush_bytes, len(os.sched_getaffinity(0))) if flush_bytes else (lambda: None)
    times = {name: [] for name in sides}
    for _ in range(args.blocks):
        for name, call in sides.items():
            spent = 0.0
            for _ in range(args.calls):  # each call timed alone: the flush before it stays outside
                flush()
                start = time.process_time()
                call()
                spent += time.process_time() - start
            times[name].append(spent / args.calls)
    ort_p10 = float(np.percentile(times["onnxruntime"], 10))
    return {"model": str(model), "inputs": {k: list(v.shape) for k, v in feeds.items()}, "flush_bytes": flush_bytes,
            "sides": {name: {"p10_ms": float(np.percentile(t, 10)) * 1e3, "median_ms": float(np.median(t)) * 1e3,
                             "ratio_p10": float(np.percentile(t, 10)) / ort_p10} for name, t in times.items()}}


def report(res: dict) -> None:
    cache = f"cold cache ({res['flush_bytes'] / 2**20:.0f} MiB rewritten before each call)" if res["flush_bytes"] else "warm"
    print(f"{res['model']}, inputs {res['inputs']}: CPU time per call, 1 thread, {cache}")
    for name, side in res["sides"].items():
        print(f"{name:48s} p10 {side['p10_ms']:8.3f} ms  median {side['median_ms']:8.3f} ms  "
              f"ratio {side['ratio_p10']:.2f}")


if __name__ == "__main__":
    common.main(parse_args, run, report)

"""One encoded matmul above one row against onnxruntime's fp32 MatMul: the panel GEMM at prompt-like row counts.

A model of one MatMul, x [m, K] @ W [K, N] (heavy-tailed random W; default the MiniLM-shaped encoder's FFN,
384 x 1536), compiled dense (``--skip '*'``) and with the codec settings ``--variants`` names (default ``bbs``
moderate, ``bie-bitplane --bits 4`` and ``int8``; ``--variants all``: every setting in ``VARIANTS``).
In one process, with the same thread count and no idle spinning on either side, single calls of every
artefact and of onnxruntime are interleaved at each row count (after a warm-up); ratio = median artefact /
median onnxruntime (> 1: slower). Also each artefact's largest error relative to onnxruntime on the model
(the codec's rounding, for the encoded ones). ``--cpu-time`` times the process's CPU time instead of the wall
clock, with one thread (on a shared machine the wait for a core is left out; several threads' CPU time would add up).
Also each artefact's weight bytes as stored and as resident after its load (constants computed at load, e.g.
``tans`` or ``bie-blocked`` decoded into the look-up-table words, replace the stored ones), and its load time
(median of LOADS interleaved loads, wall clock).

    python benchmarks/gemm_speed.py [--k 384] [--n 1536] [--rows 8 16 64 128] [--repeat 40] [--threads 2]
                                    [--variants NAME ... | all] [--cpu-time] [--artefacts out/gemm_speed]
                                    [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DENSE = ("dense", "bie-bitplane", {}, ("*",))  # (name, codec, options, skip): every layer left dense
VARIANTS = [  # (name, codec, options, skip): the codec settings that compile for a plain MatMul
    ("bbs", "bbs", {"preset": "moderate"}, ()),
    ("bie-bitplane-4", "bie-bitplane", {"bits": 4}, ()),
    ("int8", "int8", {}, ()),
    ("tans", "tans", {}, ()),  # 15 levels, --tans-execution load
    ("bie-bitplane-2", "bie-bitplane", {"bits": 2}, ()),
    ("bie-bitplane-3", "bie-bitplane", {"bits": 3}, ()),
    ("bie-bitplane-4-g32", "bie-bitplane", {"bits": 4, "group_size": 32}, ()),
    ("bbs-conservative", "bbs", {"preset": "conservative"}, ()),  # 6 kept columns: the fp32 tables' layout
    ("bbs-fp32", "bbs", {"preset": "moderate", "lut_tables": "fp32"}, ()),
    ("bie-bitplane-4-fp32", "bie-bitplane", {"bits": 4, "lut_tables": "fp32"}, ()),
    ("tans-fp32", "tans", {"lut_tables": "fp32"}, ()),
    ("bitwave", "bitwave", {}, ()),
    ("bie-binary", "bie-binary", {}, ()),
    ("bie-binary-index", "bie-binary", {"layout": "index"}, ()),  # auto picks the bitmap at the default density
    ("bie-blocked", "bie-blocked", {}, ()),  # --blocked-execution auto: load at the default density
    ("bie-blocked-stream", "bie-blocked", {"blocked_execution": "stream"}, ()),
    ("nwc", "nwc", {}, ()),
]
DEFAULT_VARIANTS = ["bbs", "bie-bitplane-4", "int8"]
WARMUP_CALLS = 5
LOADS = 5  # loads of each artefact, interleaved, for its load time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=384, help="input features (default %(default)s)")
    p.add_argument("--n", type=int, default=1536, help="output features (default %(default)s)")
    p.add_argument("--rows", type=int, nargs="+", default=[8, 16, 64, 128], help="row counts m")
    p.add_argument("--repeat", type=int, default=40, help="timed calls of each side per row count")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                   choices=[name for name, *_ in VARIANTS] + ["all"],
                   help="codec settings to compile besides dense (default %(default)s; all: every one)")
    p.add_argument("--cpu-time", action="store_true", help="CPU time instead of wall clock (sets --threads 1)")
    p.add_argument("--artefacts", type=Path, default=ROOT / "out" / "gemm_speed", help="where artefacts go")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.cpu_time:
        args.threads = 1
    if "all" in args.variants:
        args.variants = [name for name, *_ in VARIANTS]
    return args


def matmul_model(k: int, n: int) -> onnx.ModelProto:
    w = (np.random.default_rng(0).standard_t(4, (k, n)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(args) -> dict:
    import bie_compiler

    args.artefacts.mkdir(parents=True, exist_ok=True)
    model_path = args.artefacts / f"matmul_{args.k}x{args.n}.onnx"
    onnx.save(matmul_model(args.k, args.n), model_path)
    runners, folders = {}, {}
    for name, codec, options, skip in [DENSE] + [v for v in VARIANTS if v[0] in args.variants]:
        folders[name] = args.artefacts / f"{args.k}x{args.n}-{name}"
        bie_compiler.compile_model(model_path, folders[name], codec, options, skip=skip, progress=None)
        runners[name] = bie_compiler.load(folders[name])
    weights = weight_memory(runners, folders)
    session = common.ort_session(model_path.read_bytes(), args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    rows = []
    for m in args.rows:
        feeds = {"x": np.random.default_rng(m).standard_normal((m, args.k)).astype(np.float32)}
        want = session.run(None, feeds)[0]
        calls = {name: (lambda r=r: r(feeds)) for name, r in runners.items()}
        calls["onnxruntime"] = lambda: session.run(None, feeds)
        errors = {name: float(np.abs(list(r(feeds).values())[0] - want).max() / np.abs(want).max())
                  for name, r in runners.items()}
        for _ in range(WARMUP_CALLS):
            for call in calls.values():
                call()
        times = {name: [] for name in calls}
        for _ in range(args.repeat):
            for name, call in calls.items():
                start = clock()
                call()
                times[name].append(clock() - start)
        ort_ms = statistics.median(times["onnxruntime"]) * 1e3
        row = {"rows": m, "ort_ms": ort_ms,
               "ratio": {name: statistics.median(times[name]) * 1e3 / ort_ms for name in runners},
               "max_rel_err": errors}
        rows.append(row)
        print(line(row), flush=True)
    return {"k": args.k, "n": args.n, "threads": args.threads, "repeat": args.repeat,
            "clock": "cpu" if args.cpu_time else "wall", "rows": rows, "weights": weights}


def weight_memory(runners: dict, folders: dict) -> dict:
    """Per artefact: its weights' MiB as stored and as resident after load, and its load time (ms)."""
    import bie_compiler

    loads = {name: [] for name in folders}
    for _ in range(LOADS):
        for name, folder in folders.items():
            start = time.perf_counter()
            bie_compiler.load(folder)
            loads[name].append(time.perf_counter() - start)
    resident = {name: sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in r.weights)
                for name, r in runners.items()}
    return {name: {"stored_mib": r.manifest["weights"]["bytes"] / 2**20, "resident_mib": resident[name] / 2**20,
                   "load_ms": statistics.median(loads[name]) * 1e3} for name, r in runners.items()}


def line(row: dict) -> str:
    return f"m={row['rows']:<5d} onnxruntime {row['ort_ms']:7.3f} ms  " + "  ".join(
        f"{name} {ratio:.2f}" for name, ratio in row["ratio"].items())


def report(res: dict) -> None:
    print(f"\n{res['k']} x {res['n']}, {res['threads']} threads, {res['clock']} clock, medians of {res['repeat']} "
          "interleaved calls; "
          "ratio to onnxruntime fp32 (> 1: slower); largest error relative to onnxruntime:")
    for name in res["rows"][0]["max_rel_err"]:
        print(f"  {name}: {max(r['max_rel_err'][name] for r in res['rows']):.1e}")
    print(f"weights, MiB stored / resident after load, and load time (median of {LOADS}):")
    for name, w in res["weights"].items():
        print(f"  {name}: {w['stored_mib']:.2f} / {w['resident_mib']:.2f} MiB, {w['load_ms']:.1f} ms")


if __name__ == "__main__":
    common.main(parse_args, run, report)

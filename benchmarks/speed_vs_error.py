"""Speed against error, per model: every codec setting's latency at batch 1 and 8 next to its fidelity.

Each setting is compiled as ``bie-compiler compile`` compiles it and timed by ``bie-compiler bench`` against
onnxruntime fp32 on the same inputs and threads (interleaved, medians); its fidelity is ``analyze``'s (the
decoded-weights model against fp32 on the model's data: output relative L2, cosine and the task figure).
onnxruntime's weight-only modes are points too: ``MatMulNBits`` 4-bit and 8-bit (block 32, RTN, accuracy
level 4: its int8-activation path, the fastest), timed against fp32 in the same interleaved way. Writes
``speed_vs_error.json``, ``.csv`` and ``.png`` (one panel per batch: latency / onnxruntime fp32 against
output relative L2) into ``--out``.

    python benchmarks/speed_vs_error.py MODEL [--data D] [--compile-options "..."] [--batches 1 8] [-o DIR]
    python benchmarks/speed_vs_error.py --zoo minilm -o DIR    # a zoo entry: its data and compile options

MODEL without ``--data`` is measured on seeded random inputs (fine for speed; say so when quoting the error).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ort_session  # noqa: E402
from zoo_results import CODECS, DENSE, compiled, timed  # noqa: E402

from bie_compiler import zoo  # noqa: E402
from bie_compiler.analysis import CodecSpec, ModelUnderAnalysis  # noqa: E402
from bie_compiler.evaluation import load_samples  # noqa: E402
from bie_compiler.frontend import load_model, model_inputs  # noqa: E402
from bie_compiler.ort_reference import matmul_nbits, nbits_bytes  # noqa: E402
from bie_compiler.parity import make_inputs  # noqa: E402

NBITS = [4, 8]  # onnxruntime MatMulNBits widths shown as points (block 32)
NBITS_BLOCK = 32
FIGURES = ("bits_per_weight", "rel_l2", "cosine", "task_metric", "task")  # a point's fidelity, as analyze's


def batch_of(specs: list[dict], sample: dict, rows: int) -> dict | None:
    """``rows`` rows of each input whose batch dimension is free (the sample's rows repeated as needed); None
    when the model fixes its batch to another size."""
    out = {}
    for spec in specs:
        value = sample[spec["name"]]
        if not isinstance(spec["shape"][0], str):
            if spec["shape"][0] != rows:
                return None
            out[spec["name"]] = value
            continue
        repeats = -(-rows // value.shape[0])
        out[spec["name"]] = np.concatenate([value] * repeats)[:rows]
    return out


def ort_ratio(model: onnx.ModelProto, fp32: onnx.ModelProto, inputs: dict, threads: int, repeat: int) -> dict:
    """Median latency of ``model`` over ``fp32``'s in onnxruntime, the two interleaved, same threads."""
    sessions = {"model": ort_session(model.SerializeToString(), threads),
                "fp32": ort_session(fp32.SerializeToString(), threads)}
    times = {label: [] for label in sessions}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, inputs)
    for i in range(repeat):
        for label in ("model", "fp32") if i % 2 == 0 else ("fp32", "model"):
            start = time.perf_counter()
            sessions[label].run(None, inputs)
            times[label].append(time.perf_counter() - start)
    model_ms, fp32_ms = (1e3 * float(np.median(times[k])) for k in ("model", "fp32"))
    return {"ratio": model_ms / fp32_ms, "ms": model_ms, "onnxruntime_ms": fp32_ms}


def measure(model_path: Path, samples: list, compile_options: list[str], specs: list[CodecSpec], batches: list[int],
            threads: int, repeat: int, progress) -> list[dict]:
    model = load_model(model_path)
    inputs = {b: batch_of(model_inputs(model), samples[0][1], b) for b in batches}
    subject = ModelUnderAnalysis(model_path, samples, progress=progress)
    points = [{"label": "onnxruntime fp32", "kind": "reference", "bits_per_weight": 32.0, "rel_l2": 0.0,
               "cosine": 1.0, "speed": {b: {"ratio": 1.0} for b in batches if inputs[b] is not None}}]
    with tempfile.TemporaryDirectory(prefix="speed-vs-error-") as work:
        for spec in [DENSE, *specs]:
            progress(f"{spec.label}: fidelity")
            fidelity = {"bits_per_weight": 32.0, "rel_l2": 0.0, "cosine": 1.0} if spec is DENSE else \
                {k: subject.point(spec, False).get(k) for k in FIGURES}
            point = {"label": f"bie-compiler {spec.label}", "kind": "artefact", **fidelity, "speed": {}}
            progress(f"{spec.label}: compiling")
            artefact, failure = compiled(model_path, compile_options, spec, Path(work))
            for b in batches:
                if artefact is None:
                    point["speed"][b] = {"failed": failure}
                elif inputs[b] is None:
                    point["speed"][b] = {"failed": f"the model fixes its batch (not {b})"}
                else:
                    progress(f"{spec.label}: timing at batch {b}")
                    point["speed"][b] = timed(artefact, inputs[b], threads, repeat)
            points.append(point)
    usable = {r.name: r.bytes_dense for r in subject.layers if r.fallback_reason is None}
    count = sum(r.num_weights for r in subject.layers)  # bits/weight over every weight layer, as analyze counts
    dense_rest = sum(r.bytes_dense for r in subject.layers if r.name not in usable)
    for bits in NBITS:
        label = f"onnxruntime MatMulNBits {bits}-bit block {NBITS_BLOCK}"
        quantized, why = matmul_nbits(model, bits, NBITS_BLOCK, accuracy_level=4)
        if quantized is None:
            points.append({"label": label, "kind": "reference", "skipped": why})
            continue
        progress(f"{label}: fidelity and timing")
        scored = subject.bench.point(quantized)
        stored = nbits_bytes(quantized, bits, usable) + dense_rest
        points.append({"label": label, "kind": "reference", **{k: scored.get(k) for k in FIGURES},
                       "bits_per_weight": 8 * stored / count,
                       "speed": {b: ort_ratio(quantized, model, inputs[b], threads, repeat)
                                 for b in batches if inputs[b] is not None}})
    return points


def write(points: list[dict], batches: list[int], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed_vs_error.json").write_text(json.dumps({"model": title, "points": points}, indent=1))
    with open(out / "speed_vs_error.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "bits_per_weight", "rel_l2", "cosine", "task_metric", "task",
                         *(f"ratio_batch{b}" for b in batches)])
        for p in points:
            if "skipped" in p:
                continue
            writer.writerow([p["label"], p["bits_per_weight"], p["rel_l2"], p["cosine"], p.get("task_metric") or "",
                             "" if p.get("task") is None else p["task"], *(p["speed"].get(b, {}).get("ratio", "") for b in batches)])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for p in points:
            ratio = p.get("speed", {}).get(b, {}).get("ratio")
            if ratio is None:
                continue
            error = max(p["rel_l2"], 1e-5)  # fp32 and the dense artefact at the floor of the log axis
            marker = "s" if p["kind"] == "reference" else "o"
            ax.scatter(ratio, error, marker=marker)
            ax.annotate(p["label"].removeprefix("bie-compiler "), (ratio, error), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.set_xlabel("latency / onnxruntime fp32 (lower is faster)")
        ax.set_ylabel("output relative L2 vs fp32")
        ax.set_title(f"{title}, batch {b}")
    fig.tight_layout()
    fig.savefig(out / "speed_vs_error.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="an ONNX model (or --zoo NAME)")
    parser.add_argument("--zoo", choices=list(zoo.ENTRIES), help="a zoo entry: its model, data and compile options")
    parser.add_argument("--data", type=Path, help="a .npz or a folder of them (default: seeded random inputs)")
    parser.add_argument("--compile-options", default="", help="extra compile flags, one string (e.g. --dim seq=128)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("-o", "--out", type=Path, default=Path("speed_vs_error"))
    args = parser.parse_args()
    if (args.model is None) == (args.zoo is None):
        parser.error("give MODEL or --zoo NAME")
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    options = shlex.split(args.compile_options)
    if args.zoo:
        folder = zoo.build(args.zoo, progress=progress)
        entry = zoo.describe(folder)
        model_path, data, options = folder / entry["model"], folder / entry["data"], entry["compile_options"] + options
    else:
        model_path, data = args.model, args.data
    specs = model_inputs(load_model(model_path))
    samples = load_samples(specs, data) if data else [("random", make_inputs(specs, 8, 0), None)]
    points = measure(model_path, samples, options, CODECS, args.batches, args.threads, args.repeat, progress)
    write(points, args.batches, args.out, args.zoo or model_path.stem)
    for p in points:
        if "skipped" in p:
            print(f"{p['label']}: not measured: {p['skipped']}")
            continue
        speeds = ", ".join(f"batch {b} {s['ratio']:.2f}x" if "ratio" in s else f"batch {b}: {s['failed']}"
                           for b, s in p["speed"].items())
        print(f"{p['label']}: rel L2 {p['rel_l2']:.4f}, cosine {p['cosine']:.5f}; {speeds}")
    print(f"wrote {args.out}/speed_vs_error.png, .csv, .json")


if __name__ == "__main__":
    main()

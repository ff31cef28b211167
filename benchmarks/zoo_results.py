"""The zoo's results table: per model and codec, bits per weight and the task figure on the model's own data.

Each zoo entry (built on first use, ``bie-compiler zoo``) is measured as ``analyze`` measures: every matmul and
conv weight encoded as ``compile`` encodes it, replaced by its decoding, and the model run by onnxruntime on the
entry's evaluation data against fp32; each codec with round-to-nearest and with error feedback on the entry's
calibration data; onnxruntime's MatMulNBits and fp16 weights as references.
Bits per weight count every matmul and conv weight (the ones left dense at 32). Speed: each codec setting
compiled as ``bie-compiler compile`` compiles it (round-to-nearest: error feedback changes the weights' values,
not the kernels) and timed by ``bie-compiler bench`` against onnxruntime fp32 at batch 1 (the model's own batch
where its export fixes it) with the same threads; a setting that does not compile says why. Entries neither in
the cache nor buildable (their extra not installed) are left out, and said so. ``--no-latency`` measures the
quality columns only (a busy machine's latencies say little; the latency cells then read "not timed").

    python benchmarks/zoo_results.py [--models NAME ...] [--no-latency] [--markdown PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bie_compiler import codecs, zoo
from bie_compiler.analysis import CodecSpec, ModelUnderAnalysis
from bie_compiler.bench import bench
from bie_compiler.errors import BieError
from bie_compiler.evaluation import load_samples
from bie_compiler.frontend import load_model, model_inputs

CODECS = [CodecSpec("bie-bitplane", {"bits": 4}), CodecSpec("bie-bitplane", {"bits": 8}),
          CodecSpec("tans", {"levels": 15}), CodecSpec("int8"), CodecSpec("bbs", {"preset": "moderate"}),
          CodecSpec("bbs", {"preset": "conservative"}), CodecSpec("nwc", {"quality": 6})]
TASK_NAMES = {"accuracy": "accuracy", "cosine": "output cosine"}
DENSE = CodecSpec("dense")  # every weight kept dense (--skip '*'): what the compiler does without a codec
THREADS = 2  # both sides, as the project's timings are taken
REPEAT = 20


def compile_flags(spec: CodecSpec) -> list[str]:
    return ["--skip", "*"] if spec is DENSE else spec.flags()


def compile_failure(stderr: str) -> str:
    """The reason a ``compile`` gave, in one line: its error line, else the last exception line of a traceback."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line[0].isspace()]
    reason = next((line for line in reversed(lines) if line.startswith("bie-compiler: error")), None)
    reason = reason or next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1] if lines else "")
    return reason.removeprefix("bie-compiler: error: ")[:200]


def batch_one(specs: list[dict], sample: dict) -> dict:
    """The first row of each input where the model leaves its batch dimension free; fixed batches stay as they are."""
    return {spec["name"]: sample[spec["name"]][:1] if isinstance(spec["shape"][0], str) else sample[spec["name"]]
            for spec in specs}


def compiled(model: Path, options: list[str], spec: CodecSpec, work: Path) -> tuple[Path | None, str | None]:
    """(the artefact of ``spec`` compiled as ``bie-compiler compile`` compiles it, None) or (None, why not)."""
    out = work / spec.label.replace(" ", "_")
    done = subprocess.run([sys.executable, "-m", "bie_compiler", "compile", str(model), *compile_flags(spec),
                           *options, "-q", "-o", str(out)], capture_output=True, text=True)
    return (None, compile_failure(done.stderr)) if done.returncode else (out, None)


def timed(artefact: Path, inputs: dict, threads: int = THREADS, repeat: int = REPEAT) -> dict:
    """``bench``'s ratio (artefact / onnxruntime median latency) and both medians on ``inputs``."""
    result = bench(artefact, inputs, threads=threads, repeat=repeat)
    return {"ratio": result["ratio"], "artefact_ms": result["bie-compiler"]["median_ms"],
            "onnxruntime_ms": result["onnxruntime"]["median_ms"], "batch": {k: list(v.shape) for k, v in inputs.items()}}


def speed(model: Path, options: list[str], inputs: dict, spec: CodecSpec, work: Path) -> dict:
    """{"ratio": artefact / onnxruntime median latency, ...} for ``spec`` compiled, or {"failed": why}."""
    artefact, failure = compiled(model, options, spec, work)
    return {"failed": failure} if artefact is None else timed(artefact, inputs)


def speeds(model: Path, options: list[str], inputs: dict, name: str, progress) -> dict[str, dict]:
    """Per codec label (and ``dense``), the speed figures; when the dense compile fails, every setting fails with it."""
    with tempfile.TemporaryDirectory(prefix="zoo-speed-") as work:
        progress(f"{name}: compiling and timing dense")
        dense = speed(model, options, inputs, DENSE, Path(work))
        if "failed" in dense:
            return {spec.label: dense for spec in [DENSE, *CODECS]}
        figures = {DENSE.label: dense}
        for spec in CODECS:
            progress(f"{name}: compiling and timing {spec.label}")
            figures[spec.label] = speed(model, options, inputs, spec, Path(work))
        return figures


def measure(name: str, progress, latency: bool = True) -> dict:
    folder = zoo.build(name, progress=progress)
    entry = zoo.describe(folder)
    model = folder / entry["model"]
    specs = model_inputs(load_model(model))
    samples = load_samples(specs, folder / entry["data"])
    timed = speeds(model, entry["compile_options"], batch_one(specs, samples[0][1]), name, progress) if latency else {}
    calibration = folder / entry["calibration"]
    try:
        subject = ModelUnderAnalysis(model, samples, calibration=calibration, progress=progress)
        note = None
    except BieError as e:  # the calibration capture cannot run this model: rounded to nearest only, said so
        subject = ModelUnderAnalysis(model, samples, progress=progress)
        note = f"no error feedback: {e}"
    rows = []
    for spec in CODECS:
        for fed in [False] + ([True] if subject.calibrations and codecs.takes_calibration(spec.codec) else []):
            progress(f"{name}: {spec.label} ({'feedback' if fed else 'rtn'})")
            rows.append(subject.point(spec, fed))
    rows += subject.references(progress)
    return {"model": name, "about": entry["about"], "fp32": subject.bench.fp32_task, "note": note, "rows": rows,
            "speed": timed}


def speed_cell(figures: dict | None) -> str:
    if figures is None:
        return "(onnxruntime)"
    return "does not compile" if "failed" in figures else f"{figures['ratio']:.2f}x"


def latency_cell(speed: dict, point: dict) -> str:
    """The latency column of one row: a reference row is onnxruntime's own model, and an empty ``speed`` was not timed."""
    if point["mode"] == "reference":
        return speed_cell(None)
    return speed_cell(speed.get(point["label"])) if speed else "not timed"


def markdown(results: list[dict], missing: dict[str, list[str]]) -> str:
    lines = ["| model | codec | rounding | bits/weight | task figure | output rel. L2 | latency / onnxruntime |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for p in r["rows"]:
            if "skipped" in p:
                continue
            fp32 = f" (fp32 {r['fp32']['accuracy_fp32']:.3f})" if p["task_metric"] == "accuracy" else ""
            lines.append(f"| {r['model']} | {p['label']} | {p['mode']} | {p['bits_per_weight']:.2f} | "
                         f"{TASK_NAMES[p['task_metric']]} {p['task']:.4f}{fp32} | {p['rel_l2']:.4f} | "
                         f"{latency_cell(r['speed'], p)} |")
    notes = [f"{r['model']}: {r['note']}" for r in results if r["note"]]
    for r in filter(lambda r: r["speed"], results):
        dense, failures = r["speed"][DENSE.label], {}
        for label, figures in r["speed"].items():
            failures.setdefault(figures.get("failed"), []).append(label)
        failures.pop(None, None)
        if "failed" in dense:
            notes.append(f"{r['model']}: does not compile, dense or encoded: {dense['failed']}")
        else:
            batch = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in dense["batch"].items())
            notes.append(f"{r['model']}: latency at {batch}, {THREADS} threads; dense artefact (--skip '*') "
                         f"{speed_cell(dense)} ({dense['artefact_ms']:.3f} ms vs onnxruntime {dense['onnxruntime_ms']:.3f} ms)")
            notes += [f"{r['model']}: {', '.join(labels)} does not compile: {why}" for why, labels in failures.items()]
    notes += [f"{r['model']}: {p['label']} not measured: {p['skipped']}" for r in results for p in r["rows"]
              if "skipped" in p]
    notes += [f"{name}: not measured, needs {', '.join(lacking)} (its zoo extra)" for name, lacking in missing.items()]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(zoo.ENTRIES), choices=list(zoo.ENTRIES))
    parser.add_argument("--no-latency", dest="latency", action="store_false",
                        help="quality columns only: no setting compiled or timed")
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    # an entry already in the cache needs no extra: measuring it reads the cache only
    built = {name for name in args.models if (zoo.cache_dir() / name / zoo.ENTRY_FILE).is_file()}
    missing = {name: zoo.missing(name) for name in args.models if zoo.missing(name) and name not in built}
    results = [measure(name, progress, args.latency) for name in args.models if name not in missing]
    table = markdown(results, missing)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

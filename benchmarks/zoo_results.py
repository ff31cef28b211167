"""The zoo's results table: per model and codec, bits per weight and the task figure on the model's own data.

Each zoo entry (built on first use, ``bie-compiler zoo``) is measured as ``analyze`` measures: every matmul and
conv weight encoded as ``compile`` encodes it, replaced by its decoding, and the model run by onnxruntime on the
entry's evaluation data against fp32; each codec with round-to-nearest and with error feedback on the entry's
calibration data; onnxruntime's MatMulNBits and fp16 weights as references.
Bits per weight count every matmul and conv weight (the ones left dense at 32). Entries whose extra is not
installed are left out, and said so.

    python benchmarks/zoo_results.py [--models NAME ...] [--markdown PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from bie_compiler import codecs, zoo
from bie_compiler.analysis import CodecSpec, ModelUnderAnalysis
from bie_compiler.errors import BieError
from bie_compiler.evaluation import load_samples
from bie_compiler.frontend import load_model, model_inputs

CODECS = [CodecSpec("bie-bitplane", {"bits": 4}), CodecSpec("bie-bitplane", {"bits": 8}),
          CodecSpec("tans", {"levels": 15}), CodecSpec("int8"), CodecSpec("bbs", {"preset": "moderate"}),
          CodecSpec("bbs", {"preset": "conservative"})]
TASK_NAMES = {"accuracy": "accuracy", "cosine": "output cosine"}


def measure(name: str, progress) -> dict:
    folder = zoo.build(name, progress=progress)
    entry = zoo.describe(folder)
    model = folder / entry["model"]
    samples = load_samples(model_inputs(load_model(model)), folder / entry["data"])
    calibration = folder / entry["calibration"]
    try:
        subject = ModelUnderAnalysis(model, samples, calibration=calibration, progress=progress)
        note = None
    except BieError as e:  # e.g. grouped convs, which the calibration capture does not take
        subject = ModelUnderAnalysis(model, samples, progress=progress)
        note = f"no error feedback: {e}"
    rows = []
    for spec in CODECS:
        for fed in [False] + ([True] if subject.calibrations and codecs.takes_calibration(spec.codec) else []):
            progress(f"{name}: {spec.label} ({'feedback' if fed else 'rtn'})")
            rows.append(subject.point(spec, fed))
    rows += subject.references(progress)
    return {"model": name, "about": entry["about"], "fp32": subject.bench.fp32_task, "note": note, "rows": rows}


def markdown(results: list[dict], missing: dict[str, list[str]]) -> str:
    lines = ["| model | codec | rounding | bits/weight | task figure | output rel. L2 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for p in r["rows"]:
            if "skipped" in p:
                continue
            fp32 = f" (fp32 {r['fp32']['accuracy_fp32']:.3f})" if p["task_metric"] == "accuracy" else ""
            lines.append(f"| {r['model']} | {p['label']} | {p['mode']} | {p['bits_per_weight']:.2f} | "
                         f"{TASK_NAMES[p['task_metric']]} {p['task']:.4f}{fp32} | {p['rel_l2']:.4f} |")
    notes = [f"{r['model']}: {r['note']}" for r in results if r["note"]]
    notes += [f"{r['model']}: {p['label']} not measured: {p['skipped']}" for r in results for p in r["rows"]
              if "skipped" in p]
    notes += [f"{name}: not measured, needs {', '.join(lacking)} (its zoo extra)" for name, lacking in missing.items()]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(zoo.ENTRIES), choices=list(zoo.ENTRIES))
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    missing = {name: zoo.missing(name) for name in args.models if zoo.missing(name)}
    results = [measure(name, progress) for name in args.models if name not in missing]
    table = markdown(results, missing)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""At each rate from 2 to 8 bits/weight, the best codec setting here against onnxruntime's best weight-only mode.

Per zoo model (built on first use, ``bie-compiler zoo``), measured as ``analyze`` measures (every matmul and conv
weight encoded as ``compile`` encodes it, replaced by its decoding, onnxruntime on the entry's evaluation data
against fp32; bits per weight over every matmul, conv and table weight, those left dense at 32):

- ours, at each rate R of ``--rates``: each codec of ``--codecs`` with ``--bits-per-weight`` R (the budget split
  over layers by their measured sensitivities), ``--rotate``, error feedback in act-order on the entry's
  calibration data, as ``compile --codec C --bits-per-weight R --rotate --calibration CAL --act-order`` encodes
  it. When the layers left dense (under ``--min-weights``) put the total over R, the encoded layers' budget is
  lowered once so that the total is R. A budget below a codec's smallest coding is reported as such.
- onnxruntime: every mode of :data:`NBITS_MODES` (``MatMulNBits`` round-to-nearest, 2/4/8 bits, blocks of 32 and
  128, symmetric and asymmetric; HQQ 4-bit where torch is installed). Its weight-only quantizer takes MatMul (and
  Gather) only: convs stay fp32 (its conv quantization is QDQ with int8 activations, not weight-only), so on a
  conv model every mode costs about 32 bits/weight.

The codecs budgeted here have no gather kernel, so a Gather table (MiniLM's word embeddings) stays fp32 and is
in neither side's count (nor quantized by onnxruntime).

At each rate R the best of ours at <= R bits/weight (the smallest output relative L2: a classifier's accuracy near
fp32's moves by a sample or two) is set against onnxruntime's best at <= R: "met" when ours is at least as good on the task figure and its output relative L2 is no larger, or when
onnxruntime has no mode at <= R (said so); "met on rel. L2" when only the task figure is lower, by less than
onnxruntime's standard error of it (an accuracy that differs by a sample or two). Every weight is encoded
(``--min-weights 1``), as onnxruntime quantizes every MatMul.

    python benchmarks/rates_vs_onnxruntime.py [--models NAME ...] [--rates R ...] [--codecs C ...] [--json PATH]
    python benchmarks/rates_vs_onnxruntime.py --from-json PATH [--rates R ...]   # the verdicts again, nothing run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from bie_compiler import zoo
from bie_compiler.analysis import CodecSpec, ModelUnderAnalysis, Policy
from bie_compiler.errors import CodecError
from bie_compiler.evaluation import load_samples
from bie_compiler.frontend import load_model, model_inputs
from bie_compiler.ort_reference import NbitsMode

RATES = (2, 3, 4, 4.5, 5, 6, 6.5, 7, 8)
NBITS_MODES = tuple(NbitsMode(bits, block, symmetric) for bits in (2, 4, 8) for block in (32, 128)
                    for symmetric in (True, False)) + (NbitsMode(4, 32, False, "HQQ"), NbitsMode(4, 128, False, "HQQ"))


def cpu_seconds() -> float:
    """This process's and its finished children's CPU time (the encoders' worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def our_point(subject: ModelUnderAnalysis, codec: str, rate: float) -> dict:
    """``codec`` at a budget of ``rate`` bits/weight over the whole model, fed, rotated; or {"skipped": why}."""
    budget = rate
    for _ in range(2):
        spec = CodecSpec(codec, {"bits_per_weight": round(budget, 4), "rotate": True})
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            encoded = subject.encoded(spec, fed=True)
        except CodecError as e:
            return {"label": spec.label, "rate": rate, "skipped": str(e)}
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        if encoded.bits_per_weight <= rate + 1e-9:
            break
        coded = [r for r in encoded.records if r.name in encoded.decoded]
        total, coded_weights = sum(r.num_weights for r in encoded.records), sum(r.num_weights for r in coded)
        budget = (rate * total - 32 * (total - coded_weights)) / coded_weights  # the dense rest at 32 bits
        if budget <= 0:
            return {"label": spec.label, "rate": rate, "skipped": "the layers left dense alone exceed the rate"}
    return {**figures(subject.point(spec, True, encoded=encoded)), "rate": rate, "encode_wall_s": wall,
            "encode_cpu_s": cpu}


def figures(point: dict) -> dict:
    """A measured point's headline figures and its task figure's standard error (no per-output details)."""
    task = next(iter(point["result"]["outputs"].values()))[point["task_metric"]]
    return {**{k: v for k, v in point.items() if k != "result"}, "task_se": task["se"]}


def best_at(points: list[dict], rate: float) -> dict | None:
    fitting = [p for p in points if "skipped" not in p and p["bits_per_weight"] <= rate + 1e-9]
    return min(fitting, key=lambda p: (p["rel_l2"], -p["task"]), default=None)


def verdicts(ours: list[dict], theirs: list[dict], rates) -> list[dict]:
    """Per rate: our best and onnxruntime's best at <= rate, and the verdict (see the module's docstring)."""
    out = []
    for rate in rates:
        mine, other = best_at(ours, rate), best_at(theirs, rate)
        if mine is None:
            verdict = "neither has a setting" if other is None else "NOT met"
        elif other is None:
            verdict = "met (no onnxruntime mode)"
        elif mine["rel_l2"] > other["rel_l2"] or mine["task"] < other["task"] - other["task_se"]:
            verdict = "NOT met"
        else:
            verdict = "met" if mine["task"] >= other["task"] else "met on rel. L2"
        out.append({"rate": rate, "ours": mine, "onnxruntime": other, "verdict": verdict})
    return out


def measure(name: str, rates, codec_names: list[str], policy: Policy, progress, save) -> dict:
    """The model's figures; ``save(figures so far)`` after each point (a long run stopped early keeps them)."""
    folder = zoo.build(name, progress=progress)
    entry = zoo.describe(folder)
    model = folder / entry["model"]
    samples = load_samples(model_inputs(load_model(model)), folder / entry["data"])
    wall, cpu = time.perf_counter(), cpu_seconds()
    subject = ModelUnderAnalysis(model, samples, policy, calibration=folder / entry["calibration"], progress=progress,
                                 act_order=True)
    subject.measure_sensitivities()  # once, for every budget
    capture = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
    theirs = [p if "skipped" in p else figures(p) for p in subject.references(progress, NBITS_MODES, tables=False)
              if p["codec"] == "matmulnbits"]
    result = {"model": name, "fp32": subject.bench.fp32_task, "capture": capture, "ours": [], "onnxruntime": theirs}
    for rate in rates:
        for codec in codec_names:
            progress(f"{name}: {codec} at {rate} bits/weight")
            result["ours"].append(our_point(subject, codec, rate))
            progress(f"{name}: {point_text(result['ours'][-1])}")
            save({**result, "verdicts": verdicts(result["ours"], theirs, rates), "load_average": os.getloadavg()})
    return {**result, "verdicts": verdicts(result["ours"], theirs, rates), "load_average": os.getloadavg()}


def point_text(p: dict | None) -> str:
    if p is None:
        return "none"
    if "skipped" in p:
        return f"{p['label']}: {p['skipped']}"
    return f"{p['label']} ({p['mode']}): {p['bits_per_weight']:.3f} b/w, {p['task_metric']} {p['task']:.5f}, " \
           f"rel. L2 {p['rel_l2']:.4f}"


def table(result: dict) -> str:
    lines = [f"{result['model']}: onnxruntime's modes",
             *(f"  {point_text(p)}" for p in result["onnxruntime"]),
             f"{result['model']}: per rate, ours (best at <= R) against onnxruntime's best at <= R"]
    for v in result["verdicts"]:
        other = point_text(v["onnxruntime"]) if v["onnxruntime"] else "no onnxruntime mode at <= R"
        lines.append(f"  R {v['rate']:>4}: {v['verdict']}: ours {point_text(v['ours'])} | {other}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(zoo.ENTRIES), choices=list(zoo.ENTRIES))
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    parser.add_argument("--codecs", nargs="+", default=["tans"], help="codecs with a --bits-per-weight budget")
    parser.add_argument("--min-weights", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--from-json", type=Path, help="print the verdicts of a --json written before")
    args = parser.parse_args()
    if args.from_json:
        for result in json.loads(args.from_json.read_text()):
            print(table({**result, "verdicts": verdicts(result["ours"], result["onnxruntime"], args.rates)}))
        return
    logging.disable(logging.INFO)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    results = []

    def save(figures: list[dict]) -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")

    for name in args.models:
        policy = Policy(args.min_weights)
        results.append(measure(name, args.rates, args.codecs, policy, progress, lambda partial: save(results + [partial])))
        print(table(results[-1]), flush=True)
        save(results)


if __name__ == "__main__":
    main()

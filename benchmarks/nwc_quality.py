"""nwc against tans and bie-bitplane at about the same rate: bits/weight, output cosine, encode and decode time.

Measured as ``benchmarks/quality.py`` measures (every MatMul/Gemm weight of at least ``--min-weights``
encoded, replaced by its decoding, the model run with onnxruntime on the evaluation inputs, cosine to the
fp32 outputs), data-free (rtn) and with error feedback on the calibration data. Each row also gives the
cosine on the calibration inputs (``cal mean``: all that a guard choosing between encodings without the
evaluation data could see) and, with several evaluation files, the cosine of each. Its layers are encoded here
directly (as for the other codecs, no compile). The nwc budget is split over the layers as ``compile`` splits
it (:func:`nwc.level_options` per layer, :func:`.budget_split.allocate`): by relative weight error without
calibration, weighted by each layer's measured sensitivity with it. The per-layer tables (every layer rounded
at every quality level: most of an unplanned encode's time) are measured once per run and rotation, and kept
in ``--options-cache`` for the next run. Variants of the feedback encode: ``--spread`` (quality levels over
each layer's columns by Hessian-diagonal quantiles), ``--rotate`` (the weights rotated first, planned on the
rotated weights), ``--search N`` (N more encodes, each planned at the budget moved by what the last one
missed: the encode with feedback codes to another size than the table estimates without it). ``--as-compile``:
instead, ``tans`` and ``nwc`` at each budget planned and encoded exactly as ``compile`` does it (:func:`codecs.plan`
with the sensitivity-weighted calibrations, fitted to the feedback's coded sizes), the plan and encode timed
(wall and CPU seconds), nwc's scalar layers (coded as ``tans`` or float16) listed. Decode time: the reference decoder
(tANS in numpy, synthesis in numpy)
and, with ``--tvm``, the decoder an artefact runs at load (tANS latents and synthesis network, TVM).

    BIE_ZOO_CACHE=/tmp/zoo_analyze/cache python benchmarks/nwc_quality.py            (all-MiniLM-L6-v2)
    python benchmarks/nwc_quality.py --model M.onnx --eval E.npz [E2.npz ...] --calibration C [--budgets 4 4.5] [--tvm]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality import cosines, encode_all  # noqa: E402

from bie_compiler import codecs  # noqa: E402
from bie_compiler.calibration import calibration_inputs, layer_calibrations  # noqa: E402
from bie_compiler.codecs import budget_split, feedback, nwc, rotation, tans  # noqa: E402
from bie_compiler.codecs.layout import codec_matrix, onnx_layout  # noqa: E402
from bie_compiler.decoded_weights import initializer_arrays, weight_layers, with_weights  # noqa: E402
from bie_compiler.frontend import load_model, model_inputs  # noqa: E402
from bie_compiler.parity import make_inputs, run_onnxruntime  # noqa: E402

BASELINES = [("bie-bitplane 4", "bie-bitplane", {"bits": 4}), ("bie-bitplane 5", "bie-bitplane", {"bits": 5}),
             ("tans 15 levels", "tans", {"levels": 15}), ("tans 23 levels", "tans", {"levels": 23})]


def level_tables(matrices: dict, rotate: bool, cache: Path | None) -> dict[str, list]:
    """{layer: nwc.level_options of its (rotated) matrix, without calibration}, from ``cache`` when it has them."""
    key = "rotated" if rotate else "plain"
    stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key not in stored:
        start = time.perf_counter()
        stored[key] = {}
        for name, m in matrices.items():
            m = rotation.rotate(m, rotation.signs(m.shape[1])).astype(np.float32) if rotate else m
            stored[key][name] = nwc.level_options(m, nwc.Config(), None)
        print(f"level tables ({key}): {time.perf_counter() - start:.0f} s", flush=True)
        if cache is not None:
            cache.write_text(json.dumps(stored))
    return {name: [(tuple(choice), bits, d) for choice, bits, d in stored[key][name]] for name in matrices}


def planned(tables: dict[str, list], matrices: dict, budget: float, calibrations: dict) -> dict[str, tuple]:
    """{layer: its choice, ("nwc", quality) or ("tans", levels)} within ``budget``; with calibrations each layer's
    distortion weighted by its sensitivity (:func:`.feedback.distortion` as ``compile`` measures it)."""
    weighted = {name: [(q, bits, d * (calibrations[name].sensitivity if calibrations else 1.0)) for q, bits, d in t]
                for name, t in tables.items()}
    return budget_split.allocate(nwc.NAME, weighted, budget, sum(m.size for m in matrices.values()))


def encode_nwc(layers, weights, matrices, choices: dict, calibrations: dict, spread: int,
               rotate: bool) -> tuple[dict, float, float, dict]:
    """(decoded weights in ONNX layout, bits per encoded weight, encode seconds, encodings by name)."""
    start = time.perf_counter()
    encodings = {name: codecs.encode(nwc.NAME, matrices[name],
                                     nwc.resolved(nwc.Config(spread=spread, rotate=rotate), choices[name]),
                                     calibrations.get(name))
                 for name in matrices}
    seconds = time.perf_counter() - start
    decoded = {r.name: onnx_layout(codecs.decode(encodings[r.name]), weights[r.name].shape, r.op, r.transposed)
               for r in layers}
    bits = 8 * sum(e.nbytes for e in encodings.values()) / sum(m.size for m in matrices.values())
    return decoded, bits, seconds, encodings


def decode_seconds(encodings: dict, target) -> dict:
    """Decode time of every layer: tANS (numpy reference), synthesis (numpy), and with a target the whole decode
    an artefact runs at load (``codegen/kernels/nwc.py``: latents and network, into the dense layout), each
    layer's decoder built once per shape beforehand, run once as a warm-up, then timed."""
    encodings = {name: rotation.unrotated(enc)[0] for name, enc in encodings.items()}  # the signs: not decoded here
    start = time.perf_counter()
    all_latents = {name: nwc.latents(enc) for name, enc in encodings.items()}
    tans_s = time.perf_counter() - start
    start = time.perf_counter()
    for lat, enc in zip(all_latents.values(), encodings.values()):
        nwc.synthesise(lat, enc.arrays["levels"].astype(np.int64))
    out = {"tans_decode_s": tans_s, "synthesis_numpy_s": time.perf_counter() - start}
    if target is not None:
        import tvm

        from bie_compiler.codegen import kernel_for
        built, runs = {}, []
        for enc in encodings.values():
            call = kernel_for(enc, target)
            key = (enc.shape, tuple(sorted(enc.header.items())))
            if key not in built:
                built[key] = tvm.compile(tvm.IRModule({"main": call.at_load.func.with_attr("global_symbol", "main")}),
                                         target).mod["main"]
            runs.append((built[key], [tvm.runtime.tensor(a) for a in call.at_load.stored],
                         [tvm.runtime.empty(c.shape, "float32") for c in call.constants]))
        for decoder, stored, computed in runs:
            decoder(*stored, *computed)
        start = time.perf_counter()
        for decoder, stored, computed in runs:
            decoder(*stored, *computed)
        out["decode_at_load_s"] = time.perf_counter() - start
    return out


def as_compile(codec, budget: float, mode: str, calibrations: dict, layers, weights, matrices, measure) -> None:
    """One row: ``codec`` at ``budget`` planned and encoded as ``compile`` does it, plan and encode timed."""
    wall, cpu = time.perf_counter(), time.process_time()
    configs = codecs.plan(codec.NAME, matrices, {n: codec.Config(bits_per_weight=budget) for n in matrices},
                          calibrations)
    encodings = {n: codecs.encode(codec.NAME, matrices[n], configs[n], calibrations.get(n)) for n in matrices}
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    decoded = {r.name: onnx_layout(codecs.decode(encodings[r.name]), weights[r.name].shape, r.op, r.transposed)
               for r in layers}
    bits = 8 * sum(e.nbytes for e in encodings.values()) / sum(m.size for m in matrices.values())
    measure(f"{codec.NAME} budget {budget:g} as compile", mode, decoded, bits, wall, encode_cpu_s=cpu)
    if codec is nwc:
        print_scalar({n: nwc.FLOAT16 if c.float16 else tans.NAME for n, c in configs.items() if c.float16 or c.tans_levels},
                     matrices)


def print_scalar(scalar: dict[str, str], matrices: dict) -> None:
    """How many of nwc's layers the plan coded as ``tans`` and as float16 (``scalar``: those layers' kinds)."""
    for kind in (tans.NAME, nwc.FLOAT16):
        names = [n for n, k in scalar.items() if k == kind]
        print(f"  {len(names)} of {len(matrices)} layers coded as {kind} ({sum(matrices[n].size for n in names)} of "
              f"{sum(m.size for m in matrices.values())} weights){': ' + ', '.join(names) if kind == nwc.FLOAT16 and names else ''}",
              flush=True)


def main() -> None:
    cache = Path(os.environ.get("BIE_ZOO_CACHE", "~/.cache/bie-compiler/zoo")).expanduser() / "minilm"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(cache / "model.onnx"))
    parser.add_argument("--eval", nargs="+", default=[str(cache / "data" / "sentences.npz")],
                        help="evaluation .npz files (cosines over all their samples); \"\": seeded random inputs")
    parser.add_argument("--calibration", default=str(cache / "calibration"))
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0, 4.5, 5.0])
    parser.add_argument("--spread", type=int, nargs="+", default=[nwc.Config.spread], help="nwc feedback: spreads")
    parser.add_argument("--rotate", choices=("no", "yes", "both"), default="no", help="nwc: rotate the weights first")
    parser.add_argument("--search", type=int, default=0, help="nwc feedback: up to this many re-planned encodes")
    parser.add_argument("--options-cache", type=Path, help="JSON of the nwc level tables, read or written")
    parser.add_argument("--min-weights", type=int, default=1024)
    parser.add_argument("--only", action="append", default=[], help="run only configs whose label starts so")
    parser.add_argument("--rtn-only", action="store_true", help="no error feedback (no calibration capture)")
    parser.add_argument("--feedback-only", action="store_true", help="leave out the data-free rows")
    parser.add_argument("--tvm", action="store_true", help="also time the artefact's decode at load (TVM)")
    parser.add_argument("--as-compile", action="store_true", help="tans and nwc budget rows planned as compile plans")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    model = load_model(args.model)
    specs = model_inputs(model)
    inputs = [make_inputs(specs, 4, 0, e or None) for e in args.eval]
    references = [run_onnxruntime(model, i) for i in inputs]
    layers = [r for r in weight_layers(model) if r.fallback_reason is None and r.num_weights >= args.min_weights
              and r.op != "gather"]  # nwc has no gather kernel: compile leaves embedding tables to other codecs
    weights = initializer_arrays(model, [r.name for r in layers])
    matrices = {r.name: codec_matrix(weights[r.name], r.op, r.transposed) for r in layers}
    calibration = calibration_inputs(specs, args.calibration or None)
    calibrations = {} if args.rtn_only else layer_calibrations(  # with sensitivities, as compile splits a budget
        model, [r.name for r in layers], calibration, feedback.DAMPING, False, sensitive=True)
    calibration_references = [run_onnxruntime(model, i) for i in calibration]
    target = None
    if args.tvm:
        from bie_compiler.codegen.target import make_target
        target = make_target()
    modes = [("rtn", {}), ("feedback", calibrations)]
    modes = modes[:1] if args.rtn_only else modes[1:] if args.feedback_only else modes
    print(f"{args.model}: {len(layers)} layers, {sum(w.size for w in weights.values())} weights")
    print(f"{'config':<40} {'mode':<8} {'bits/w':>7} {'cos mean':>9} {'cos min':>9} {'cal mean':>9} {'enc s':>7}  "
          f"decode; cosine per eval file")
    rows = []

    def measure(label: str, mode: str, decoded: dict, bits: float, seconds: float, **extra) -> dict:
        encoded = with_weights(model, decoded)
        each = [cosines(run_onnxruntime(encoded, i), r) for i, r in zip(inputs, references)]
        # what a guard that sees only the calibration data would see of the same encodings
        seen = [cosines(run_onnxruntime(encoded, i), r) for i, r in zip(calibration, calibration_references)]
        row = {"config": label, "mode": mode, "bits_per_weight": bits, "encode_s": seconds, **extra,
               "cosine_mean": float(np.mean([c["cosine_mean"] for c in each])),  # files of equal sample counts
               "cosine_min": min(c["cosine_min"] for c in each), "cosine_per_file": [c["cosine"] for c in each],
               "calibration_cosine_mean": float(np.mean([c["cosine_mean"] for c in seen]))}
        rows.append(row)
        timing = " ".join(f"{k}={v:.2f}" for k, v in extra.items() if k.endswith("_s"))
        per_file = " ".join(f"{c:.5f}" for c in row["cosine_per_file"]) if len(each) > 1 else ""
        print(f"{label:<40} {mode:<8} {bits:7.3f} {row['cosine_mean']:9.5f} {row['cosine_min']:9.5f} "
              f"{row['calibration_cosine_mean']:9.5f} {seconds:7.1f}  {timing}; {per_file}", flush=True)
        return row

    if args.as_compile:
        for codec in (codecs.get_codec("tans"), nwc):
            if args.only and not any(codec.NAME.startswith(o) for o in args.only):
                continue
            for budget in args.budgets:
                for mode, calib in modes:
                    as_compile(codec, budget, mode, calib, layers, weights, matrices, measure)
    else:
        baselines = BASELINES + [(f"tans budget {b:g}", "tans", {"bits_per_weight": b}) for b in args.budgets]
        for label, codec, options in baselines:
            if args.only and not any(label.startswith(o) for o in args.only):
                continue
            for mode, calib in modes:
                fed = {n: replace(c, act_order=False) for n, c in calib.items()}
                decoded, bits, seconds = encode_all(layers, weights, codec, options, args.min_weights, fed)
                measure(label, mode, decoded, bits, seconds)
        for rotate in {"no": [False], "yes": [True], "both": [False, True]}[args.rotate]:
            for budget in args.budgets:
                stem = f"nwc budget {budget:g}" + (" rotated" if rotate else "")
                if args.only and not any(stem.startswith(o) for o in args.only):
                    continue
                tables = level_tables(matrices, rotate, args.options_cache)
                for mode, calib in modes:
                    for spread in args.spread if calib else [1]:
                        label = stem + (f" spread {spread}" if calib else "")
                        aim = budget
                        for attempt in range(1 + (args.search if calib else 0)):
                            choices = planned(tables, matrices, aim, calib)
                            decoded, bits, seconds, encodings = encode_nwc(layers, weights, matrices, choices, calib,
                                                                           spread, rotate)
                            print_scalar({n: c[0] for n, c in choices.items() if c[0] != nwc.NAME}, matrices)
                            timing = {} if attempt else decode_seconds(encodings, target)
                            measure(label + (f" planned at {aim:.3f}" if attempt else ""), mode, decoded, bits,
                                    seconds, planned_budget=aim, **timing)
                            aim += budget - bits  # the next plan moved by what this encode missed
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

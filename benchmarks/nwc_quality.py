"""nwc against tans and bie-bitplane at about the same rate: bits/weight, output cosine, encode and decode time.

Measured as ``benchmarks/quality.py`` measures (every MatMul/Gemm weight of at least ``--min-weights``
encoded, replaced by its decoding, the model run with onnxruntime on the evaluation inputs, cosine to the
fp32 outputs), data-free (rtn) and with error feedback on the calibration data. Its layers are encoded here
directly (as for the other codecs, no compile), the budget planned over the whole model by
:func:`nwc.plan` as ``compile`` would. Decode time: the reference decoder (tANS in numpy, synthesis in
numpy) and, with ``--tvm``, the decoder an artefact runs at load (tANS latents and synthesis network, TVM).

    BIE_ZOO_CACHE=/tmp/zoo_analyze/cache python benchmarks/nwc_quality.py            (all-MiniLM-L6-v2)
    python benchmarks/nwc_quality.py --model M.onnx --eval E.npz --calibration C [--budgets 4 4.5] [--tvm]
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

from bie_compiler.calibration import calibration_inputs, layer_calibrations  # noqa: E402
from bie_compiler.codecs import feedback, nwc  # noqa: E402
from bie_compiler.codecs.layout import codec_matrix, onnx_layout  # noqa: E402
from bie_compiler.decoded_weights import initializer_arrays, weight_layers, with_weights  # noqa: E402
from bie_compiler.frontend import load_model, model_inputs  # noqa: E402
from bie_compiler.parity import make_inputs, run_onnxruntime  # noqa: E402

BASELINES = [("bie-bitplane 4", "bie-bitplane", {"bits": 4}), ("bie-bitplane 5", "bie-bitplane", {"bits": 5}),
             ("tans 15 levels", "tans", {"levels": 15}), ("tans 23 levels", "tans", {"levels": 23})]


def encode_nwc(layers, weights, budget: float, calibrations: dict) -> tuple[dict, float, float, dict]:
    """(decoded weights in ONNX layout, bits per encoded weight, encode seconds, encodings by name)."""
    start = time.perf_counter()
    matrices = {r.name: codec_matrix(weights[r.name], r.op, r.transposed) for r in layers}
    configs = nwc.plan(matrices, {name: nwc.Config(bits_per_weight=budget) for name in matrices})
    encodings = {name: nwc.encode(matrices[name], configs[name], calibrations.get(name)) for name in matrices}
    seconds = time.perf_counter() - start
    decoded = {r.name: onnx_layout(nwc.decode(encodings[r.name]), weights[r.name].shape, r.op, r.transposed)
               for r in layers}
    bits = 8 * sum(e.nbytes for e in encodings.values()) / sum(m.size for m in matrices.values())
    return decoded, bits, seconds, encodings


def decode_seconds(encodings: dict, target) -> dict:
    """Decode time of every layer: tANS (numpy reference), synthesis (numpy), and with a target the whole decode
    an artefact runs at load (``codegen/kernels/nwc.py``: latents and network, into the dense layout), each
    layer's decoder built once per shape beforehand, run once as a warm-up, then timed."""
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


def main() -> None:
    cache = Path(os.environ.get("BIE_ZOO_CACHE", "~/.cache/bie-compiler/zoo")).expanduser() / "minilm"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(cache / "model.onnx"))
    parser.add_argument("--eval", default=str(cache / "data" / "sentences.npz"), help="\"\": seeded random inputs")
    parser.add_argument("--calibration", default=str(cache / "calibration"))
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0, 4.5, 5.0])
    parser.add_argument("--min-weights", type=int, default=1024)
    parser.add_argument("--only", action="append", default=[], help="run only configs whose label starts so")
    parser.add_argument("--rtn-only", action="store_true", help="no error feedback (no calibration capture)")
    parser.add_argument("--tvm", action="store_true", help="also time the artefact's decode at load (TVM)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    model = load_model(args.model)
    specs = model_inputs(model)
    inputs = make_inputs(specs, 4, 0, args.eval or None)
    references = run_onnxruntime(model, inputs)
    layers = [r for r in weight_layers(model) if r.fallback_reason is None and r.num_weights >= args.min_weights]
    weights = initializer_arrays(model, [r.name for r in layers])
    calibrations = {} if args.rtn_only else layer_calibrations(
        model, [r.name for r in layers], calibration_inputs(specs, args.calibration or None), feedback.DAMPING, False)
    target = None
    if args.tvm:
        from bie_compiler.codegen.target import make_target
        target = make_target()
    print(f"{args.model}: {len(layers)} layers, {sum(w.size for w in weights.values())} weights")
    print(f"{'config':<28} {'mode':<8} {'bits/w':>7} {'cos mean':>9} {'cos min':>9} {'enc s':>7}  decode")
    rows = []
    configs = [(label, codec, opts) for label, codec, opts in BASELINES]
    configs += [(f"tans budget {b:g}", "tans", {"bits_per_weight": b}) for b in args.budgets]
    configs += [(f"nwc budget {b:g}", "nwc", {"bits_per_weight": b}) for b in args.budgets]
    for label, codec, options in configs:
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        for mode, calib in (("rtn", {}), ("feedback", calibrations))[:1 if args.rtn_only else 2]:
            timing = {}
            if codec == "nwc":
                decoded, bits, seconds, encodings = encode_nwc(layers, weights, options["bits_per_weight"], calib)
                timing = decode_seconds(encodings, target)
            else:
                fed = {n: replace(c, act_order=False) for n, c in calib.items()}
                decoded, bits, seconds = encode_all(layers, weights, codec, options, args.min_weights, fed)
            row = {"config": label, "mode": mode, "bits_per_weight": bits, "encode_s": seconds, **timing,
                   **cosines(run_onnxruntime(with_weights(model, decoded), inputs), references)}
            rows.append(row)
            print(f"{label:<28} {mode:<8} {bits:7.3f} {row['cosine_mean']:9.5f} {row['cosine_min']:9.5f} "
                  f"{seconds:7.1f}  {' '.join(f'{k}={v:.2f}' for k, v in timing.items())}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

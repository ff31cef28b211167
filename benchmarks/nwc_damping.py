"""How much the network's error feedback should damp H, chosen on calibration data alone (two-fold).

The model's nwc layers are planned as ``compile`` plans them at ``--budget`` (:func:`codecs.plan`, the
sensitivity-weighted calibrations of every calibration file); the plan is then held fixed and each layer the
network codes is encoded again with feedback damping H by ``factor * DAMPING`` (the shipped codec: factor 1). Per
factor: the held-out calibration error, each such layer's feedback fitted on one half of
the calibration files and its relative output error measured on the other half's inputs (both ways, averaged,
weighted by the layer's sensitivity: the criterion, no evaluation data in it), and, for reference only, the model's
cosine to fp32 on the calibration files and on the evaluation files (mean over files, each file's too).

    Z=$BIE_ZOO_CACHE/ppocr-det; python benchmarks/nwc_damping.py --model $Z/model.onnx --eval $Z/data/*.npz \\
        --calibration $Z/calibration --budget 4 --factors 1 2 3 5 10
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality import cosines  # noqa: E402

from bie_compiler import codecs  # noqa: E402
from bie_compiler.calibration import calibration_inputs, layer_calibrations  # noqa: E402
from bie_compiler.codecs import feedback, nwc  # noqa: E402
from bie_compiler.codecs.layout import codec_matrix, onnx_layout  # noqa: E402
from bie_compiler.decoded_weights import initializer_arrays, weight_layers, with_weights  # noqa: E402
from bie_compiler.frontend import load_model, model_inputs  # noqa: E402
from bie_compiler.parity import make_inputs, run_onnxruntime  # noqa: E402


def damped(calibration: feedback.Calibration, factor: float) -> feedback.Calibration:
    """``calibration`` whose feedback damps H by ``factor * DAMPING``."""
    return replace(calibration, damping=feedback.DAMPING * factor)


def main() -> None:
    cache = Path(os.environ.get("BIE_ZOO_CACHE", "~/.cache/bie-compiler/zoo")).expanduser() / "minilm"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(cache / "model.onnx"))
    parser.add_argument("--eval", nargs="+", default=[str(cache / "data" / "sentences.npz")])
    parser.add_argument("--calibration", default=str(cache / "calibration"))
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--factors", type=float, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--min-weights", type=int, default=1024)
    args = parser.parse_args()
    logging.disable(logging.INFO)

    model = load_model(args.model)
    specs = model_inputs(model)
    evaluation = [make_inputs(specs, 4, 0, e) for e in args.eval]
    calibration = calibration_inputs(specs, args.calibration)
    references = {id(i): run_onnxruntime(model, i) for i in evaluation + calibration}
    layers = [r for r in weight_layers(model) if r.fallback_reason is None and r.num_weights >= args.min_weights
              and r.op != "gather"]
    weights = initializer_arrays(model, [r.name for r in layers])
    matrices = {r.name: codec_matrix(weights[r.name], r.op, r.transposed) for r in layers}
    full = layer_calibrations(model, list(matrices), calibration, feedback.DAMPING, False, sensitive=True)
    configs = codecs.plan(nwc.NAME, matrices, {n: nwc.Config(bits_per_weight=args.budget) for n in matrices}, full)
    network = [n for n, c in configs.items() if not (c.tans_levels or c.float16)]
    half = len(calibration) // 2
    folds = [layer_calibrations(model, network, part, feedback.DAMPING, False)
             for part in (calibration[:half], calibration[half:])]
    planned = {n: codecs.decode(codecs.encode(nwc.NAME, matrices[n], configs[n], full[n])) for n in matrices}
    print(f"{args.model}: budget {args.budget:g}, {len(network)} of {len(matrices)} layers coded by the network, "
          f"calibration halves of {half} and {len(calibration) - half} files")

    def cosine(decoded: dict, inputs: list) -> tuple[float, list[float]]:
        encoded = with_weights(model, {r.name: onnx_layout(decoded[r.name], weights[r.name].shape, r.op,
                                                           r.transposed) for r in layers})
        each = [cosines(run_onnxruntime(encoded, i), references[id(i)]) for i in inputs]
        return float(np.mean([c["cosine_mean"] for c in each])), [c["cosine"] for c in each]

    print(f"{'factor':>6} {'held-out calibration error':>27} {'cal mean':>9} {'eval mean':>10}  eval per file")
    for factor in args.factors:
        decoded, held_out = dict(planned), 0.0
        for n in network:
            w = matrices[n]
            decoded[n] = codecs.decode(codecs.encode(nwc.NAME, w, configs[n], damped(full[n], factor)))
            for fitted, measured in ((folds[0][n], folds[1][n]), (folds[1][n], folds[0][n])):
                approx = codecs.decode(codecs.encode(nwc.NAME, w, configs[n], damped(fitted, factor)))
                held_out += full[n].sensitivity * feedback.output_error(w, approx, measured.xtx) / 2
        seen, _ = cosine(decoded, calibration)
        mean, each = cosine(decoded, evaluation)
        print(f"{factor:6g} {held_out:27.4e} {seen:9.5f} {mean:10.5f}  " + " ".join(f"{c:.5f}" for c in each),
              flush=True)


if __name__ == "__main__":
    main()

"""Output quality of each codec with data-free rounding (RTN) and with error feedback (GPTQ on calibration data).

For every configuration, each MatMul/Gemm weight of at least ``--min-weights`` weights is
encoded (as ``compile`` does: the codecs' ``plan`` hooks over the whole model, then
``codecs.encode`` with or without the layer's calibration statistics), replaced by its
decoding, and the model run with onnxruntime on the evaluation inputs. Reported: bits per
encoded weight (every stored byte), the cosine of each sample's output against the fp32
model (mean and min over the batch), the cosine over all outputs together (``check``'s
figure) and the encoding time. A bits budget (the ``budget`` rows) is split over layers by weight error
alone in ``rtn`` mode and by each layer's measured sensitivity with feedback (as ``compile`` does
with and without ``--calibration``). The evaluation inputs must not be the calibration data.
onnxruntime's own 4-bit ``MatMulNBits`` (block 32, symmetric, RTN) is the baseline; its
bits/weight count its packed weights and float32 scales.

    python benchmarks/quality.py models/transformer.onnx --calibration CALIB [--eval EVAL.npz] [--feedback-only] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_nbits  # noqa: E402

from bie_compiler.codecs import feedback  # noqa: E402
from bie_compiler.calibration import calibration_inputs, layer_calibrations  # noqa: E402
from bie_compiler.decoded_weights import encode_model, initializer_arrays, weight_layers, with_weights  # noqa: E402
from bie_compiler.frontend import load_model, model_inputs  # noqa: E402
from bie_compiler.ort_reference import nbits_bytes  # noqa: E402
from bie_compiler.parity import make_inputs, run_onnxruntime  # noqa: E402
from bie_compiler.passes.policy import EncodingPolicy  # noqa: E402

CONFIGS = [  # (label, codec, options)
    ("bie-bitplane 4", "bie-bitplane", {"bits": 4}),
    ("bie-bitplane 4 group 32", "bie-bitplane", {"bits": 4, "group_size": 32}),
    ("bie-bitplane 4 group 128", "bie-bitplane", {"bits": 4, "group_size": 128}),
    ("bie-bitplane 5", "bie-bitplane", {"bits": 5}),
    ("bie-bitplane 6", "bie-bitplane", {"bits": 6}),
    ("bie-bitplane budget 4.1", "bie-bitplane", {"bits_per_weight": 4.1}),
    ("bie-bitplane budget 6.1", "bie-bitplane", {"bits_per_weight": 6.1}),
    ("int8", "int8", {}),
    ("tans 7 levels", "tans", {"levels": 7}),
    ("tans 11 levels", "tans", {"levels": 11}),
    ("tans 15 levels", "tans", {"levels": 15}),
    ("tans 23 levels", "tans", {"levels": 23}),
    ("tans 31 levels", "tans", {"levels": 31}),
    ("tans 63 levels", "tans", {"levels": 63}),
    ("tans 95 levels", "tans", {"levels": 95}),
    ("tans 127 levels", "tans", {"levels": 127}),
    ("tans budget 3.0", "tans", {"bits_per_weight": 3.0}),
    ("tans budget 5.5", "tans", {"bits_per_weight": 5.5}),
    ("tans budget 5.8", "tans", {"bits_per_weight": 5.8}),
    ("bbs moderate", "bbs", {"preset": "moderate"}),
    ("bbs conservative", "bbs", {"preset": "conservative"}),
    ("bitwave", "bitwave", {}),
    ("bie-binary", "bie-binary", {}),
    ("bie-blocked", "bie-blocked", {}),
    ("rotated bie-bitplane 3", "bie-bitplane", {"bits": 3, "rotate": True}),
    ("rotated bie-bitplane 4", "bie-bitplane", {"bits": 4, "rotate": True}),
    ("rotated bie-bitplane budget 3.0", "bie-bitplane", {"bits_per_weight": 3.0, "rotate": True}),
    ("rotated tans 11 levels", "tans", {"levels": 11, "rotate": True}),
    ("rotated tans budget 3.0", "tans", {"bits_per_weight": 3.0, "rotate": True}),
    ("rotated tans budget 5.8", "tans", {"bits_per_weight": 5.8, "rotate": True}),
]


def cosines(outputs: list[np.ndarray], references: list[np.ndarray]) -> dict:
    y, ref = (np.asarray(a[0], np.float64).reshape(len(a[0]), -1) for a in (outputs, references))
    per_sample = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
    flat_y = np.concatenate([np.ravel(o) for o in outputs]).astype(np.float64)
    flat_ref = np.concatenate([np.ravel(r) for r in references]).astype(np.float64)
    overall = flat_y @ flat_ref / (np.linalg.norm(flat_y) * np.linalg.norm(flat_ref))
    return {"cosine_mean": float(per_sample.mean()), "cosine_min": float(per_sample.min()), "cosine": float(overall)}


def encode_all(layers, weights, codec, options, min_weights, calibrations) -> tuple[dict, float, float]:
    """(decoded weights in ONNX layout by name, bits per encoded weight, seconds)."""
    result = encode_model(weights, layers, EncodingPolicy(codec, options, min_weights), calibrations)
    encoded = [r for r in result.records if r.name in result.decoded]
    bits = 8 * sum(r.bytes_encoded for r in encoded) / sum(r.num_weights for r in encoded)
    return result.decoded, bits, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--calibration", required=True, help=".npz of inputs or a folder of them")
    parser.add_argument("--eval", help=".npz of evaluation inputs (default: seeded random, batch --batch, seed 0)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--min-weights", type=int, default=1024)
    parser.add_argument("--only", action="append", default=[], help="run only configs whose label starts so")
    parser.add_argument("--act-order", action="store_true", help="feedback in act-order where scales are per channel")
    parser.add_argument("--damping", type=float, default=feedback.DAMPING)
    parser.add_argument("--feedback-only", action="store_true", help="leave out the round-to-nearest rows")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the 4-bit quantizer logs every node

    model = load_model(args.model)
    specs = model_inputs(model)
    inputs = make_inputs(specs, args.batch, 0, args.eval)
    references = run_onnxruntime(model, inputs)
    layers = [r for r in weight_layers(model) if r.op == "matmul" and r.fallback_reason is None
              and r.num_weights >= args.min_weights]
    weights = initializer_arrays(model, [r.name for r in layers])
    start = time.perf_counter()
    calibrations = layer_calibrations(model, [layer.name for layer in layers], calibration_inputs(specs, args.calibration),
                                      args.damping, args.act_order, sensitive=True)
    capture_s = time.perf_counter() - start
    print(f"{args.model}: {len(layers)} encoded layers, {sum(w.size for n, w in weights.items() if n in calibrations)} "
          f"weights; calibration capture and sensitivities {capture_s:.1f} s")
    rows = []
    nbits, why = matmul_nbits(model)
    if nbits is not None:
        stored = nbits_bytes(nbits, 4, {layer.name: layer.bytes_dense for layer in layers})
        row = {"config": "onnxruntime MatMulNBits 4-bit block 32 (RTN)", "mode": "rtn",
               "bits_per_weight": 8 * stored / sum(layer.num_weights for layer in layers),
               **cosines(run_onnxruntime(nbits, inputs), references), "seconds": 0.0}
        rows.append(row)
    else:
        print(f"(no onnxruntime 4-bit baseline: {why})")
    header = f"{'config':<46} {'mode':<8} {'bits/w':>7} {'cos mean':>9} {'cos min':>9} {'cos all':>9} {'enc s':>7}"
    print(header)
    for row in rows:
        print(f"{row['config']:<46} {row['mode']:<8} {row['bits_per_weight']:7.3f} {row['cosine_mean']:9.5f} "
              f"{row['cosine_min']:9.5f} {row['cosine']:9.5f} {row['seconds']:7.1f}", flush=True)
    for label, codec, options in CONFIGS:
        if args.only and not any(label.startswith(o) for o in args.only):
            continue
        grouped = codec in ("bbs", "bitwave") or options.get("group_size")  # act-order needs per-channel scales
        ordered = args.act_order and not grouped
        fed = calibrations if ordered else {n: replace(c, act_order=False) for n, c in calibrations.items()}
        modes = (("rtn", {}), ("feedback" + (" ao" if ordered else ""), fed))
        for mode, calib in modes[1:] if args.feedback_only else modes:
            decoded, bpw, seconds = encode_all(layers, weights, codec, options, args.min_weights, calib)
            row = {"config": label, "mode": mode, "bits_per_weight": bpw,
                   **cosines(run_onnxruntime(with_weights(model, decoded), inputs), references), "seconds": seconds}
            rows.append(row)
            print(f"{label:<46} {mode:<8} {bpw:7.3f} {row['cosine_mean']:9.5f} {row['cosine_min']:9.5f} "
                  f"{row['cosine']:9.5f} {seconds:7.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "capture_seconds": capture_s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Output quality of each codec with data-free rounding (RTN) and with error feedback (GPTQ on calibration data).

For every configuration, each MatMul/Gemm weight of at least ``--min-weights`` weights is
encoded (as ``compile`` does: the codecs' ``plan`` hooks over the whole model, then
``codecs.encode`` with or without the layer's calibration statistics), replaced by its
decoding, and the model run with onnxruntime on the evaluation inputs. Reported: bits per
encoded weight (every stored byte), the cosine of each sample's output against the fp32
model (mean and min over the batch), the cosine over all outputs together (``check``'s
figure) and the encoding time. The evaluation inputs must not be the calibration data.
onnxruntime's own 4-bit ``MatMulNBits`` (block 32, symmetric, RTN) is the baseline; its
bits/weight count its packed weights and float32 scales.

    python benchmarks/quality.py models/transformer.onnx --calibration CALIB [--eval EVAL.npz] [--json PATH]
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
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_nbits  # noqa: E402

from bie_compiler import codecs  # noqa: E402
from bie_compiler.codecs import feedback  # noqa: E402
from bie_compiler.calibration import calibration_inputs, layer_calibrations  # noqa: E402
from bie_compiler.frontend import load_model, model_inputs  # noqa: E402
from bie_compiler.codecs.layout import codec_matrix, onnx_layout  # noqa: E402
from bie_compiler.parity import make_inputs, run_onnxruntime  # noqa: E402
from bie_compiler.report import LayerRecord  # noqa: E402

CONFIGS = [  # (label, codec, options)
    ("bie-bitplane 4", "bie-bitplane", {"bits": 4}),
    ("bie-bitplane 4 group 32", "bie-bitplane", {"bits": 4, "group_size": 32}),
    ("bie-bitplane 4 group 128", "bie-bitplane", {"bits": 4, "group_size": 128}),
    ("bie-bitplane 5", "bie-bitplane", {"bits": 5}),
    ("int8", "int8", {}),
    ("tans 7 levels", "tans", {"levels": 7}),
    ("tans 11 levels", "tans", {"levels": 11}),
    ("tans 15 levels", "tans", {"levels": 15}),
    ("tans 23 levels", "tans", {"levels": 23}),
    ("tans 31 levels", "tans", {"levels": 31}),
    ("bbs moderate", "bbs", {"preset": "moderate"}),
    ("bbs conservative", "bbs", {"preset": "conservative"}),
]


def weight_layers(model: onnx.ModelProto, min_weights: int) -> list[LayerRecord]:
    """The 2-D MatMul/Gemm weights (initializers read as input 1) with at least ``min_weights`` weights."""
    inits = {i.name: i for i in model.graph.initializer}
    layers = {}
    for node in model.graph.node:
        name = node.input[1] if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        if name in inits and len(inits[name].dims) == 2 and np.prod(inits[name].dims) >= min_weights:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            layers.setdefault(name, LayerRecord(name, "matmul", list(inits[name].dims), "dense", 0, 0,
                                                transposed=node.op_type == "Gemm" and trans_b))
    return list(layers.values())


def replaced(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32), init.name))
    return out


def cosines(outputs: list[np.ndarray], references: list[np.ndarray]) -> dict:
    y, ref = (np.asarray(a[0], np.float64).reshape(len(a[0]), -1) for a in (outputs, references))
    per_sample = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
    flat_y = np.concatenate([np.ravel(o) for o in outputs]).astype(np.float64)
    flat_ref = np.concatenate([np.ravel(r) for r in references]).astype(np.float64)
    overall = flat_y @ flat_ref / (np.linalg.norm(flat_y) * np.linalg.norm(flat_ref))
    return {"cosine_mean": float(per_sample.mean()), "cosine_min": float(per_sample.min()), "cosine": float(overall)}


def encode_all(model, layers, weights, codec, options, calibrations) -> tuple[dict, float, float]:
    """(decoded weights in ONNX layout by name, bits per encoded weight, seconds)."""
    start = time.perf_counter()
    config = codecs.make_config(codec, options)
    module = codecs.get_codec(codec)
    configs = {layer.name: config for layer in layers}
    matrices = {layer.name: codec_matrix(weights[layer.name], layer.op, layer.transposed) for layer in layers}
    if hasattr(module, "plan"):
        configs = module.plan(matrices, configs)
    decoded, bits = {}, 0
    for layer in layers:
        enc = codecs.encode(codec, matrices[layer.name], configs[layer.name], calibrations.get(layer.name))
        bits += 8 * enc.nbytes
        decoded[layer.name] = onnx_layout(module.decode(enc), weights[layer.name].shape, layer.op, layer.transposed)
    return decoded, bits / sum(w.size for w in matrices.values()), time.perf_counter() - start


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
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the 4-bit quantizer logs every node

    model = load_model(args.model)
    specs = model_inputs(model)
    inputs = make_inputs(specs, args.batch, 0, args.eval)
    references = run_onnxruntime(model, inputs)
    layers = weight_layers(model, args.min_weights)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    start = time.perf_counter()
    calibrations = layer_calibrations(model, [layer.name for layer in layers],
                                      calibration_inputs(specs, args.calibration), args.damping, args.act_order)
    capture_s = time.perf_counter() - start
    print(f"{args.model}: {len(layers)} encoded layers, {sum(w.size for n, w in weights.items() if n in calibrations)} "
          f"weights; calibration capture {capture_s:.1f} s")
    rows = []
    nbits, why = matmul_nbits(model)
    if nbits is not None:
        packed = sum(numpy_helper.to_array(i).nbytes for i in nbits.graph.initializer
                     if i.name.endswith(("_Q4", "_scales")))
        row = {"config": "onnxruntime MatMulNBits 4-bit block 32 (RTN)", "mode": "rtn",
               "bits_per_weight": 8 * packed / sum(weights[layer.name].size for layer in layers),
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
        grouped = codec == "bbs" or options.get("group_size")  # act-order needs per-channel scales
        ordered = args.act_order and not grouped
        fed = calibrations if ordered else {n: replace(c, act_order=False) for n, c in calibrations.items()}
        for mode, calib in (("rtn", {}), ("feedback" + (" ao" if ordered else ""), fed)):
            decoded, bpw, seconds = encode_all(model, layers, weights, codec, options, calib)
            row = {"config": label, "mode": mode, "bits_per_weight": bpw,
                   **cosines(run_onnxruntime(replaced(model, decoded), inputs), references), "seconds": seconds}
            rows.append(row)
            print(f"{label:<46} {mode:<8} {bpw:7.3f} {row['cosine_mean']:9.5f} {row['cosine_min']:9.5f} "
                  f"{row['cosine']:9.5f} {seconds:7.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "capture_seconds": capture_s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Simulated BitVert speedup and energy against Stripes, Pragmatic, Bitlet and BitWave.

On the layer shapes of ResNet-50 (224 x 224, batch 1) and BERT-base (128 tokens, the
weight projections of its 12 encoder layers), with seeded random INT8 weights of a
trained-like, heavy-tailed distribution (Student-t values, log-normal channel scales,
symmetric per-channel INT8), and on the bundled models in ``models/``; for the
conservative (beta = 10 %, N = 2) and moderate (beta = 20 %, N = 4) presets.

Sensitive channels follow the BBS rule (rank all output channels of the model by
their INT8 scale, the top beta stay 8-bit, each layer's count rounded up to a
multiple of 32). BitVert's cycles depend only on that split; its DRAM bytes are the
BBS format's: (8 - N) bit columns plus 8 metadata bits per 32 weights for pruned
channels, 8 bits for sensitive ones, plus a 4-byte scale and a 2-byte channel index
per channel. BitWave runs its own bit-flipped weights: the ``bitwave`` codec at
the preset's N (so both store 8 - N columns per pruned weight), given the same
sensitive channels as BBS (kept INT8, which BitWave's own paper does not have; the
comparison is then about the pruning method alone), with that codec's bytes for
the pruned channels. PE energy and area follow the BBS paper's Table V (see
runtime/bitvert/perf_model.py). The PE-column sweep (the paper's Fig. 14) repeats
the moderate preset on arrays of 2 to 32 PE columns.

    python benchmarks/bitvert_speedup.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from bie_compiler.codecs import bitwave
from bie_compiler.codecs.int8 import quantize
from bie_compiler.runtime.bitvert import perf_model as pm

PRESETS = {"conservative": (0.10, 2), "moderate": (0.20, 4)}
PAPER = {"conservative": (2.48, 2.58), "moderate": (3.03, 3.33)}  # speedup over Stripes, compute-only bound
CHANNEL_INDEX_BYTES = 2


def resnet50_layers() -> list[tuple[str, int, int, int]]:
    """(name, N out channels, K = kh*kw*C_in, M output pixels) of every conv and the fc."""
    layers = [("conv1", 64, 7 * 7 * 3, 112 * 112)]
    c_in, size = 64, 56
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 0 else 1
            out = size // stride
            p = f"layer{stage + 1}.{b}"
            layers += [(f"{p}.conv1", width, c_in, size * size), (f"{p}.conv2", width, 9 * width, out * out),
                       (f"{p}.conv3", 4 * width, width, out * out)]
            if b == 0:
                layers.append((f"{p}.downsample", 4 * width, c_in, out * out))
            c_in, size = 4 * width, out
    return layers + [("fc", 1000, 2048, 1)]


def bert_base_layers(tokens: int = 128) -> list[tuple[str, int, int, int]]:
    layers = []
    for i in range(12):
        p = f"encoder.{i}"
        layers += [(f"{p}.attn.{n}", 768, 768, tokens) for n in ("q", "k", "v", "o")]
        layers += [(f"{p}.ffn.fc1", 3072, 768, tokens), (f"{p}.ffn.fc2", 768, 3072, tokens)]
    return layers


def heavy_tailed(rng, n: int, k: int) -> np.ndarray:
    """A trained-like float weight: Student-t (3 dof) values, log-normal per-channel scales."""
    return (rng.standard_t(3, (n, k)) * rng.lognormal(0.0, 0.5, (n, 1)) * 0.02).astype(np.float32)


def onnx_layers(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """(weight name, float weight [N, K], M) of every MatMul/Gemm/Conv with a constant weight, batch 1."""
    model = onnx.load(path)
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or node.input[1] not in inits:
            continue
        w = inits[node.input[1]].astype(np.float32)
        if node.op_type == "Conv":
            m = math.prod(shapes[node.output[0]][2:]) * shapes[node.output[0]][0]
            out.append((node.input[1], w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1), m))
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            m = math.prod(shapes[node.input[0]][:-1])
            out.append((node.input[1], w if trans_b else w.T, m))
    return out


def sensitive_counts(weights: list[np.ndarray], beta: float) -> list[int]:
    """Per layer, the sensitive channels: the model's top beta by scale, rounded up to a multiple of 32."""
    scales = [np.abs(w).max(axis=1) for w in weights]
    ranked = np.sort(np.concatenate(scales))[::-1]
    threshold = ranked[max(0, math.ceil(beta * ranked.size) - 1)]
    return [min(s.size, -(-int((s >= threshold).sum()) // 32) * 32) for s in scales]


def bitvert_bytes(n: int, k: int, sensitive: int, pruned_columns: int) -> int:
    pruned_bits = (n - sensitive) * k * (8 - pruned_columns) + (n - sensitive) * -(-k // 32) * 8
    return math.ceil((sensitive * k * 8 + pruned_bits) / 8) + n * (pm.SCALE_BYTES + CHANNEL_INDEX_BYTES)


PE_COLUMNS = (2, 4, 8, 16, 32)


def evaluate(layers: list[tuple[str, np.ndarray, int]]) -> dict:
    """{preset: runs} for layers of (name, float weight [N, K], M); runs as ``perf_model.report`` takes them."""
    int8 = [quantize(w)[0].astype(np.int8) for _, w, _ in layers]  # the INT8 model the baselines run
    fixed = ("stripes", "pragmatic", "bitlet")  # run the INT8 weights whatever the preset
    baselines = []
    for (name, _, m), q in zip(layers, int8):
        layer = pm.LayerWorkload(name, q, m, np.full(q.shape[0], 8), 0)
        baselines.append({acc: pm.profile(layer, acc) for acc in fixed})
    results = {}
    for preset, (beta, pruned) in PRESETS.items():
        runs = []
        flip = bitwave.Config(pruned_columns=pruned)
        for (name, w, m), q, base, sens in zip(layers, int8, baselines, sensitive_counts([w for _, w, _ in layers], beta)):
            order = np.argsort(-np.abs(w).max(axis=1), kind="stable")
            columns = np.full(q.shape[0], 8 - pruned)
            columns[order[:sens]] = 8
            flipped = bitwave.prune(w, flip)[0]
            flipped[order[:sens]] = q[order[:sens]]  # the same sensitive channels as BBS, kept INT8
            pruned_rows = order[sens:]
            bitwave_bytes = (sens * (q.shape[1] + pm.SCALE_BYTES + CHANNEL_INDEX_BYTES)
                             + (bitwave.encode(w[pruned_rows], flip).nbytes if pruned_rows.size else 0))
            layer = pm.LayerWorkload(name, q, m, columns, bitvert_bytes(*q.shape, sens, pruned), flipped, bitwave_bytes)
            runs.append((name, m, {**base, "bitvert": pm.profile(layer, "bitvert"),
                                   "bitwave": pm.profile(layer, "bitwave")}))
        results[preset] = runs
    return results


def summary(label: str, results: dict) -> list[str]:
    lines = []
    for preset, rep in results.items():
        vs = rep["bitvert_vs"]
        paper, bound = PAPER[preset]
        util = rep["accelerators"]["bitvert"]["utilization"]
        lines.append(
            f"{label:<12} {preset:<12} " + " ".join(f"{vs[b]['speedup']:6.2f}x" for b in pm.BASELINES)
            + f"   {vs['stripes']['compute_speedup']:5.2f}x   " + " ".join(f"{vs[b]['energy_ratio']:5.2f}x" for b in pm.BASELINES)
            + f"   {util:5.1%}   {paper:.2f}x / {bound:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "models"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    suites = {
        "resnet50": [(n, heavy_tailed(rng, cout, k), m) for n, cout, k, m in resnet50_layers()],
        "bert-base": [(n, heavy_tailed(rng, cout, k), m) for n, cout, k, m in bert_base_layers()],
    }
    for path in sorted(Path(args.models).glob("*.onnx")):
        suites[path.stem] = onnx_layers(path)
    header = (f"{'model':<12} {'preset':<12} " + " ".join(f"{'/' + b[:7]:>7}" for b in pm.BASELINES)
              + "   compute   " + " ".join(f"{'E/' + b[:4]:>6}" for b in pm.BASELINES) + "   BV util   paper (speedup / bound)")
    print("speedup = baseline cycles / BitVert cycles (max(compute, DRAM) per layer, summed);"
          " compute = Stripes compute-only; E/ = baseline energy / BitVert energy")
    print(header)
    figures, sweeps = {}, {}
    for label, layers in suites.items():
        runs = evaluate(layers)
        figures[label] = {preset: pm.report(r) for preset, r in runs.items()}
        sweeps[label] = {cols: pm.report(runs["moderate"], pe_cols=cols)["bitvert_vs"] for cols in PE_COLUMNS}
        for line in summary(label, figures[label]):
            print(line, flush=True)
    area = {b: pm.PE_AREA_UM2[b] / pm.PE_AREA_UM2["bitvert"] for b in pm.BASELINES}
    print("\nPE area relative to BitVert (Table V): " + ", ".join(f"{b} {r:.2f}x" for b, r in area.items()))
    print("\nPE-column sweep (moderate; BitVert speedup over Stripes / energy ratio), columns: "
          + " ".join(f"{c:>12}" for c in PE_COLUMNS))
    for label, sweep in sweeps.items():
        print(f"{label:<12} " + " ".join(f"{sweep[c]['stripes']['speedup']:5.2f}x/{sweep[c]['stripes']['energy_ratio']:4.2f}x"
                                         for c in PE_COLUMNS))
    if args.json:
        Path(args.json).write_text(json.dumps({"presets": figures, "pe_column_sweep": sweeps}, indent=1, default=float))


if __name__ == "__main__":
    main()

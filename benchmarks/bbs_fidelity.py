"""Fidelity of ``int8``, ``bbs`` (both presets) and ``bitwave`` at matching bits, for every bundled model.

Every MatMul, Gemm and Conv weight of a model is encoded, decoded through the
codec's reference decoder and put back into the ONNX model; onnxruntime runs it
and the fp32 model on the same seeded inputs (batch 8). Printed per model and
codec: bits/weight (the paper's figure for pruned channels, and the honest one:
every stored byte over the weights), the output error against fp32 (max
relative, as ``bie_compiler.parity.compare``, and relative L2) and the cosine.
``bitwave`` runs at the kept columns of each preset (N = 2 for conservative's
6.25 bits, N = 4 for moderate's 4.25), with no sensitive channels; the bbs
preset rows include their INT8 sensitive channels (chosen by ``bbs.plan`` over
the whole model, as the compiler does), the ``b=0`` rows have none: those are
at exactly bitwave's bits.

    python benchmarks/bbs_fidelity.py [--batch 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import numpy_helper

from bie_compiler import codecs
from bie_compiler.models import write_all
from bie_compiler.codecs.layout import codec_matrix, onnx_layout
from bie_compiler.parity import compare, make_inputs, run_onnxruntime

CODECS = [  # (label, codec, options)
    ("int8", "int8", {}),
    ("bbs conservative", "bbs", {"preset": "conservative"}),
    ("bbs conservative b=0", "bbs", {"preset": "conservative", "sensitive_fraction": 0.0}),
    ("bitwave N=2", "bitwave", {"pruned_columns": 2}),
    ("bbs moderate", "bbs", {"preset": "moderate"}),
    ("bbs moderate b=0", "bbs", {"preset": "moderate", "sensitive_fraction": 0.0}),
    ("bitwave N=4", "bitwave", {"pruned_columns": 4}),
]


def weight_layers(model: onnx.ModelProto) -> dict[str, SimpleNamespace]:
    """Initializers used as MatMul/Gemm/Conv weights, with the layout facts ``codec_matrix`` needs."""
    inits = {i.name for i in model.graph.initializer}
    layers = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1 and node.input[1] in inits:
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            layers[node.input[1]] = SimpleNamespace(op="conv2d" if node.op_type == "Conv" else "matmul",
                                                    transposed=node.op_type == "Gemm" and trans_b)
    return layers


def decoded_model(model: onnx.ModelProto, codec: str, options: dict) -> tuple[onnx.ModelProto, dict]:
    """The model with every weight replaced by decode(encode(weight)), and its bit accounting."""
    module = codecs.get_codec(codec)
    layers = weight_layers(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {i.name: i for i in out.graph.initializer}
    weights = {name: numpy_helper.to_array(by_name[name]) for name in layers}
    matrices = {name: codec_matrix(w, layers[name].op, layers[name].transposed) for name, w in weights.items()}
    config = codecs.make_config(codec, options)
    configs = {name: config for name in layers}
    if hasattr(module, "plan"):
        configs = module.plan(matrices, configs)
    stored_bytes = paper_bits = count = 0
    for name, matrix in matrices.items():
        enc = module.encode(matrix, configs[name])
        decoded = onnx_layout(module.decode(enc), weights[name].shape, layers[name].op, layers[name].transposed)
        by_name[name].CopyFrom(numpy_helper.from_array(decoded, name))
        stored_bytes += enc.nbytes
        count += matrix.size
        extra = module.report(enc) if hasattr(module, "report") else {}
        paper_bits += matrix.size * extra.get("paper_bits_per_weight_with_sensitive",
                                              extra.get("paper_bits_per_weight", 8.0))
    return out, {"honest_bits_per_weight": 8 * stored_bytes / count, "paper_bits_per_weight": paper_bits / count}


def input_specs(model: onnx.ModelProto) -> list[dict]:
    specs = []
    for value in model.graph.input:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        specs.append({"name": value.name, "shape": shape,
                      "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name})
    return specs


def run(batch: int, directory: Path) -> list[dict]:
    rows = []
    for path in write_all(directory):
        model = onnx.load(path)
        inputs = make_inputs(input_specs(model), batch=batch, seed=0)
        reference = run_onnxruntime(model, inputs)
        ref = np.concatenate([r.ravel() for r in reference]).astype(np.float64)
        for label, codec, options in CODECS:
            decoded, bits = decoded_model(model, codec, options)
            outputs = run_onnxruntime(decoded, inputs)
            y = np.concatenate([o.ravel() for o in outputs]).astype(np.float64)
            errors = compare(outputs, reference)
            rows.append({"model": path.stem, "codec": label, **bits, "max_rel_err": errors["max_rel_err"],
                         "rel_l2_err": float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
                         "cosine": errors["cosine"]})
    return rows


def report(rows: list[dict], batch: int) -> None:
    print(f"output error against the fp32 model (onnxruntime, batch {batch}; every MatMul/Gemm/Conv weight encoded)")
    header = ["model", "codec", "paper bits/w", "honest bits/w", "max rel err", "rel L2 err", "cosine"]
    table = [header] + [[r["model"], r["codec"], f"{r['paper_bits_per_weight']:.2f}",
                         f"{r['honest_bits_per_weight']:.2f}", f"{r['max_rel_err']:.4f}", f"{r['rel_l2_err']:.4f}",
                         f"{r['cosine']:.5f}"] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join([*(c.ljust(w) for c, w in zip(line[:2], widths[:2])),
                         *(c.rjust(w) for c, w in zip(line[2:], widths[2:]))]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--models", type=Path, default=Path("/tmp/bie-fidelity-models"), help="where to write the models")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)
    rows = run(args.batch, args.models)
    report(rows, args.batch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Encoding time of a model's layers on 1 worker and on N, and that the bytes are the same.

    python benchmarks/parallel_encoding.py [--codec tans] [--jobs 2] [--model models/encoder.onnx]

Encodes every MatMul/Gemm weight of the model (default: the MiniLM-shaped encoder, written if missing)
with the codec's defaults, once serially and once in ``--jobs`` processes (worker start-up included),
and prints both wall times, their ratio and whether every encoding hashes the same.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx
from onnx import numpy_helper

from bie_compiler import codecs
from bie_compiler.codecs.parallel import encode_many
from bie_compiler.models import write_all


def matmul_weights(model: onnx.ModelProto) -> dict:
    inits = {i.name: i for i in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            weights[node.input[1]] = w if transposed else w.T.copy()
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="tans")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    path = args.model or write_all("out/models", ["encoder"])[0]
    weights = matmul_weights(onnx.load(str(path)))
    config = codecs.make_config(args.codec, {})
    tasks = {name: (args.codec, w, config, None) for name, w in weights.items()}
    times, hashes = {}, {}
    for jobs in (1, args.jobs):
        start = time.perf_counter()
        hashes[jobs] = {n: e.sha256() for n, e in encode_many(tasks, jobs).items()}
        times[jobs] = time.perf_counter() - start
    total = sum(w.size for w in weights.values())
    print(f"{path.name}: {len(weights)} layers, {total / 1e6:.1f}M weights, codec {args.codec}")
    print(f"1 worker {times[1]:.2f} s; {args.jobs} workers {times[args.jobs]:.2f} s; "
          f"ratio {times[args.jobs] / times[1]:.2f}; bytes identical: {hashes[1] == hashes[args.jobs]}")


if __name__ == "__main__":
    main()

"""Rate-distortion of the bundled models: tans (budget B bits/weight) next to bie-bitplane (B bits), same layers.

Each model in ``models/`` is compiled with every MatMul/Gemm weight encoded
(``min_weights=0``; conv weights stay dense in both codecs), then run on
seeded random inputs (batch ``--batch``) next to the fp32 model in
onnxruntime. Reported per (model, codec, B): the stored bits/weight over the
encoded layers (everything counted: streams, tables, offsets, scales, headers)
and the output error against fp32, ``||y - y_fp32|| / ||y_fp32||`` over all
outputs. A budget the model's layers cannot reach (their fixed overheads are
larger) is reported as such.

    python benchmarks/tans_rate_distortion.py [--bits 2 3 4] [--batch 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import bie_compiler
from bie_compiler.errors import CodecError
from bie_compiler.frontend import load_model
from bie_compiler.models import write_all
from bie_compiler.parity import make_inputs, run_onnxruntime


def output_error(runner, model_path: Path, batch: int) -> float:
    inputs = make_inputs(runner.inputs, batch=batch, seed=0)
    got = np.concatenate([np.ravel(v) for v in runner.run(inputs).values()]).astype(np.float64)
    ref = np.concatenate([np.ravel(v) for v in run_onnxruntime(load_model(model_path), inputs)]).astype(np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def measure(model_path: Path, codec: str, options: dict, out: Path, batch: int) -> tuple[float, float] | str:
    try:
        artefact = bie_compiler.compile_model(model_path, out, codec, options, min_weights=0, progress=None)
    except CodecError as e:
        return str(e).split(": ", 1)[-1]
    runner = bie_compiler.load(artefact)
    return runner.manifest["totals"]["bits_per_weight"], output_error(runner, model_path, batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {path.stem: path for path in write_all(root / "models")}
        print("| model | B | tans bits/w | tans output error | bie-bitplane bits/w | bie-bitplane output error |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, path in models.items():
            for bits in args.bits:
                cells = []
                for codec, options in (("tans", {"bits_per_weight": float(bits)}), ("bie-bitplane", {"bits": bits})):
                    result = measure(path, codec, options, root / f"{name}-{codec}-{bits}", args.batch)
                    cells += [f"{result[0]:.3f}", f"{result[1]:.4f}"] if isinstance(result, tuple) else [result, "-"]
                print(f"| {name} | {bits} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

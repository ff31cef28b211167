"""Whole models against onnxruntime fp32: latency ratios of dense and encoded artefacts, in one run.

Cases (``--models`` picks a subset):

* ``encoder`` (all-MiniLM-L6-v2-shaped) at x (1, 128, 384), (8, 128, 384) and (1, 1, 384): dense
  (every weight left dense), ``bbs`` moderate, ``bie-bitplane --bits 4`` (each also with ``--lut-tables int8``)
  and ``int8``;
* ``mobilenet`` (MobileNetV2-shaped) at batch 1 and 8: dense, ``bbs`` moderate, ``bie-bitplane --bits 4``
  and ``int8`` (every codec encodes convs: decode + conv);
* the bundled ``mlp``, ``transformer`` and ``cnn`` at batch 1 and 8: dense and ``bbs`` moderate.

Each case is ``bie-compiler bench`` (``bie_compiler.bench``): the artefact and onnxruntime on the
source model, each in its own process with the same thread count (onnxruntime's idle workers not
spinning, the artefact's polling briefly, as a loaded artefact's do), single calls interleaved after a warm-up,
``--repeat`` of them or more until each side's add up to ``--min-seconds`` (the one-token and bundled cases'
calls of 0.05-3 ms: a median of ten such calls moved by 15-30 % between runs); ratio = median artefact / median
onnxruntime (> 1: slower). Every
artefact is compiled once with its symbolic dims kept and serves every shape; it is reused from
``--artefacts`` while its source model, codec options and the compiler's sources are unchanged.

Weight bytes: the bytes of every MatMul/Gemm/Conv weight as stored (``totals`` of the manifest, layers
left dense at fp32), and the ratio fp32 / stored. At one row of activations (encoder seq 1) a layer
reads each weight once, so an encoding that reads R times fewer bytes should be faster by a good part
of R: the table prints the speedup over onnxruntime next to R / 2 for those cases. Those cases run twice:
warm (calls back to back, the other side's calls in between) and with a cold cache (``bench``'s
``cold_cache``: each process rewrites twice the last-level cache before each timed call, so every
matmul reads its weights from memory, on both sides). They also print what the bytes allow end to end (issue 14's
bound): onnxruntime's time with only its weight matmuls made R times faster, ``1 / ((1 - s) + s / R)``, where ``s``
is the share of onnxruntime's kernel time in the source model's MatMul/Gemm nodes with a constant weight, from its
profiler at that shape in the same run (a node onnxruntime fused under another name counts as the rest). A codec whose
layers all stayed dense (no kernel for it on this branch) is reported as such.

    python benchmarks/models_speed.py [--models encoder mobilenet mlp transformer cnn] [--repeat 10]
                                      [--min-seconds 1] [--threads 2] [--artefacts out/speed] [--rebuild] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMPILER_SOURCES = [ROOT / d for d in ("bie_compiler", "passes", "codegen", "runtime")]
DENSE = ("dense", "bie-bitplane", {}, ("*",))  # (variant, codec, options, skip): --skip '*' keeps every weight dense
BBS = ("bbs", "bbs", {"preset": "moderate"}, ())
BITPLANE4 = ("bie-bitplane-4", "bie-bitplane", {"bits": 4}, ())
INT8 = ("int8", "int8", {}, ())
# the same encodings with the one-row GEMVs' exact float32 look-up tables (the default, auto, gives both int8 ones)
BBS_FP32 = ("bbs-fp32-tables", "bbs", {"preset": "moderate", "lut_tables": "fp32"}, ())
BITPLANE4_FP32 = ("bie-bitplane-4-fp32-tables", "bie-bitplane", {"bits": 4, "lut_tables": "fp32"}, ())
VARIANTS = {
    "encoder": [DENSE, BBS, BBS_FP32, BITPLANE4, BITPLANE4_FP32, INT8],
    "mobilenet": [DENSE, BBS, BITPLANE4, INT8],
    "mlp": [DENSE, BBS], "transformer": [DENSE, BBS], "cnn": [DENSE, BBS],
}
SHAPES = {  # the input's shape per case
    "encoder": [(1, 128, 384), (8, 128, 384), (1, 1, 384)],
    "mobilenet": [(1, 3, 224, 224), (8, 3, 224, 224)],
    "mlp": [(1, 256), (8, 256)], "transformer": [(1, 16, 128), (8, 16, 128)], "cnn": [(1, 3, 32, 32), (8, 3, 32, 32)],
}
ONE_ROW = {"encoder": (1, 1, 384)}  # the shapes at which a matmul reads each weight once per call


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="MODEL",
                   help=f"models to run (default: all of {', '.join(VARIANTS)})")
    p.add_argument("--repeat", type=int, default=10, help="timed calls of each side per case (default %(default)s)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="past --repeat, calls of a case continue until each side's add up to this (bench's "
                        "min_seconds; default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--artefacts", type=Path, default=ROOT / "out" / "speed", help="where artefacts are kept")
    p.add_argument("--rebuild", action="store_true", help="compile every artefact again")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def newest_source_mtime() -> float:
    return max(p.stat().st_mtime for d in COMPILER_SOURCES for p in d.rglob("*.py"))


def artefact_for(model: Path, out: Path, codec: str, options: dict, skip: tuple, rebuild: bool) -> tuple[Path, str]:
    """(artefact, "reused" or "compiled in N s"): compiled unless an up-to-date one of the same model and options exists."""
    import bie_compiler
    from bie_compiler.frontend import file_sha256
    from bie_compiler.runtime.artefact import MANIFEST, read_manifest

    if not rebuild and (out / MANIFEST).is_file():
        try:
            manifest = read_manifest(out)
        except bie_compiler.BieError:
            manifest = None
        if (manifest is not None and manifest["source_model"]["sha256"] == file_sha256(model)
                and manifest["codec"]["name"] == codec and manifest["codec"]["options"] == options
                and manifest["codec"]["skip"] == list(skip)
                and (out / MANIFEST).stat().st_mtime > newest_source_mtime()):
            return out, "reused"
    started = time.perf_counter()
    bie_compiler.compile_model(model, out, codec, options, skip=skip, progress=None)
    return out, f"compiled in {time.perf_counter() - started:.0f} s"


def weight_matmul_share(model: Path, inputs: dict, threads: int, calls: int = 200) -> float:
    """The share of onnxruntime's kernel time (its profiler's node events over ``calls`` calls on ``inputs``) spent in
    the nodes of ``model`` that multiply by a constant weight (MatMul/Gemm whose second input is an initializer)."""
    import json
    import tempfile

    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    weighted = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants}
    with tempfile.TemporaryDirectory() as folder:
        session = common.ort_session(str(model), threads, profile_prefix=str(Path(folder) / "ort"))
        for _ in range(calls):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    suffix = "_kernel_time"
    kernels = [(e["name"][:-len(suffix)], e["dur"]) for e in events
               if e.get("cat") == "Node" and e["name"].endswith(suffix)]
    return sum(d for name, d in kernels if name in weighted) / sum(d for _, d in kernels)


def bytes_allow(share: float, ratio: float) -> float:
    """The speedup over onnxruntime that weights read ``ratio`` times fewer bytes allow, ``share`` of its time being
    in the weight matmuls and the rest unchanged."""
    return 1 / ((1 - share) + share / ratio)


def run(args) -> dict:
    import bie_compiler
    from bie_compiler.bench import bench
    from bie_compiler.models import write_all
    from bie_compiler.parity import make_inputs
    from bie_compiler.shapes import ShapeRequest, resolve

    models = {p.stem: p for p in write_all(args.artefacts / "models", args.models)}
    print(HEADER, flush=True)
    rows, shares = [], {}
    for name in args.models:
        for variant, codec, options, skip in VARIANTS[name]:
            out, how = artefact_for(models[name], args.artefacts / f"{name}-{variant}", codec, options, skip,
                                    args.rebuild)
            manifest = bie_compiler.load(out).manifest
            totals, layers = manifest["totals"], manifest["layers"]
            dense_reasons = sorted({l["fallback_reason"] for l in layers if l["fallback_reason"]})
            for shape in SHAPES[name]:
                spec = manifest["inputs"][0]
                inputs = make_inputs(resolve(manifest["inputs"], ShapeRequest({spec["name"]: shape})), seed=0)
                if ONE_ROW.get(name) == shape and name not in shares:
                    shares[name] = weight_matmul_share(models[name], inputs, args.threads)
                for cache in ("warm", "cold") if ONE_ROW.get(name) == shape else ("warm",):
                    res = bench(out, inputs, threads=args.threads, repeat=args.repeat, cold_cache=cache == "cold",
                                min_seconds=args.min_seconds)
                    row = case_row(name, variant, shape, cache, out, how, res, totals, dense_reasons, shares.get(name))
                    rows.append(row)
                    print(line(row), flush=True)
    return {"threads": args.threads, "repeat": args.repeat, "rows": rows}


def case_row(name, variant, shape, cache, out, how, res, totals, dense_reasons, share) -> dict:
    """One printed row: the figures of one ``bench`` of an artefact at one shape, warm or cold cache."""
    from bie_compiler.bench import ARTEFACT, ORT

    row = {"model": name, "variant": variant, "shape": list(shape), "cache": cache, "artefact": str(out), "built": how,
           "ratio": res["ratio"], "bie_ms": res[ARTEFACT]["median_ms"], "ort_ms": res[ORT]["median_ms"],
           "bie_p10_p90_ms": [res[ARTEFACT]["p10_ms"], res[ARTEFACT]["p90_ms"]],
           "ort_p10_p90_ms": [res[ORT]["p10_ms"], res[ORT]["p90_ms"]],
           "weight_bytes": totals["bytes_encoded"], "weight_bytes_fp32": totals["bytes_dense"],
           "weight_bytes_ratio": totals["bytes_dense"] / totals["bytes_encoded"],
           "encoded_layers": totals["encoded_layers"], "layers": totals["layers"],
           "dense_reasons": dense_reasons if variant != "dense" else [],
           "max_rel_err": max(res["max_rel_err"].values())}
    if ONE_ROW.get(name) == tuple(shape) and variant != "dense":
        row["speedup_over_ort"] = 1 / res["ratio"]
        row["half_weight_bytes_ratio"] = row["weight_bytes_ratio"] / 2
        row["ort_weight_matmul_share"] = share
        row["bytes_allow"] = bytes_allow(share, row["weight_bytes_ratio"])
    return row


HEADER = (f"{'model':12s}{'variant':16s}{'input':>16s}{'ratio':>8s}{'bie ms':>10s}{'ort ms':>10s}"
          f"{'fp32/stored B':>15s}{'encoded':>9s}{'max rel err':>12s}  note")


def line(row: dict) -> str:
    note = ["cold cache"] if row["cache"] == "cold" else []
    if "speedup_over_ort" in row:
        def verdict(bound: float) -> str:
            return "meets" if row["speedup_over_ort"] >= bound else "misses"

        note.append(f"one row: speedup {row['speedup_over_ort']:.2f}x vs bytes ratio/2 {row['half_weight_bytes_ratio']:.2f}"
                    f" ({verdict(row['half_weight_bytes_ratio'])}), vs what the bytes allow {row['bytes_allow']:.2f}"
                    f" ({verdict(row['bytes_allow'])}; onnxruntime's weight matmuls "
                    f"{100 * row['ort_weight_matmul_share']:.0f} %)")
    if row["variant"] != "dense" and row["encoded_layers"] == 0:
        note.append("every layer stayed dense: " + "; ".join(row["dense_reasons"]))
    elif row["variant"] != "dense" and row["encoded_layers"] < row["layers"]:
        note.append(f"{row['layers'] - row['encoded_layers']} layer(s) dense")
    return (f"{row['model']:12s}{row['variant']:16s}{'x'.join(map(str, row['shape'])):>16s}{row['ratio']:8.2f}"
            f"{row['bie_ms']:10.3f}{row['ort_ms']:10.3f}{row['weight_bytes_ratio']:15.2f}"
            f"{row['encoded_layers']:>4d}/{row['layers']:<4d}{row['max_rel_err']:12.2e}  {'; '.join(note)}")


def report(res: dict) -> None:
    print(f"\n{res['threads']} threads, median of {res['repeat']} interleaved calls per side; "
          "ratio = artefact / onnxruntime fp32 (> 1: slower)")
    print(HEADER)
    for row in res["rows"]:
        print(line(row))
    for artefact, built in dict((row["artefact"], row["built"]) for row in res["rows"]).items():
        print(f"{artefact}: {built}")


if __name__ == "__main__":
    common.main(parse_args, run, report)

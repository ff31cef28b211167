"""The ``bie-compiler`` command line: compile, check, run, bench, inspect."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings

from . import __version__, codecs
from .bench import EXTEND_LIMIT, WARMUP_SECONDS
from .codecs.lut_tables import INT8_KIND_SUFFIX
from .errors import BieError, BieWarning, OptionError
from .evaluation import LABELS
from .native_log import native_stderr_captured
from .parity import MIN_COSINE
from .progress import Event, print_progress

def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_override(text: str) -> tuple[str, dict]:
    """``PATTERN:key=value[,key=value...]``, e.g. ``'blocks.ffn.*:bits=8'`` or ``'fc1.weight:codec=bie-binary'``."""
    pattern, sep, body = text.rpartition(":")
    pairs = [p.split("=", 1) for p in body.split(",") if p]
    if not sep or not pattern or not pairs or any(len(p) != 2 for p in pairs):
        raise OptionError(f"--override {text!r}: expected PATTERN:key=value[,key=value...]")
    return pattern, {k.strip().replace("-", "_"): _value(v.strip()) for k, v in pairs}


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    """The inputs of a call: from a file, or seeded random ones of the given shapes."""
    parser.add_argument("--inputs", help=".npz of inputs by name (default: seeded random inputs)")
    _add_shape_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs")


def _add_shape_options(parser: argparse.ArgumentParser, compile_time: bool = False) -> None:
    what = "fix at import" if compile_time else "for the generated inputs"
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:AxBxC",
                        help=f"an input's whole shape, {what}, e.g. image:1x3x224x224 (repeatable)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                        help=f"a symbolic dimension's size wherever it appears, {what}, e.g. seq=128 (repeatable)")
    if not compile_time:
        parser.add_argument("--batch", type=int, default=None, metavar="B",
                            help="shorthand for --dim NAME=B, NAME being the symbolic dimension named like "
                                 "'batch' (else the first input's first dim); symbolic dims not set are 1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bie-compiler",
        description="Compile ONNX models into artefacts whose weights are bit-level compressed encodings.",
    )
    parser.add_argument("--version", action="version", version=f"bie-compiler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="compile an ONNX model into an artefact folder",
                       description="Encode the MatMul/Gemm weights of MODEL and build kernels that compute from them.")
    c.add_argument("model", help="the .onnx file")
    c.add_argument("-o", "--output", required=True, help="artefact folder to write (replaced atomically)")
    c.add_argument("--codec", default="bie-bitplane", choices=list(codecs.CODECS), help="weight codec (default %(default)s)")
    for option in codecs.option_fields():
        kind = {"action": "store_true"} if option.kind is bool else {"type": option.kind}
        c.add_argument(option.flag, **kind, default=None, help=option.help.replace("%", "%%"))
    c.add_argument("--target", default="llvm",
                   help="llvm (default); cuda (GPU kernels, host code for --mcpu); bitvert (bbs layers offloaded "
                        "to the simulated BitVert accelerator, the rest on the host)")
    c.add_argument("--calibration", metavar="DATA", default=None,
                   help="inputs by name (.npz), or a folder of such files: every codec rounds with error "
                        "feedback (GPTQ) on what each layer sees; bitvert also calibrates its INT8 "
                        "activation scales on them (default: data-free rounding; bitvert: seeded random inputs)")
    c.add_argument("--act-order", action="store_true",
                   help="with --calibration: round the columns with the largest inputs first (per-channel scales only)")
    c.add_argument("--mcpu", default=None, help="LLVM CPU name (default: this machine's)")
    c.add_argument("--arch", default=None, help="cuda: GPU architecture (default sm_90)")
    c.add_argument("--min-weights", type=int, default=1024, help="weights smaller than this stay dense (default %(default)s)")
    c.add_argument("--skip", action="append", default=[], metavar="PATTERN", help="keep matching weights dense (repeatable)")
    c.add_argument("--override", action="append", default=[], metavar="PATTERN:K=V[,K=V]",
                   help="per-layer codec options, e.g. 'blocks.ffn.*:bits=8' or 'fc1.weight:codec=bie-binary' (repeatable)")
    _add_shape_options(c, compile_time=True)
    c.add_argument("--preprocess", action="store_true",
                   help="run onnxruntime's basic graph optimizations before import (constant folding, BatchNorm "
                        "into Conv), for exports TVM cannot import as they are; prints what they changed")
    c.add_argument("--timing", action="store_true",
                   help="print the time of each compiler pass (TVM's pass timing; the kernels are then compiled on "
                        "one core)")
    c.add_argument("--jobs", type=int, default=None,
                   help="processes encoding layers at once (default: every core for models of 2M weights or more, "
                        "else 1); the artefact's bytes do not depend on it")
    c.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="encode the layers on the Ray cluster at ADDRESS ('auto', HOST:6379, ray://HOST:10001, or "
                        "'local' for a new one here; the ray extra), --jobs at once (default: one per cluster CPU); "
                        "the same bytes")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.add_argument("--verbose", action="store_true", help="also show TVM's own log (its warnings are hidden by default)")

    k = sub.add_parser("check", help="compare an artefact with onnxruntime (exit 1: it does not compute what its "
                                     "encodings define; exit 3: it does, but the outputs moved below --min-cosine)")
    k.add_argument("artefact", help="artefact folder")
    k.add_argument("--model", help="the source .onnx (default: the path recorded at compile time)")
    _add_input_options(k)
    k.add_argument("--tolerance", type=float, default=None,
                   help="max relative error against the decoded-weights model (default 1e-4; bitvert: 1e-3 against "
                        "the model with INT8 activations, see parity.BITVERT_TOLERANCE)")
    k.add_argument("--min-cosine", type=float, default=MIN_COSINE,
                   help="fidelity floor: the cosine of the artefact's outputs to the original model's (all outputs "
                        "together) must reach it (default %(default)s; 0 accepts any change the codec made)")
    k.add_argument("--json", action="store_true", help="print the figures as JSON")
    k.add_argument("--calibration", metavar="DATA", default=None,
                   help="the calibration data the artefact was compiled with, if moved from the path it records")

    r = sub.add_parser("run", help="run an artefact on inputs; with --report, the accelerator report of a bitvert artefact")
    r.add_argument("artefact", help="artefact folder")
    _add_input_options(r)
    r.add_argument("-o", "--output", help=".npz to write the outputs to (default: print their shapes)")
    r.add_argument("--report", metavar="JSON", help="write the simulated accelerator report here (bitvert artefacts)")
    r.add_argument("--planes", type=int, default=None, help=PLANES_HELP)
    r.add_argument("--check-finite", action="store_true",
                   help="refuse inputs holding NaN or Inf, and non-finite outputs of finite inputs (where encoded "
                        "kernels differ from onnxruntime: they skip zero weights, and sum in their own units)")

    e = sub.add_parser("eval", help="what the encodings cost on real data: the artefact against onnxruntime fp32 "
                                    "over many samples",
                       description="Per output, over every row of every sample: cosine and relative L2 error to "
                                   "onnxruntime fp32 on the source model; for classifier outputs top-1/top-5 "
                                   "agreement, KL divergence, and accuracy when samples carry labels. Mean +- "
                                   "standard error.")
    e.add_argument("artefact", help="artefact folder")
    e.add_argument("--data", required=True,
                   help=f"a .npz of inputs by name, or a folder of them (one call each); an int array "
                        f"'{LABELS}' holds the labels of a sample's rows")
    e.add_argument("--model", help="the source .onnx (default: the path recorded at compile time)")
    e.add_argument("--planes", type=int, default=None, help=PLANES_HELP)
    e.add_argument("--json", action="store_true", help="print the figures as JSON")

    b = sub.add_parser("bench", help="time an artefact against onnxruntime on its source model",
                       description="Interleaved timed calls of the artefact and of onnxruntime on the source model, "
                                   "each in its own process, same inputs and threads: median, p10/p90, peak memory.")
    b.add_argument("artefact", help="artefact folder")
    b.add_argument("--model", help="the .onnx onnxruntime runs (default: the path recorded at compile time)")
    _add_input_options(b)
    b.add_argument("--threads", type=int, default=None,
                   help="threads for both (TVM_NUM_THREADS, onnxruntime intra_op_num_threads; default: all cores)")
    b.add_argument("--repeat", type=int, default=20, help="timed calls of each (default %(default)s)")
    b.add_argument("--min-seconds", type=float, default=0.0,
                   help=f"past --repeat, keep timing until each side's timed calls add up to this many seconds (at "
                        f"most {EXTEND_LIMIT} x --repeat calls; default %(default)s): steadier medians of short calls")
    b.add_argument("--warmup", type=int, default=3,
                   help=f"untimed calls of each first, for at least {WARMUP_SECONDS:g} s (default %(default)s)")
    b.add_argument("--spin", action="store_true",
                   help="let onnxruntime's idle worker threads spin (its default); off by default, since they would "
                        "hold the cores through the artefact's calls (the artefact's workers poll briefly, then sleep)")
    b.add_argument("--cold-cache", action="store_true",
                   help="before each timed call (untimed) each process rewrites a buffer of twice the last-level "
                        "cache, so weights are read from memory")
    b.add_argument("--per-layer", action="store_true", help="also the artefact's time per kernel (VM instrument)")
    b.add_argument("--top", type=int, default=25, help="per-layer rows in the table (default %(default)s; --json has all)")
    b.add_argument("--json", action="store_true", help="print the figures as JSON")

    i = sub.add_parser("inspect", help="per-layer report of an artefact")
    i.add_argument("artefact", help="artefact folder")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_model_evaluation_commands(sub)
    for command in (k, e, r, i, b):
        command.add_argument("--expect-sha256", metavar="HEX", default=None,
                             help="refuse the artefact unless its manifest has this sha256 (printed by compile); "
                                  "checked before any of its code runs")
    return parser


def _compile(args) -> int:
    from .driver import compile_model
    from .shapes import request_from_options

    shapes = request_from_options(args.input_shape, args.dim)
    options = {option.name: getattr(args, option.name) for option in codecs.option_fields()}
    with native_stderr_captured(not args.verbose):
        out = compile_model(
            args.model, args.output, args.codec, options, target=args.target, mcpu=args.mcpu, arch=args.arch,
            min_weights=args.min_weights, skip=tuple(args.skip),
            overrides=tuple(parse_override(o) for o in args.override), calibration=args.calibration,
            input_shapes=shapes.input_shapes, dims=shapes.dims, act_order=args.act_order,
            progress=_timing_only if args.quiet and args.timing else None if args.quiet else print_progress,
            timing=args.timing, jobs=args.jobs, ray=args.ray, preprocess=args.preprocess,
        )
    from .runtime.artefact import manifest_sha256, read_manifest

    if not args.quiet:
        _print_report(read_manifest(out, verify_files=False))
    print(f"manifest sha256 {manifest_sha256(out)} (pin it: check/run {out} --expect-sha256 ...)", file=sys.stderr)
    return 0


def _timing_only(event: Event) -> None:
    """-q with --timing: the pass timing asked for, no other progress."""
    if event.stage == "timing":
        print_progress(event)


def _inputs(args, specs: list[dict]) -> dict:
    """The inputs check, run and bench use: the --inputs .npz, or seeded random ones of the requested shapes."""
    from .parity import make_inputs
    from .shapes import concrete, request_from_options, resolve, with_batch

    request = request_from_options(args.input_shape, args.dim)
    if args.inputs is not None:
        if request or args.batch is not None:
            raise OptionError("--inputs gives the inputs and their shapes: drop --input-shape, --dim and --batch")
        return make_inputs(specs, npz=args.inputs)
    return make_inputs(concrete(resolve(specs, with_batch(request, specs, args.batch))), seed=args.seed)


PLANES_HELP = ("keep only the top P magnitude planes of every bie-bitplane layer (progressive precision: the same "
               "artefact as a coarser model; the kernels still read every stored plane)")


def _eval(args) -> int:
    from . import load
    from .evaluation import evaluate, load_samples, table
    from .parity import session_of, source_model

    runner = load(args.artefact, args.expect_sha256, planes=args.planes)
    session = session_of(source_model(runner.manifest, args.model))
    result = evaluate(runner, session, load_samples(runner.inputs, args.data))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def _check(args) -> int:
    from . import load
    from .parity import check_artefact

    if args.tolerance is not None and not 0 < args.tolerance < float("inf"):
        raise OptionError(f"--tolerance must be a positive number, got {args.tolerance}")
    if not -1 <= args.min_cosine <= 1:
        raise OptionError(f"--min-cosine must be a number in -1..1, got {args.min_cosine}")
    runner = load(args.artefact, args.expect_sha256)
    inputs = _inputs(args, runner.inputs)
    result = check_artefact(runner, args.model, inputs, args.tolerance, args.calibration, args.min_cosine)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        reference = "decoded-weights model" if "implied_max_rel_err" not in result else "INT8-activation model"
        print(f"inputs: {result['inputs']}")
        print(f"vs original model:        max abs {result['max_abs_err']:.3e}  max rel {result['max_rel_err']:.3e}  cosine {result['cosine']:.6f}")
        if reference != "decoded-weights model":
            print(f"  (implied by INT8 activations and encoded weights: max rel {result['implied_max_rel_err']:.3e}  "
                  f"cosine {result['implied_cosine']:.6f})")
        print(f"vs {reference + ':':<22} max abs {result['decoded_max_abs_err']:.3e}  max rel {result['decoded_max_rel_err']:.3e}  (tolerance {result['tolerance']:.0e})")
        if "device_layers" in result:
            _print_device_layers(result["device_layers"])
        if "int8_table_layers" in result:
            _print_int8_table_layers(result["int8_table_layers"])
        if not result["passed"]:
            print("FAILED: the artefact does not compute what its encodings define")
        elif not result["faithful"]:
            print(f"FIDELITY LOW: compiled correctly, but the codec changed the outputs: cosine {result['cosine']:.4f} "
                  f"< {result['min_cosine']} (--min-cosine); use more bits, --skip the sensitive layers, or "
                  "--calibration")
        else:
            print(f"PASSED (computes its encodings; cosine {result['cosine']:.4f} >= {result['min_cosine']})")
    return 1 if not result["passed"] else 3 if not result["faithful"] else 0


def _print_device_layers(layers: list[dict]) -> None:
    from .parity import DEFAULT_TOLERANCE, LAYER_TOLERANCE

    worst = max((layer["device_rel_err"] for layer in layers), default=0.0)
    print(f"device layers: {len(layers)} offloaded, each against its reference on its own inputs: max rel {worst:.3e} "
          f"(tolerance {LAYER_TOLERANCE:.0e})")
    first = next((i for i, layer in enumerate(layers) if layer["flips"]), None)
    if first is not None:
        agree = max(layer["input_rel_diff"] for layer in layers[:first + 1])
        print(f"INT8 rounding flips from layer {layers[first]['layer']} on ({layers[first]['flips']} code(s) there, "
              f"{sum(layer['flips'] for layer in layers)} in all): the layer inputs agree to max rel {agree:.3e} up to "
              f"it (tolerance {DEFAULT_TOLERANCE:.0e}); past it the end-to-end difference is the flips'")


def _print_int8_table_layers(layers: list[dict]) -> None:
    checked = [layer for layer in layers if "unchecked" not in layer]
    effect = ("so the end-to-end difference above is theirs" if any(layer.get("in_model", True) for layer in layers)
              else "none run by the model on these inputs (above one row: exact, held to the tolerance)")
    print(f"int8 look-up tables: {len(layers)} GEMV(s) approximate, {effect}; "
          "each kernel on its layer's input in the decoded-weights model, against the exact product and its stated "
          "bound (relative to the layer's largest output):")
    for layer in checked:
        print(f"  {layer['layer']}: error {layer['error_rel']:.2e}, bound {layer['bound_rel']:.2e}"
              f"{'' if layer['passed'] else '  OUT OF BOUND'}")
    for layer in layers:
        if "unchecked" in layer:
            print(f"  {layer['layer']}: not checked ({layer['unchecked']})")


def _save_outputs(path: str, outputs: dict) -> None:
    """Write the outputs as .npz at exactly ``path`` (numpy would add .npz), atomically; never over a folder."""
    import numpy as np

    if os.path.isdir(path):
        raise OptionError(f"-o {path}: is a folder; give a file name for the .npz")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **outputs)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OptionError(f"-o {path}: cannot write the outputs ({e.strerror})") from None


SMALL_WEIGHTS = 1024  # other weights below this many values are summed up in one line of the report


def _print_report(manifest: dict) -> None:
    rows = [("layer", "codec", "shape", "bits/w", "dense B", "encoded B", "node", "note")]

    def row(layer: dict, note: str) -> tuple:
        nodes = layer["details"].get("nodes")  # free JSON in the schema: shown as text whatever it holds
        return (layer["name"], layer["codec"], "x".join(map(str, layer["shape"])), f"{layer['bits_per_weight']:.3f}",
                str(layer["bytes_dense"]), str(layer["bytes_encoded"]),
                ", ".join(map(str, nodes)) if isinstance(nodes, list) else "", note or "")

    # the layers whose batch-1 GEMV got int8 look-up tables (--lut-tables): their kernels' names say so
    int8_tables = {name for symbol, names in manifest["kernel_layers"].items()
                   if symbol.endswith(INT8_KIND_SUFFIX) for name in names.split(", ")}
    for layer in manifest["layers"]:
        note, d = layer["fallback_reason"] or "", layer["details"]
        if layer["name"] in int8_tables:
            note = "int8 look-up tables at batch 1"
        if "index_bytes_global" in d:
            note = f"indices {d.get('index_bytes_blocked')} B vs {d['index_bytes_global']} B global"
        if str(d.get("kernel.blocked_execution", "")).startswith("load"):  # bie-blocked's auto|load|stream choice
            note += "; runs from a bitmap decoded at load"
        if "offloaded_to" in d:
            note = f"offloaded to {d['offloaded_to']} (INT8 activations, scale {d.get('activation_scale')})"
        rows.append(row(layer, note))
    others = manifest["other_weights"]
    large = [o for o in others if _count(o["shape"]) >= SMALL_WEIGHTS]
    rows += [row(o, o["fallback_reason"]) for o in large]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    small = [o for o in others if _count(o["shape"]) < SMALL_WEIGHTS]
    if small:
        print(f"and {len(small)} small weight(s) (biases, norms) stored dense: {sum(o['bytes_dense'] for o in small)} bytes")
    t, m = manifest["totals"], manifest["model_totals"]
    kinds = "matmul, conv and gather" if any(r["op"] == "gather" for r in manifest["layers"]) else "matmul and conv"
    print(f"{kinds} weights: {t['encoded_layers']}/{t['layers']} encoded, {t['bytes_dense']} -> "
          f"{t['bytes_encoded']} bytes ({t['bits_per_weight']} bits/weight, {t['compression']}x)")
    if m["bytes_source"] != m["bytes_dense"]:
        print(f"the source model stores them in {m['bytes_source']} bytes (integers or half floats it widens in its graph)")
    print(f"whole model: {m['weights']} weights, {m['bytes_dense']} -> {m['bytes_encoded']} bytes "
          f"({m['bits_per_weight']} bits/weight, {m['compression']}x); model.so {manifest['files']['model.so']['bytes']} "
          f"bytes, weights.bin {manifest['files']['weights.bin']['bytes']} bytes")


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _run(args) -> int:
    from . import load

    runner = load(args.artefact, args.expect_sha256, args.check_finite, args.planes)
    if args.report and "bitvert" not in runner.manifest:
        raise OptionError(f"--report: {args.artefact} was compiled for {runner.manifest['target']['kind']!r}; "
                          "the accelerator report needs an artefact compiled with --target bitvert")
    if args.report and not runner.manifest["bitvert"]["layers"]:
        raise OptionError(f"--report: no layer of {args.artefact} was offloaded to bitvert (only bbs-encoded layers are)")
    from .runtime.bitvert import device

    device.RUN_LOG.clear()
    outputs = runner(_inputs(args, runner.inputs))
    if args.output:
        _save_outputs(args.output, outputs)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}")
    if args.report:
        from .runtime.bitvert import report

        result = report.from_run(runner.manifest["bitvert"]["layers"], device.RUN_LOG)
        with open(args.report, "w") as f:
            json.dump(result, f, indent=1)
        print(report.table(result))
    return 0


def _bench(args) -> int:
    from .bench import bench, table
    from .runtime.artefact import read_manifest

    inputs = _inputs(args, read_manifest(args.artefact, expect_sha256=args.expect_sha256)["inputs"])
    result = bench(args.artefact, inputs, args.model, args.threads, args.repeat, args.warmup, args.spin, args.per_layer,
                   args.cold_cache, args.min_seconds)
    print(json.dumps(result, indent=2) if args.json else table(result, args.top))
    return 0


def _inspect(args) -> int:
    from .runtime.artefact import read_manifest

    manifest = read_manifest(args.artefact, expect_sha256=args.expect_sha256)
    if args.json:
        keys = ("source_model", "codec", "target", "inputs", "fixed_shapes", "outputs", "layers", "totals", "other_weights",
                "model_totals", "files", "bie_compiler_version",
                "device_code")
        print(json.dumps({k: manifest[k] for k in keys if k in manifest}, indent=2))
    else:
        target = manifest["target"]
        where = f"{target['arch']}, host {target['mcpu']}" if "arch" in target else target["mcpu"]
        print(f"{args.artefact}: {manifest['codec']['name']} for {target['kind']} "
              f"({where}), from {manifest['source_model']['path'] or 'an in-memory model'}")
        print("inputs: " + ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in manifest["inputs"]))
        _print_report(manifest)
        if "device_code" in manifest:
            device = manifest["device_code"]
            print(f"device code: {device['source']}; GPU kernels of the encoded layers:")
            for layer, kernels in device["layer_kernels"].items():
                print(f"  {layer}: {', '.join(kernels)}")
    return 0


# ---- analyze and zoo: what codecs cost a model (onnxruntime only), and real models with their data ----

def _add_model_evaluation_commands(sub) -> None:
    a = sub.add_parser("analyze", help="per-layer sensitivity and a rate-distortion sweep of the codecs on a model "
                                       "(onnxruntime, no compile), as report.json, CSV, PNG and report.html",
                       description="Per weight layer: the weight error (SQNR, relative L2) and the output error with "
                                   "only that layer encoded; the whole model per codec setting, against "
                                   "onnxruntime MatMulNBits and fp16; compile lines for the most sensitive layers.")
    a.add_argument("model", help="the .onnx file")
    a.add_argument("-o", "--output", required=True, help="folder to write the report into")
    a.add_argument("--codec", action="append", default=[], metavar="CODEC[:K=V,...]",
                   help="a codec to analyze, with options for its per-layer figures, e.g. bie-bitplane:bits=3 "
                        "(repeatable; default: every codec at its defaults); the sweep covers each one's settings")
    a.add_argument("--data", help=f"a .npz of inputs by name, or a folder of them; an int array '{LABELS}' holds "
                                  "labels (default: seeded random inputs, a floor: judge a model on its own data)")
    _add_shape_options(a)
    a.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    a.add_argument("--calibration", metavar="DATA", default=None,
                   help="round with error feedback on these inputs (as compile --calibration); the sweep shows "
                        "both roundings")
    a.add_argument("--min-weights", type=int, default=1024, help="as compile (default %(default)s)")
    a.add_argument("--skip", action="append", default=[], metavar="PATTERN", help="as compile (repeatable)")
    a.add_argument("--override", action="append", default=[], metavar="PATTERN:K=V[,K=V]",
                   help="as compile (repeatable)")
    a.add_argument("--metric", default=None,
                   help="the task figure of the first output to rank and plot by: any of eval's (accuracy, "
                        "top1_agreement, cosine, ...; default: accuracy with labels, else cosine)")
    a.add_argument("--top", type=int, default=3, help="sensitive layers the compile lines treat (default %(default)s)")
    a.add_argument("--no-sweep", action="store_true", help="only the codecs as given: no sweep, no references")
    a.add_argument("--jobs", type=int, default=None, help="processes encoding layers at once (as compile)")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    from .zoo import ENTRIES

    z = sub.add_parser("zoo", help="build a real trained model with its evaluation data into the cache",
                       description="Each entry: model.onnx, data/ (evaluation samples, labels where they exist), "
                                   "calibration/ and entry.json, in $BIE_ZOO_CACHE or ~/.cache/bie-compiler/zoo. "
                                   "Entries: " + "; ".join(f"{e.name}: {e.about}" for e in ENTRIES.values()))
    z.add_argument("name", choices=list(ENTRIES), help="the entry")
    z.add_argument("-o", "--output", default=None, help="folder to build it in instead of the cache")
    z.add_argument("--force", action="store_true", help="build again even if it is there")


def parse_codec_spec(text: str):
    """``bie-bitplane`` or ``bie-bitplane:bits=3,group_size=32`` as an ``analysis.CodecSpec``."""
    from .analysis import CodecSpec

    codec, _, body = text.partition(":")
    pairs = [p.split("=", 1) for p in body.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs) or (body and not pairs):
        raise OptionError(f"--codec {text!r}: expected CODEC or CODEC:key=value[,key=value...]")
    spec = CodecSpec(codec.strip(), {k.strip().replace("-", "_"): _value(v.strip()) for k, v in pairs})
    codecs.make_config(spec.codec, spec.options)  # an unknown codec or option: one line, before any work
    return spec


def _analyze(args) -> int:
    from .analysis import CodecSpec, Policy, analyze, check_options
    from .analysis_report import FILES, require_matplotlib, summary, write
    from .evaluation import load_samples
    from .frontend import load_model, model_inputs
    from .parity import make_inputs
    from .shapes import concrete, request_from_options, resolve, with_batch

    require_matplotlib()
    specs = [parse_codec_spec(t) for t in args.codec] or [CodecSpec(c) for c in codecs.CODECS]
    policy = Policy(args.min_weights, tuple(args.skip), tuple(parse_override(o) for o in args.override))
    check_options(specs, policy, args.top)
    inputs = model_inputs(load_model(args.model))
    request = request_from_options(args.input_shape, args.dim)
    if args.data is not None:
        if request or args.batch is not None:
            raise OptionError("--data gives the inputs and their shapes: drop --input-shape, --dim and --batch")
        samples = load_samples(inputs, args.data)
    else:
        warnings.warn("no --data: seeded random inputs, a floor; judge a model on its own data", BieWarning)
        batch = 8 if args.batch is None else args.batch  # a few rows, so the means mean something
        samples = [("random", make_inputs(concrete(resolve(inputs, with_batch(request, inputs, batch))),
                                          seed=args.seed), None)]
    progress = (lambda message: None) if args.quiet else (lambda message: print(f"analyze: {message}", file=sys.stderr,
                                                                                 flush=True))
    report = analyze(args.model, specs, samples, policy, args.calibration, args.top, not args.no_sweep, progress,
                     args.jobs, args.metric)
    out = write(report, args.output)
    print(summary(report))
    print(f"wrote {', '.join(str(out / f) for f in FILES)}", file=sys.stderr)
    return 0


def _zoo(args) -> int:
    from .zoo import build, describe

    folder = build(args.name, args.output, args.force, lambda message: print(f"zoo: {message}", file=sys.stderr))
    entry = describe(folder)
    options = " ".join(entry["compile_options"])
    model, data = folder / entry["model"], folder / entry["data"]
    print(f"{folder}: {entry['about']}\n  model {model}\n  data {data}\n  calibration {folder / entry['calibration']}")
    print(f"  bie-compiler analyze {model} --data {data} -o {folder / 'analysis'}")
    print(f"  bie-compiler compile {model} {options + ' ' if options else ''}-o out/{args.name} && "
          f"bie-compiler eval out/{args.name} --data {data}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, BieWarning):
        print(f"bie-compiler: warning: {message}", file=sys.stderr, flush=True)
    else:  # a library's warning: keep Python's form, it names its source
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    args = _parser().parse_args(argv)
    try:
        commands = {"compile": _compile, "check": _check, "eval": _eval, "run": _run, "bench": _bench,
                    "inspect": _inspect, "analyze": _analyze, "zoo": _zoo}
        return commands[args.command](args)
    except BieError as e:
        print(f"bie-compiler: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bie-compiler: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (``inspect | head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""``analyze``: what each codec costs a model, layer by layer and over its settings, measured with onnxruntime.

For each codec asked for (with its options): every weight layer encoded as ``compile`` would encode it, then
per layer the weight error (SQNR, relative L2) and the output error with only that layer's weight replaced by
its decoding (its sensitivity); the whole model so encoded; and ready ``--override``/``--skip`` lines for the
most sensitive layers, each measured. Then a rate-distortion sweep over each codec's :data:`SETTINGS`, with
onnxruntime's ``MatMulNBits`` (RTN, blocks of 32 and 128) and fp16 weights as reference points. Every output
figure is ``eval``'s (:mod:`.evaluation`), against onnxruntime fp32 on the same samples; no TVM build is needed
(an artefact computes the decoded-weights model, see :mod:`.decoded_weights`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import codecs
from .decoded_weights import encode_model, initializer_arrays, weight_aliases, weight_layers, with_weights
from .errors import OptionError
from .evaluation import Scorer
from .frontend import file_sha256
from .ort_reference import fp16_weights, matmul_nbits, nbits_bytes
from .parity import session_of

SCHEMA = "bie-compiler analyze 1"

# The rate-distortion sweep: per codec, (label, options), coarsest first.
SETTINGS: dict[str, list[tuple[str, dict]]] = {
    "bie-bitplane": [("2 bits", {"bits": 2}), ("3 bits", {"bits": 3}), ("4 bits", {"bits": 4}),
                     ("4 bits, group 32", {"bits": 4, "group_size": 32}), ("5 bits", {"bits": 5}),
                     ("6 bits", {"bits": 6}), ("8 bits", {"bits": 8})],
    "bie-binary": [("ternary", {}), ("ternary, density 0.5", {"density": 0.5})],
    "bie-blocked": [("ternary", {}), ("ternary, density 0.5", {"density": 0.5})],
    "tans": [("7 levels", {"levels": 7}), ("15 levels", {"levels": 15}), ("31 levels", {"levels": 31}),
             ("63 levels", {"levels": 63})],
    "int8": [("per channel", {})],
    "bbs": [("moderate", {"preset": "moderate"}), ("conservative", {"preset": "conservative"})],
    "bitwave": [("4 pruned columns", {"pruned_columns": 4}), ("2 pruned columns", {"pruned_columns": 2})],
}
# What a sensitive layer is given instead by the suggested --override line (None: only --skip helps).
SAFER: dict[str, dict | None] = {
    "bie-bitplane": {"bits": 8}, "tans": {"levels": 63}, "bbs": {"preset": "conservative"},
    "bitwave": {"pruned_columns": 1}, "bie-binary": {"codec": "int8"}, "bie-blocked": {"codec": "int8"},
    "int8": None,
}
NBITS_REFERENCES = [(4, 32), (4, 128)]  # onnxruntime MatMulNBits (bits, block size)


@dataclass(frozen=True)
class CodecSpec:
    """A codec and its options, as ``--codec CODEC[:key=value,...]`` gives them."""

    codec: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.codec + "".join(f" {k}={v}" for k, v in self.options.items())

    def flags(self) -> list[str]:
        """The ``compile`` options that select it."""
        return ["--codec", self.codec, *[a for k, v in self.options.items() for a in (f"--{k.replace('_', '-')}", str(v))]]


def headline(result: dict) -> dict:
    """The figures a point is ranked and plotted by, from an ``eval`` result: the first output's mean relative L2
    and cosine to fp32, and its task figure (accuracy with labels, else top-1 agreement for a classifier, else
    cosine), with the name of that figure."""
    figures = next(iter(result["outputs"].values()))
    task = next(m for m in ("accuracy", "top1_agreement", "cosine") if m in figures)
    return {"rel_l2": figures["rel_l2"]["mean"], "cosine": figures["cosine"]["mean"],
            "task_metric": task, "task": figures[task]["mean"]}


def weight_error(weight: np.ndarray, decoded: np.ndarray) -> dict:
    """SQNR (dB) and relative L2 of a decoded weight."""
    w = np.asarray(weight, np.float64)
    err = float(np.sum((w - decoded) ** 2))
    energy = float(np.sum(w**2))
    return {"sqnr_db": 10 * np.log10(energy / err) if err > 0 else float("inf"),
            "rel_l2": float(np.sqrt(err / energy)) if energy > 0 else 0.0}


class Bench:
    """The fp32 model, its samples and their fp32 outputs (computed once): scores a variant of the model."""

    def __init__(self, model: onnx.ModelProto, samples: list[tuple[str, dict, np.ndarray | None]]):
        self.model, self.samples = model, samples
        self.names = [o.name for o in model.graph.output]
        session = session_of(model)
        self.references = [session.run(self.names, inputs) for _, inputs, _ in samples]
        fp32 = next(iter(self.score(model)["outputs"].values()))
        self.rows = fp32["cosine"]["rows"]
        self.fp32_task = {m: v["mean"] for m, v in fp32.items() if m.endswith("fp32")}

    def score(self, model: onnx.ModelProto) -> dict:
        session = session_of(model)
        scorer = Scorer(self.names)
        for (origin, inputs, labels), references in zip(self.samples, self.references):
            scorer.add(origin, dict(zip(self.names, session.run(self.names, inputs))), references, labels)
        return scorer.result()

    def point(self, model: onnx.ModelProto, **about) -> dict:
        result = self.score(model)
        return {**about, **headline(result), "result": result}


@dataclass
class Policy:
    """Which layers ``compile`` encodes besides the codec: ``--min-weights``, ``--skip``, ``--override``."""

    min_weights: int = 1024
    skip: tuple[str, ...] = ()
    overrides: tuple[tuple[str, dict], ...] = ()

    def flags(self) -> list[str]:
        out = [] if self.min_weights == 1024 else ["--min-weights", str(self.min_weights)]
        out += [a for p in self.skip for a in ("--skip", p)]
        return out + [a for p, o in self.overrides for a in ("--override", f"{p}:" + ",".join(f"{k}={v}" for k, v in o.items()))]


def check_options(specs: list[CodecSpec], policy: Policy, top: int) -> None:
    """OptionError for a bad codec option, override, ``--min-weights`` or ``--top``, before any work."""
    from .passes.policy import EncodingPolicy

    if top < 0:
        raise OptionError(f"--top must be >= 0, got {top}")
    for spec in specs:
        EncodingPolicy(spec.codec, spec.options, policy.min_weights, policy.skip, policy.overrides)


def analyze(model_path: str | Path, specs: list[CodecSpec], samples: list, policy: Policy = Policy(),
            calibration: str | Path | None = None, top: int = 3, sweep: bool = True,
            progress: Callable[[str], None] = lambda message: None, jobs: int | None = None) -> dict:
    """The ``analyze`` report (a JSON-able dict, :data:`SCHEMA`) of the model at ``model_path``."""
    from .frontend import load_model, model_inputs
    from .passes.policy import EncodingPolicy

    check_options(specs, policy, top)
    model = load_model(model_path)
    layers = weight_layers(model)
    if not layers:
        raise OptionError(f"{model_path}: no MatMul, Gemm or 2-D Conv reads a constant weight: nothing to analyze")
    weights = initializer_arrays(model, [layer.name for layer in layers])
    aliases = weight_aliases(model)

    def encoding_policy(spec: CodecSpec, skip=(), overrides=()) -> EncodingPolicy:
        return EncodingPolicy(spec.codec, spec.options, policy.min_weights, policy.skip + tuple(skip),
                              policy.overrides + tuple(overrides), aliases)

    progress(f"{model_path}: {len(layers)} weight layer(s), {len(samples)} sample file(s); fp32 outputs")
    bench = Bench(model, samples)
    calibrations = {}
    if calibration is not None:
        from .calibration import calibration_inputs, layer_calibrations
        from .codecs.feedback import DAMPING

        progress(f"capturing the inputs of {len(layers)} layer(s) on {calibration}")
        usable = [layer.name for layer in layers if layer.fallback_reason is None]
        calibrations = layer_calibrations(model, usable, calibration_inputs(model_inputs(model), calibration),
                                          DAMPING, act_order=False)

    def encoded(spec: CodecSpec, fed: bool, **changes):
        return encode_model(weights, layers, encoding_policy(spec, **changes), calibrations if fed else None, jobs)

    mode = "feedback" if calibrations else "rtn"
    report = {
        "schema": SCHEMA,
        "model": {"path": str(Path(model_path).absolute()), "sha256": file_sha256(model_path)},
        "samples": len(samples), "rows": bench.rows,
        "labels": any(labels is not None for _, _, labels in samples),
        "fp32": bench.fp32_task,
        "calibration": str(calibration) if calibration is not None else None,
        "policy": {"min_weights": policy.min_weights, "skip": list(policy.skip),
                   "overrides": [[p, o] for p, o in policy.overrides]},
        "layers": [{"name": r.name, "op": r.op, "shape": r.shape, "weights": r.num_weights,
                    "unsupported": r.fallback_reason, "codecs": {}} for r in layers],
        "codecs": [],
        "sweep": [],
        "references": [],
    }
    by_name = {entry["name"]: entry for entry in report["layers"]}
    for spec in specs:
        progress(f"{spec.label}: encoding every layer ({mode})")
        whole = encoded(spec, bool(calibrations))
        point = bench.point(with_weights(model, whole.decoded), label=spec.label, codec=spec.codec,
                            options=spec.options, mode=mode, bits_per_weight=whole.bits_per_weight,
                            seconds=whole.seconds)
        sensitivities = {}
        for i, record in enumerate(whole.records, 1):
            entry = by_name[record.name]["codecs"][spec.label] = {
                "codec": record.codec, "bits_per_weight": record.bits_per_weight, "dense": record.fallback_reason}
            if record.name not in whole.decoded:
                continue
            progress(f"{spec.label}: layer {i}/{len(whole.records)} {record.name}")
            decoded = whole.decoded[record.name]
            entry.update(weight_error(weights[record.name], decoded))
            alone = bench.point(with_weights(model, {record.name: decoded}))
            entry["output"] = {k: alone[k] for k in ("rel_l2", "cosine", "task_metric", "task")}
            sensitivities[record.name] = alone["rel_l2"]
        ranked = sorted(sensitivities, key=sensitivities.get, reverse=True)
        treated = ranked[:min(top, max(1, len(ranked) - 1))]  # not every layer: that would be another codec
        report["codecs"].append({**point, "ranking": ranked,
                                 "suggestions": _suggestions(spec, treated, model_path, policy, calibration,
                                                             lambda **c: encoded(spec, bool(calibrations), **c),
                                                             bench, model, progress)})
    if sweep:
        for codec in dict.fromkeys(spec.codec for spec in specs):
            for label, options in SETTINGS[codec]:
                spec = CodecSpec(codec, options)
                modes = [("rtn", False)] + ([("feedback", True)] if calibrations and codecs.takes_calibration(codec)
                                            else [])
                for mode_name, fed in modes:
                    progress(f"sweep: {codec} {label} ({mode_name})")
                    result = encoded(spec, fed)
                    report["sweep"].append(bench.point(
                        with_weights(model, result.decoded), label=f"{codec} {label}", codec=codec, options=options,
                        mode=mode_name, bits_per_weight=result.bits_per_weight, seconds=result.seconds))
        report["references"] = _references(model, layers, weights, bench, progress)
    return report


def _suggestions(spec: CodecSpec, sensitive: list[str], model_path, policy: Policy, calibration,
                 encode: Callable, bench: Bench, model: onnx.ModelProto, progress) -> list[dict]:
    """``compile`` lines that treat the ``sensitive`` layers differently, each with what it measured."""
    if not sensitive:
        return []
    base = ["bie-compiler", "compile", str(model_path), *spec.flags(), *policy.flags(),
            *(["--calibration", str(calibration)] if calibration is not None else [])]
    safer = SAFER[spec.codec]
    choices = []
    if safer is not None:
        choices.append(("override", {"overrides": [(name, safer) for name in sensitive]},
                        [a for name in sensitive for a in ("--override", f"{name}:" + ",".join(
                            f"{k}={v}" for k, v in safer.items()))]))
    choices.append(("skip", {"skip": sensitive}, [a for name in sensitive for a in ("--skip", name)]))
    out = []
    for kind, change, flags in choices:
        progress(f"{spec.label}: the {len(sensitive)} most sensitive layer(s) with --{kind}")
        result = encode(**change)
        point = bench.point(with_weights(model, result.decoded))
        out.append({"kind": kind, "layers": sensitive, "command": shlex.join([*base, *flags, "-o", "out/"]),
                    "bits_per_weight": result.bits_per_weight,
                    **{k: point[k] for k in ("rel_l2", "cosine", "task_metric", "task")}})
    return out


def _references(model: onnx.ModelProto, layers, weights: dict, bench: Bench, progress) -> list[dict]:
    """fp16 weights and onnxruntime's MatMulNBits, on the same layers' weights (bits/weight over all of them)."""
    usable = {r.name: r.bytes_dense for r in layers if r.fallback_reason is None}
    count = sum(r.num_weights for r in layers)
    dense_rest = sum(r.bytes_dense for r in layers if r.name not in usable)
    progress("references: fp16 weights")
    points = [bench.point(with_weights(model, fp16_weights({n: weights[n] for n in usable})), label="fp16 weights",
                          codec="fp16", mode="reference", bits_per_weight=8 * (sum(usable.values()) / 2 + dense_rest) / count)]
    for bits, block in NBITS_REFERENCES:
        label = f"onnxruntime MatMulNBits {bits}-bit block {block} (RTN)"
        progress(f"references: {label}")
        quantized, why = matmul_nbits(model, bits, block)
        if quantized is None:
            points.append({"label": label, "codec": "matmulnbits", "mode": "reference", "skipped": why})
            continue
        stored = nbits_bytes(quantized, bits, usable) + dense_rest
        points.append(bench.point(quantized, label=label, codec="matmulnbits", mode="reference",
                                  bits_per_weight=8 * stored / count))
    return points

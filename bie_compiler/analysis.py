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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import codecs
from .decoded_weights import EncodedModel, encode_model, initializer_arrays, weight_aliases, weight_layers, with_weights
from .errors import BieError, OptionError
from .evaluation import Scorer
from .frontend import file_sha256
from .ort_reference import NbitsMode, fp16_weights, matmul_nbits, nbits_bytes
from .parity import session_of
from .sensitivity import layer_sensitivities

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
    "nwc": [("quality 3", {"quality": 3}), ("quality 6", {"quality": 6}), ("quality 9", {"quality": 9}),
            ("quality 12", {"quality": 12})],
}
# What a sensitive layer is given instead by the suggested --override line (None: only --skip helps).
SAFER: dict[str, dict | None] = {
    "bie-bitplane": {"bits": 8}, "tans": {"levels": 63}, "bbs": {"preset": "conservative"},
    "bitwave": {"pruned_columns": 1}, "bie-binary": {"codec": "int8"}, "bie-blocked": {"codec": "int8"},
    "int8": None, "nwc": {"quality": 12},
}
NBITS_REFERENCES = (NbitsMode(4, 32), NbitsMode(4, 128))  # onnxruntime MatMulNBits, RTN
HEADLINE = ("rel_l2", "cosine", "task_metric", "task")  # the figures a point is ranked and plotted by


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
        flags = [a for k, v in self.options.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        return ["--codec", self.codec, *flags]


def headline(result: dict, metric: str | None = None) -> dict:
    """The figures a point is ranked and plotted by, from an ``eval`` result: the first output's mean relative L2
    and cosine to fp32, and its task figure ``metric`` (default: accuracy with labels, else cosine), named."""
    figures = next(iter(result["outputs"].values()))
    task = metric or ("accuracy" if "accuracy" in figures else "cosine")
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

    def __init__(self, model: onnx.ModelProto, samples: list[tuple[str, dict, np.ndarray | None]],
                 metric: str | None = None):
        self.model, self.samples, self.metric = model, samples, metric
        self.names = [o.name for o in model.graph.output]
        session = session_of(model)
        self.references = [session.run(self.names, inputs) for _, inputs, _ in samples]
        fp32 = next(iter(self.score(model)["outputs"].values()))
        if metric is not None and metric not in fp32:
            raise OptionError(f"--metric {metric}: not a figure of output {self.names[0]!r} on this data "
                              f"(it has: {', '.join(fp32)})")
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
        return {**about, **headline(result, self.metric), "result": result}


@dataclass
class Policy:
    """Which layers ``compile`` encodes besides the codec: ``--min-weights``, ``--skip``, ``--override``."""

    min_weights: int = 1024
    skip: tuple[str, ...] = ()
    overrides: tuple[tuple[str, dict], ...] = ()

    def flags(self) -> list[str]:
        out = [] if self.min_weights == 1024 else ["--min-weights", str(self.min_weights)]
        out += [a for p in self.skip for a in ("--skip", p)]
        overrides = [f"{p}:" + ",".join(f"{k}={v}" for k, v in o.items()) for p, o in self.overrides]
        return out + [a for o in overrides for a in ("--override", o)]


def _refused(codec: str, options: dict, override: dict) -> bool:
    """Whether ``override`` cannot apply over ``options`` (e.g. tANS levels over a bits-per-weight budget)."""
    from .passes.policy import apply_override

    try:
        codecs.make_config(*apply_override(codec, options, override))
    except BieError:
        return True
    return False


def check_options(specs: list[CodecSpec], policy: Policy, top: int) -> None:
    """OptionError for a bad codec option, override, ``--min-weights`` or ``--top``, before any work."""
    from .passes.policy import EncodingPolicy

    if top < 0:
        raise OptionError(f"--top must be >= 0, got {top}")
    for spec in specs:
        EncodingPolicy(spec.codec, spec.options, policy.min_weights, policy.skip, policy.overrides)


class ModelUnderAnalysis:
    """A model, its weight layers, its samples with their fp32 outputs and (optionally) its calibration: encodes
    it under a codec and measures the result."""

    def __init__(self, model_path: str | Path, samples: list, policy: Policy = Policy(),
                 calibration: str | Path | None = None, jobs: int | None = None,
                 progress: Callable[[str], None] = lambda message: None, metric: str | None = None,
                 act_order: bool = False):
        from .frontend import load_model, model_inputs

        self.path, self.policy, self.calibration, self.jobs = model_path, policy, calibration, jobs
        self.model = load_model(model_path)
        self.layers = weight_layers(self.model)
        if not self.layers:
            raise OptionError(f"{model_path}: no MatMul, Gemm or 2-D Conv reads a constant weight: nothing to analyze")
        self.weights = initializer_arrays(self.model, [layer.name for layer in self.layers])
        self.aliases = weight_aliases(self.model)
        progress(f"{model_path}: {len(self.layers)} weight layer(s), {len(samples)} sample file(s); fp32 outputs")
        self.bench = Bench(self.model, samples, metric)
        self.calibrations = {}
        if calibration is not None:
            from .calibration import calibration_inputs, layer_calibrations
            from .codecs.feedback import DAMPING

            progress(f"capturing the inputs of {len(self.layers)} layer(s) on {calibration}")
            usable = [layer.name for layer in self.layers if layer.fallback_reason is None]
            self.calibration_samples = calibration_inputs(model_inputs(self.model), calibration)
            self.calibrations = layer_calibrations(self.model, usable, self.calibration_samples, DAMPING, act_order)
        self.sensitivities_measured = False

    def encoded(self, spec: CodecSpec, fed: bool, skip=(), overrides=()):
        """Every layer encoded as ``compile`` would with ``spec`` and the policy (plus ``skip``/``overrides``),
        with error feedback if ``fed`` and there is calibration."""
        from .passes.policy import EncodingPolicy

        policy = EncodingPolicy(spec.codec, spec.options, self.policy.min_weights, self.policy.skip + tuple(skip),
                                self.policy.overrides + tuple(overrides), self.aliases)
        if fed and self.calibrations and spec.options.get("bits_per_weight"):
            self.measure_sensitivities()
        return encode_model(self.weights, self.layers, policy, self.calibrations if fed else None, self.jobs)

    def measure_sensitivities(self) -> None:
        """Each calibrated layer's sensitivity, once: a bits budget is split by them, as ``compile`` splits it."""
        if self.sensitivities_measured:
            return
        measured = layer_sensitivities(self.model, sorted(self.calibrations), self.calibration_samples)
        self.calibrations = {name: replace(c, sensitivity=measured[name]) for name, c in self.calibrations.items()}
        self.sensitivities_measured = True

    def point(self, spec: CodecSpec, fed: bool, label: str | None = None, encoded: EncodedModel | None = None,
              **changes) -> dict:
        """The whole model encoded so (or as ``encoded`` already is), measured: bits/weight, the headline figures,
        ``eval``'s result."""
        result = encoded or self.encoded(spec, fed, **changes)
        return self.bench.point(with_weights(self.model, result.decoded), label=label or spec.label, codec=spec.codec,
                                options=spec.options, mode="feedback" if fed and self.calibrations else "rtn",
                                bits_per_weight=result.bits_per_weight, seconds=result.seconds)

    def references(self, progress: Callable[[str], None] = lambda message: None,
                   modes: tuple[NbitsMode, ...] = NBITS_REFERENCES, tables: bool = True) -> list[dict]:
        """fp16 weights and onnxruntime's MatMulNBits in each of ``modes`` on the same layers (bits/weight over all
        of them; without the Gather tables if not ``tables``: a codec with no gather kernel leaves them out too)."""
        layers = [r for r in self.layers if tables or r.op != "gather"]
        usable = {r.name: r.bytes_dense for r in layers if r.fallback_reason is None}
        count = sum(r.num_weights for r in layers)
        dense_rest = sum(r.bytes_dense for r in layers if r.name not in usable)
        progress("references: fp16 weights")
        fp16 = with_weights(self.model, fp16_weights({n: self.weights[n] for n in usable}))
        points = [self.bench.point(fp16, label="fp16 weights", codec="fp16", mode="reference",
                                   bits_per_weight=8 * (sum(usable.values()) / 2 + dense_rest) / count)]
        for mode in modes:
            label = mode.label
            progress(f"references: {label}")
            quantized, why = matmul_nbits(self.model, mode=mode)
            if quantized is None:
                points.append({"label": label, "codec": "matmulnbits", "mode": "reference", "skipped": why})
                continue
            stored = nbits_bytes(quantized, mode.bits, usable) + dense_rest
            points.append(self.bench.point(quantized, label=label, codec="matmulnbits", mode="reference",
                                           bits_per_weight=8 * stored / count))
        return points

    def sensitivity(self, spec: CodecSpec, progress: Callable[[str], None] = lambda message: None
                    ) -> tuple[EncodedModel, dict[str, dict]]:
        """The model encoded with ``spec``, and per layer: its codec, bits/weight, weight error and the output
        error with only that layer encoded."""
        whole = self.encoded(spec, bool(self.calibrations))
        figures = {}
        for i, record in enumerate(whole.records, 1):
            entry = figures[record.name] = {"codec": record.codec, "bits_per_weight": record.bits_per_weight,
                                            "dense": record.fallback_reason}
            if record.name not in whole.decoded:
                continue
            progress(f"{spec.label}: layer {i}/{len(whole.records)} {record.name}")
            decoded = whole.decoded[record.name]
            entry.update(weight_error(self.weights[record.name], decoded))
            alone = self.bench.point(with_weights(self.model, {record.name: decoded}))
            entry["output"] = {k: alone[k] for k in HEADLINE}
        return whole, figures

    def suggestions(self, spec: CodecSpec, sensitive: list[str], progress) -> list[dict]:
        """``compile`` lines that treat the ``sensitive`` layers differently, each with what it measured."""
        if not sensitive:
            return []
        base = ["bie-compiler", "compile", str(self.path), *spec.flags(), *self.policy.flags(),
                *(["--calibration", str(self.calibration)] if self.calibration is not None else [])]
        safer = SAFER[spec.codec]
        choices = []
        if safer is not None and not _refused(spec.codec, spec.options, safer):
            options = ",".join(f"{k}={v}" for k, v in safer.items())
            choices.append(("override", {"overrides": [(name, safer) for name in sensitive]},
                            [a for name in sensitive for a in ("--override", f"{name}:{options}")]))
        choices.append(("skip", {"skip": sensitive}, [a for name in sensitive for a in ("--skip", name)]))
        out = []
        for kind, change, flags in choices:
            progress(f"{spec.label}: the {len(sensitive)} most sensitive layer(s) with --{kind}")
            point = self.point(spec, bool(self.calibrations), **change)
            out.append({"kind": kind, "layers": sensitive, "command": shlex.join([*base, *flags, "-o", "out/"]),
                        "bits_per_weight": point["bits_per_weight"], **{k: point[k] for k in HEADLINE}})
        return out


def analyze(model_path: str | Path, specs: list[CodecSpec], samples: list, policy: Policy = Policy(),
            calibration: str | Path | None = None, top: int = 3, sweep: bool = True,
            progress: Callable[[str], None] = lambda message: None, jobs: int | None = None,
            metric: str | None = None) -> dict:
    """The ``analyze`` report (a JSON-able dict, :data:`SCHEMA`) of the model at ``model_path``."""
    check_options(specs, policy, top)
    subject = ModelUnderAnalysis(model_path, samples, policy, calibration, jobs, progress, metric)
    fed = bool(subject.calibrations)
    report = {
        "schema": SCHEMA,
        "model": {"path": str(Path(model_path).absolute()), "sha256": file_sha256(model_path)},
        "samples": len(samples), "rows": subject.bench.rows,
        "labels": any(labels is not None for _, _, labels in samples),
        "fp32": subject.bench.fp32_task,
        "calibration": str(calibration) if calibration is not None else None,
        "policy": {"min_weights": policy.min_weights, "skip": list(policy.skip),
                   "overrides": [[p, o] for p, o in policy.overrides]},
        "layers": [{"name": r.name, "op": r.op, "shape": r.shape, "weights": r.num_weights,
                    "unsupported": r.fallback_reason, "codecs": {}} for r in subject.layers],
        "codecs": [],
        "sweep": [],
        "references": [],
    }
    by_name = {entry["name"]: entry for entry in report["layers"]}
    for spec in specs:
        progress(f"{spec.label}: encoding every layer ({'feedback' if fed else 'rtn'})")
        whole, figures = subject.sensitivity(spec, progress)
        for name, entry in figures.items():
            by_name[name]["codecs"][spec.label] = entry
        point = subject.point(spec, fed, encoded=whole)
        ranked = sorted((n for n, e in figures.items() if "output" in e), key=lambda n: -figures[n]["output"]["rel_l2"])
        treated = ranked[:min(top, max(1, len(ranked) - 1))]  # not every layer: that would be another codec
        report["codecs"].append({**point, "ranking": ranked,
                                 "suggestions": subject.suggestions(spec, treated, progress)})
    if sweep:
        for codec in dict.fromkeys(spec.codec for spec in specs):
            for label, options in SETTINGS[codec]:
                for mode_fed in [False] + ([True] if fed and codecs.takes_calibration(codec) else []):
                    progress(f"sweep: {codec} {label} ({'feedback' if mode_fed else 'rtn'})")
                    report["sweep"].append(subject.point(CodecSpec(codec, options), mode_fed, f"{codec} {label}"))
        report["references"] = subject.references(progress)
    return report

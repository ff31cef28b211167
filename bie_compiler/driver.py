"""compile_model: ONNX in, artefact out, in four steps: plan, encode, build, manifest.

* plan: import the model, then decide every weight's codec, config and encoding
  (``passes.plan_encoding``; calibration statistics gathered with onnxruntime for
  the codecs that round with error feedback) and, on the bitvert target, the
  layers the device runs (``passes.plan_offload``).
* encode: the Relax passes that carry the plan out (``passes.encoding_passes``).
* build: the target's builder from :data:`BUILDERS` (the registered Relax pipelines).
* manifest: what the artefact records, then written with its files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
import tvm
from tvm import relax
from tvm.ir.instrument import PassTimingInstrument

from . import __version__
from .calibration import activation_scales, calibration_inputs, layer_calibrations, record, sample_files
from .codecs import feedback
from .decoded_weights import weight_aliases
from .codegen import cpu, cuda, kernel_layers
from .codegen.dedup import deduplicate_prim_funcs
from .codegen.target import describe, make_target
from .codegen.weights import Weights
from .errors import BieWarning, OptionError
from .frontend import ImportedModel, import_model
from .model_identity import identity
from .passes import (EncodingPlan, EncodingPolicy, OffloadPlan, PropagateNaN, encoding_passes, plan_encoding,
                     plan_offload)
from .preprocess import LEVEL as PREPROCESS_LEVEL
from .preprocess import preprocess as preprocess_model
from .progress import Reporter, print_progress
from .report import node_labels, other_weights, totals
from .runtime import weights_file
from .runtime.artefact import DEVICE_SOURCE, WEIGHTS, output_folder, write_artefact
from .shapes import ShapeRequest


@dataclass
class Built:
    """A target's build: the executable, the weights its ``main`` takes after the inputs (written to
    ``weights.bin``), the artefact's other files, and what the manifest adds for it."""

    executable: relax.VMExecutable
    weights: Weights
    files: dict[str, str] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def _build_llvm(mod: tvm.IRModule, target: tvm.target.Target) -> Built:
    executable, weights, layers = cpu.build(mod, target)  # its kernels, fused ones included, as they are called
    return Built(executable, weights, manifest={"kernel_layers": layers})


def _build_cuda(mod: tvm.IRModule, target: tvm.target.Target) -> Built:
    built = cuda.build(mod, target)
    device_code = {"source": DEVICE_SOURCE, "layer_kernels": built.layer_kernels}
    return Built(built.executable, built.weights, {DEVICE_SOURCE: built.source}, {"device_code": device_code})


BUILDERS = {"llvm": _build_llvm, "cuda": _build_cuda}  # by target kind (bitvert's host is llvm)


def compile_model(
    model: str | Path | onnx.ModelProto,
    output_dir: str | Path,
    codec: str = "bie-bitplane",
    options: dict | None = None,
    *,
    target: str = "llvm",
    mcpu: str | None = None,
    arch: str | None = None,
    min_weights: int = 1024,
    skip: tuple[str, ...] = (),
    overrides: tuple[tuple[str, dict], ...] = (),
    calibration: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    dims: dict[str, int] | None = None,
    damping: float | None = None,
    act_order: bool = False,
    progress=print_progress,
    timing: bool = False,
    jobs: int | None = None,
    ray: str | None = None,
    preprocess: bool = False,
) -> Path:
    """Compile an ONNX model (path or ModelProto) into an artefact folder; returns its path.

    ``options`` are the codec's Config fields (e.g. ``{"bits": 4}``); ``overrides``
    are ``(name pattern, options)`` pairs for single layers, ``skip`` patterns stay dense.
    ``target`` is "llvm", "cuda" (``arch``: the GPU architecture, default sm_90) or
    "bitvert" (bbs layers offloaded to the simulated BitVert accelerator, their INT8
    activation scales calibrated on the ``calibration`` inputs, or on seeded random
    inputs with a warning). ``calibration`` (a .npz of inputs by name, or a folder of
    them) makes every codec round with error feedback (GPTQ;
    ``damping``, ``act_order``); without it, rounding is data-free. ``input_shapes`` (input
    name -> sizes) and ``dims`` (symbolic dimension -> size, wherever it appears) fix input
    sizes at import; the others stay symbolic. ``progress`` receives a ``progress.Event`` per
    step (None: silent); ``timing`` reports each TVM pass's time through it (stage "timing"). ``jobs``: processes
    encoding layers at once; ``ray``: the address of a Ray cluster encoding them instead (the same bytes).
    ``preprocess`` runs onnxruntime's basic graph optimizations on the model file first (:mod:`.preprocess`).
    """
    report = Reporter(progress)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    policy = EncodingPolicy(codec, options, min_weights, tuple(skip), tuple(overrides))
    tvm_target = make_target(target, mcpu, arch)
    damping = _check_calibration(calibration, damping, act_order)
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise OptionError(f"--jobs must be a positive integer, got {jobs!r}")
    source_path = None if isinstance(model, onnx.ModelProto) else model
    output_folder(output_dir, source_path)  # refuse a folder we may not replace before any work
    report("import", f"importing {model if source_path is not None else 'ModelProto'}")
    shapes = ShapeRequest({k: tuple(v) for k, v in (input_shapes or {}).items()}, dict(dims or {}))
    imported = import_model(_preprocessed(model, report) if preprocess else model, shapes)
    policy = replace(policy, aliases=weight_aliases(imported.model))

    instruments = [PassTimingInstrument()] if timing else []
    with tvm.transform.PassContext(instruments=instruments):
        plan, offload = _plan(imported, policy, tvm_target, calibration, damping, act_order, report, jobs, ray)
        mod = encode(imported.mod, plan, offload)
        # the dense weights (the bulk of a large model) are in the imported module and the plan's weight uses:
        # dropped before the build, which needs only the encoded module
        imported = replace(imported, mod=None, constant_names={}, stored={})
        plan = replace(plan, names={}, uses={}, encoded={})
        report("build", "building for " + ", ".join(f"{k}={v}" for k, v in describe(tvm_target).items()))
        built = BUILDERS[tvm_target.kind.name](mod, tvm_target)
        if timing:
            report("timing", f"pass timing:\n{instruments[0].render()}")
    manifest = _manifest(model, imported, shapes, policy, tvm_target, plan, offload, mod, built,
                         calibration, damping, act_order)
    if preprocess:
        manifest["preprocess"] = PREPROCESS_LEVEL  # check rebuilds the compiled graph from the source with it
    files = {**built.files, WEIGHTS: lambda f: weights_file.write(f, built.weights.tensors, built.weights.tans)}
    out = write_artefact(output_dir, built.executable, manifest, files, source=source_path)
    report("write", f"wrote {out}")
    return out


def _preprocessed(model, report: Reporter) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        raise OptionError("--preprocess takes a model file, not an in-memory model")
    optimized, changed = preprocess_model(model)
    report("import", changed or "--preprocess: onnxruntime's basic optimizations left the graph as it was")
    return optimized


def _check_calibration(calibration, damping: float | None, act_order: bool) -> float:
    """The damping to use; refuses calibration options that cannot work before any work is done."""
    if calibration is not None:
        sample_files(calibration)  # refuse missing data before the encoding, not after it
    if act_order and calibration is None:
        raise OptionError("--act-order orders error feedback, which needs --calibration")
    damping = feedback.DAMPING if damping is None else damping
    if not 0 <= damping < float("inf"):
        raise OptionError(f"damping must be a finite number >= 0, got {damping}")
    return damping


def _plan(imported: ImportedModel, policy: EncodingPolicy, target: tvm.target.Target, calibration,
          damping: float, act_order: bool, report: Reporter, jobs: int | None,
          ray: str | None) -> tuple[EncodingPlan, OffloadPlan]:
    """Every weight's encoding and, on bitvert, the offloaded layers; calibration runs onnxruntime here."""

    def calibrations(names: list[str], sensitive: bool) -> dict:
        also = " and measuring their sensitivities" if sensitive else ""
        report("calibrate", f"capturing the inputs of {len(names)} layer(s){also} on {calibration}")
        samples = calibration_inputs(imported.inputs, calibration)
        return layer_calibrations(imported.model, names, samples, damping, act_order, sensitive)

    def scales(names: list[str]) -> dict[str, float]:
        report("calibrate", f"calibrating the activations of {len(names)} offloaded layer(s)")
        return activation_scales(imported.model, names, calibration_inputs(imported.inputs, calibration))

    report("plan", f"encoding weights with {policy.codec} {policy.options or ''}".rstrip())
    plan = plan_encoding(imported.mod, imported.constant_names, policy, target,
                         calibrations if calibration is not None else None, report, jobs, imported.stored, ray)
    return plan, plan_offload(plan, scales, report)


def encode(mod: tvm.IRModule, plan: EncodingPlan, offload: OffloadPlan) -> tvm.IRModule:
    """The planned module: NaN-preserving ReLU, offload, encoded weights; on the CPU, kernels identical
    for several layers kept once, named after all of them (the CUDA build maps each layer to its own)."""
    passes = [PropagateNaN(), encoding_passes(plan, offload)]
    if plan.target.kind.name != "cuda":
        passes.append(deduplicate_prim_funcs)
    return tvm.transform.Sequential(passes, name="BiePlanned")(mod)


def _manifest(model, imported: ImportedModel, shapes: ShapeRequest, policy: EncodingPolicy,
              target: tvm.target.Target, plan: EncodingPlan, offload: OffloadPlan, mod: tvm.IRModule, built: Built,
              calibration, damping: float, act_order: bool) -> dict:
    """What the artefact records (and the warnings about what the compile could not do as asked)."""
    others = other_weights(imported.weights, imported.consumers, {r.name for r in plan.records})
    for r in plan.records + others:
        r.details["nodes"] = node_labels(imported.consumers.get(r.name, []))
        if r.name in imported.dequantized:
            r.details["source"] = imported.dequantized[r.name]
    layers = kernel_layers(mod)  # a build that fuses kernels (LLVM) gives its own in built.manifest
    manifest = {
        "bie_compiler_version": __version__,
        "tvm_version": tvm.__version__,
        "source_model": identity(model),
        "codec": {"name": policy.codec, "options": policy.options, "min_weights": policy.min_weights,
                  "skip": list(policy.skip), "overrides": [[p, o] for p, o in policy.overrides]},
        "target": describe(target),
        "inputs": imported.inputs,  # the shapes the artefact was compiled for: sizes, or names of symbolic dims
        "fixed_shapes": shapes.to_json(),  # what --input-shape / --dim asked for
        "outputs": imported.outputs,
        "layers": [r.to_json() for r in plan.records],
        "kernel_layers": layers,  # our kernels' symbols -> the weight each computes from (bench --per-layer)
        "totals": totals(plan.records),
        "other_weights": [r.to_json() for r in others],  # not matmul or conv weights: dense, with the reason
        "model_totals": totals(plan.records + others),  # every weight of the model
        "weights": {"tensors": len(built.weights.tensors), "bytes": built.weights.nbytes,
                    "tans_streams": len(built.weights.tans),
                    "progressive": built.weights.progressive,  # bie-bitplane magnitudes: cut at load
                    **({"at_load": built.weights.at_load} if built.weights.at_load else {})},
        **built.manifest,
        **({"calibration": record(calibration, damping, act_order)} if calibration is not None else {}),
    }
    if describe(target)["kind"] == "bitvert":
        if not offload.profiles:
            warnings.warn("--target bitvert offloads bbs-encoded layers only, and there are none: "
                          "everything runs on the host", BieWarning)
        manifest["bitvert"] = {"calibration": str(calibration) if calibration is not None else None,
                               "layers": offload.profiles}
    for pattern in policy.unmatched([r.name for r in plan.records]):
        warnings.warn(f"{pattern} matches no weight of the model (see inspect for the names)", BieWarning)
    return manifest

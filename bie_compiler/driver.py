"""compile_model: ONNX in, artefact out (import, encode weights, build, write)."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
import warnings
from pathlib import Path

import onnx
import tvm

from . import __version__
from .errors import BieWarning
from .frontend import file_sha256, import_model
from .dequantization import provenance
from .report import node_labels, other_weights, totals


def _stderr_progress(message: str) -> None:
    print(f"[bie-compiler] {message}", file=sys.stderr, flush=True)


def source_identity(model: str | Path | onnx.ModelProto) -> dict:
    if isinstance(model, onnx.ModelProto):
        return {"path": None, "sha256": hashlib.sha256(model.SerializeToString()).hexdigest()}
    return {"path": str(Path(model).absolute()), "sha256": file_sha256(model)}


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
    progress=_stderr_progress,
) -> Path:
    """Compile an ONNX model (path or ModelProto) into an artefact folder; returns its path.

    ``options`` are the codec's Config fields (e.g. ``{"bits": 4}``); ``overrides``
    are ``(name pattern, options)`` pairs for single layers, ``skip`` patterns stay dense.
    ``target`` is "llvm", "cuda" (``arch``: the GPU architecture, default sm_90) or
    "bitvert" (bbs layers offloaded to the simulated BitVert accelerator, their INT8
    activation scales calibrated on the ``calibration`` inputs, or on seeded random
    inputs with a warning). ``calibration`` (a .npz of inputs by name, or a folder of
    them) makes every codec with a feedback hook round with error feedback (GPTQ;
    ``damping``, ``act_order``); without it, rounding is data-free. ``input_shapes`` (input
    name -> sizes) and ``dims`` (symbolic dimension -> size, wherever it appears) fix input
    sizes at import; the others stay symbolic.
    """
    from bie_compiler.codegen import LAYER_ATTR, cpu, cuda
    from bie_compiler.codegen.dedup import deduplicate_prim_funcs
    from bie_compiler.codegen.target import describe, make_target
    from bie_compiler.passes import EncodeWeights, EncodingPolicy, PropagateNaN
    from bie_compiler.runtime import weights_file
    from bie_compiler.runtime.artefact import DEVICE_SOURCE, WEIGHTS, output_folder, write_artefact

    from .codecs import feedback
    from .calibration import activation_scales, calibration_inputs, layer_calibrations, record, sample_files
    from .errors import OptionError
    from .shapes import ShapeRequest

    progress = progress or (lambda message: None)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    policy = EncodingPolicy(codec, options, min_weights, tuple(skip), tuple(overrides))
    tvm_target = make_target(target, mcpu, arch)
    started = time.perf_counter()
    step = lambda message: progress(f"{message} ({time.perf_counter() - started:.1f} s)")  # noqa: E731

    if calibration is not None:
        sample_files(calibration)  # refuse missing data before the encoding, not after it
    if act_order and calibration is None:
        raise OptionError("--act-order orders error feedback, which needs --calibration")
    damping = feedback.DAMPING if damping is None else damping
    if not 0 <= damping < float("inf"):
        raise OptionError(f"damping must be a finite number >= 0, got {damping}")
    source_path = None if isinstance(model, onnx.ModelProto) else model
    output_folder(output_dir, source_path)  # refuse a folder we may not replace before any work
    step(f"importing {model if not isinstance(model, onnx.ModelProto) else 'ModelProto'}")
    shapes = ShapeRequest({k: tuple(v) for k, v in (input_shapes or {}).items()}, dict(dims or {}))
    imported = import_model(model, shapes)
    sources = {i.name: p for i in imported.model.graph.initializer if (p := provenance(i))}
    policy = dataclasses.replace(policy, aliases={  # patterns may name a weight's nodes or its integer source
        w: (*(n for n, _, _ in c), *([sources[w]["initializer"]] if w in sources else []))
        for w, c in imported.consumers.items()})

    def calibrate(names: list[str]) -> dict[str, float]:
        return activation_scales(imported.model, names, calibration_inputs(imported.inputs, calibration))

    def calibrations(names: list[str]) -> dict:
        step(f"capturing the inputs of {len(names)} layer(s) on {calibration}")
        samples = calibration_inputs(imported.inputs, calibration)
        return layer_calibrations(imported.model, names, samples, damping, act_order)

    step(f"encoding weights with {codec} {options or ''}".rstrip())
    encode = EncodeWeights(imported, policy, tvm_target, progress, calibrate,
                           calibrations if calibration is not None else None)
    mod = encode(PropagateNaN()(imported.mod))
    if tvm_target.kind.name != "cuda":  # (the CUDA build maps each layer to its own device kernels)
        mod = deduplicate_prim_funcs(mod)  # identical kernels of several layers: one, named after all of them
    others = other_weights(imported.weights, imported.consumers, {r.name for r in encode.records})
    for r in encode.records + others:
        r.details["nodes"] = node_labels(imported.consumers.get(r.name, []))
        if r.name in sources:
            r.details["source"] = sources[r.name]
    kernel_layers = {gv.name_hint: str(f.attrs[LAYER_ATTR]) for gv, f in mod.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and LAYER_ATTR in f.attrs}
    step("building for " + ", ".join(f"{k}={v}" for k, v in describe(tvm_target).items()))
    extra_files, device_code = {}, {}
    if tvm_target.kind.name == "cuda":
        built = cuda.build(mod, tvm_target)
        executable, weights, extra_files = built.executable, built.weights, {DEVICE_SOURCE: built.source}
        device_code = {"device_code": {"source": DEVICE_SOURCE, "layer_kernels": built.layer_kernels}}
    else:
        executable, weights = cpu.build(mod, tvm_target)
    extra_files[WEIGHTS] = weights_file.pack(weights.tensors, weights.tans)
    manifest = {
        "bie_compiler_version": __version__,
        "tvm_version": tvm.__version__,
        "source_model": source_identity(model),
        "codec": {"name": codec, "options": options, "min_weights": min_weights,
                  "skip": list(skip), "overrides": [[p, o] for p, o in overrides]},
        "target": describe(tvm_target),
        "inputs": imported.inputs,  # the shapes the artefact was compiled for: sizes, or names of symbolic dims
        "fixed_shapes": shapes.to_json(),  # what --input-shape / --dim asked for
        "outputs": imported.outputs,
        "layers": [r.to_json() for r in encode.records],
        "kernel_layers": kernel_layers,  # our kernels' symbols -> the weight each computes from (bench --per-layer)
        "totals": totals(encode.records),
        "other_weights": [r.to_json() for r in others],  # not matmul or conv weights: dense, with the reason
        "model_totals": totals(encode.records + others),  # every weight of the model
        "weights": {"tensors": len(weights.tensors), "bytes": weights.nbytes, "tans_streams": len(weights.tans)},
        **device_code,
        **({"calibration": record(calibration, damping, act_order)} if calibration is not None else {}),
    }
    if target == "bitvert":
        if not encode.offloaded:
            warnings.warn("--target bitvert offloads bbs-encoded layers only, and there are none: "
                          "everything runs on the host", BieWarning)
        manifest["bitvert"] = {"calibration": str(calibration) if calibration is not None else None,
                               "layers": encode.offloaded}
    for pattern in policy.unmatched([r.name for r in encode.records]):
        warnings.warn(f"{pattern} matches no weight of the model (see inspect for the names)", BieWarning)
    out = write_artefact(output_dir, executable, manifest, extra_files, source=source_path)
    step(f"wrote {out}")
    return out

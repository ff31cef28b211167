"""Activation calibration for INT8 accelerators: per-tensor symmetric scales from sample inputs.

The activation feeding each offloaded weight (input 0 of the MatMul, Gemm or Conv that
reads it) is observed with onnxruntime on the original model over the calibration
inputs; its scale maps the largest |value| seen to 127.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

from .errors import BieError, BieWarning
from .frontend import load_model
from .parity import make_inputs, run_onnxruntime

WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


def calibration_inputs(specs: list[dict], npz: str | Path | None, seed: int = 1, batch: int = 8) -> dict:
    """Inputs by name from ``npz``, or seeded random ones with a warning (scales then fit noise, not data).

    The default seed differs from ``check``'s and ``run``'s (0), so parity is not measured on calibration data.
    """
    if npz is None:
        warnings.warn("no --calibration inputs; activation scales come from seeded random inputs", BieWarning)
    return make_inputs(specs, batch, seed, npz)


def activation_scales(model: str | Path | onnx.ModelProto, weight_names: list[str], inputs: dict) -> dict[str, float]:
    """{weight name: scale} of the activation each named weight multiplies."""
    model = load_model(model)
    feeds = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in weight_names:
            feeds.setdefault(node.input[1], node.input[0])
    missing = sorted(set(weight_names) - set(feeds))
    if missing:
        raise BieError(f"calibration: no MatMul/Gemm/Conv reads weight(s) {missing}")
    observed = sorted(set(feeds.values()))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    by_name = {v.name: v for v in [*probe.graph.value_info, *probe.graph.input]}
    for name in observed:
        if name not in known:
            probe.graph.output.append(by_name.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    outputs = run_onnxruntime(probe, inputs)
    values = dict(zip([o.name for o in probe.graph.output], outputs))
    peaks = {name: float(np.max(np.abs(values[name]))) if values[name].size else 0.0 for name in observed}
    return {w: (peaks[a] / 127.0 if peaks[a] > 0 else 1.0) for w, a in feeds.items()}

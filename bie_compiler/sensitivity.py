"""Layer sensitivity: how far a model's outputs move per unit of one layer's weight error, on calibration data.

A bits budget split over layers (the codecs' ``plan`` hooks) needs each layer's distortion in the model's
terms: in all-MiniLM-L6-v2 the same relative weight error moves the sentence embedding a hundred times more
in some FFN layers than in a query projection. So each layer in turn gets seeded Gaussian noise of relative
squared size ``NOISE`` (``||E||^2 / ||W||^2``), the model runs on the calibration samples, and the model's
relative squared output error divided by ``NOISE`` is the layer's sensitivity. At the rates planned the
model's error adds up over layers, so ``sum(sensitivity * weight error)`` is what the planner minimises.
(Noise scaled to each layer's output error ``tr(E X^T X E^T)`` instead predicted worse on MiniLM: a few
outlier input channels dominate ``X^T X`` there, so coarse grids looked cheap in the layers after GELU.)

One onnxruntime session serves every run: the measured weights become graph inputs, fed unperturbed except
the one under test. It runs on one thread, like the calibration capture, so the figures are reproducible.
"""

from __future__ import annotations

import numpy as np
import onnx

from .decoded_weights import initializer_arrays
from .parity import session_of

NOISE = 1e-2  # relative squared weight error of the test perturbation: about a 3-4 bit quantization's
# Sample sets the runs use at most (the first ones): each layer costs a run per set, and a ratio of errors settles
# on far fewer rows than error feedback's X^T X needs (all-MiniLM-L6-v2: the plan from the sensitivities of 2 sets
# of 16 sentences encoded as well as from 16 sets).
SAMPLES = 4


def weights_as_inputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers are graph inputs instead (same names, shapes, float32)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    kept = [i for i in probe.graph.initializer if i.name not in names]
    moved = [i for i in probe.graph.initializer if i.name in names]
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    probe.graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in moved)
    return probe


def layer_sensitivities(model: onnx.ModelProto, names: list[str], samples: list[dict]) -> dict[str, float]:
    """{weight name: the model's relative squared output error per unit of that layer's relative squared weight
    error}, for the named weights of ``model``, over the first ``SAMPLES`` input sets of ``samples``."""
    samples = samples[:SAMPLES]
    weights = initializer_arrays(model, names)
    session = session_of(weights_as_inputs(model, set(weights)), threads=1)
    references = [session.run(None, {**sample, **weights}) for sample in samples]
    energy = sum(float(np.sum(np.square(y, dtype=np.float64))) for outputs in references for y in outputs)
    sensitivities = {}
    for seed, name in enumerate(sorted(weights)):
        weight = weights[name].astype(np.float64)
        noise = np.random.default_rng(seed).standard_normal(weight.shape)
        noise *= np.sqrt(NOISE * np.sum(weight**2) / np.sum(noise**2))
        perturbed = (weight + noise).astype(np.float32)
        moved = 0.0
        for sample, reference in zip(samples, references):
            outputs = session.run(None, {**sample, **weights, name: perturbed})
            moved += sum(float(np.sum(np.square(y.astype(np.float64) - r))) for y, r in zip(outputs, reference))
        sensitivities[name] = moved / energy / NOISE if energy > 0 else 0.0
    return sensitivities

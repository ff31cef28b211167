"""A model's matmul and conv weights found in its ONNX graph, encoded, and put back as their decodings.

What a codec does to a model's outputs can be measured without a TVM build: an artefact computes the model
whose encoded weights are replaced by their reference decodings (``parity`` checks that to fp32 accumulation
error), and onnxruntime runs that model. ``analyze`` and ``benchmarks/quality.py`` measure so.

The layers are the ones ``passes.weight_uses`` finds after TVM's import: a float32 2-D initializer read as
input 1 of a MatMul (directly, or through a 2-D Transpose: ``matmul(x, permute_dims(W))``) or of a Gemm
(``transB``: stored [N, K]), a 4-D initializer read as input 1 of a Conv (any groups), and a float32 2-D table
whose rows a Gather (axis 0) takes, when its codec has a CPU gather kernel (else, as in ``compile``, the table
is one of the other weights, not a layer). The encoding policy (``passes.policy``: ``--min-weights``, ``--skip``, ``--override``, the codecs' whole-model ``plan``
hooks) and the "no smaller than dense" rule are the compiler's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from . import codecs
from .codecs import parallel
from .codegen import has_kernel
from .codegen.target import make_target
from .codecs.layout import codec_matrix, onnx_layout
from .dequantization import provenance
from .frontend import weight_consumers
from .report import LayerRecord, totals


def _transpose_sources(model: onnx.ModelProto, initializers: dict) -> dict[str, str]:
    """Output of a 2-D Transpose of an initializer -> the initializer."""
    sources = {}
    for node in model.graph.node:
        if node.op_type == "Transpose" and node.input[0] in initializers and len(initializers[node.input[0]].dims) == 2:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            if perm == [1, 0]:
                sources[node.output[0]] = node.input[0]
    return sources


def weight_layers(model: onnx.ModelProto) -> list[LayerRecord]:
    """Every matmul and 2-D conv weight of ``model`` in node order, dense; ``fallback_reason`` set for the ones
    no codec takes (as ``passes.weight_uses`` marks them unsupported)."""
    initializers = {i.name: i for i in model.graph.initializer}
    transposed_from = _transpose_sources(model, initializers)
    layers: dict[str, LayerRecord] = {}
    for node in model.graph.node:
        if node.op_type == "Gather":
            _add_table(node, initializers, layers)
            continue
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        name, transposed = node.input[1], False
        if node.op_type == "MatMul" and name in transposed_from:
            name, transposed = transposed_from[name], True
        if node.op_type == "Gemm":
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
        init = initializers.get(name)
        if init is None or (node.op_type == "Conv" and len(init.dims) != 4):
            continue  # an activation, or a 1-D/3-D conv (reported by compile as another weight)
        op = "conv2d" if node.op_type == "Conv" else "matmul"
        reason = None
        if init.data_type != onnx.TensorProto.FLOAT:
            reason = f"dtype {onnx.helper.tensor_dtype_to_np_dtype(init.data_type)} (only float32 is encoded)"
        elif op == "matmul" and len(init.dims) != 2:
            reason = f"{len(init.dims)}-D weight (only 2-D matmul weights are encoded)"
        nbytes = 4 * int(np.prod(init.dims))
        record = LayerRecord(name, op, list(init.dims), "dense", nbytes, nbytes, reason, transposed)
        first = layers.setdefault(name, record)
        if (first.op, first.transposed) != (op, transposed) and first.fallback_reason is None:
            first.fallback_reason = "used in two layouts (e.g. by a MatMul and a Gemm with transB=1)"
    return list(layers.values())


def _add_table(node: onnx.NodeProto, initializers: dict, layers: dict[str, LayerRecord]) -> None:
    """The table a Gather takes rows of, as a layer (op "gather"), if a codec could encode it."""
    table = initializers.get(node.input[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if table is None or len(table.dims) != 2 or axis != 0 or table.data_type != onnx.TensorProto.FLOAT:
        return  # compile leaves it as one of the other weights, with no layer record
    nbytes = 4 * int(np.prod(table.dims))
    record = LayerRecord(table.name, "gather", list(table.dims), "dense", nbytes, nbytes, None, False)
    first = layers.setdefault(table.name, record)
    if first.op != "gather" and first.fallback_reason is None:
        first.fallback_reason = "used in two layouts (e.g. by a MatMul and a Gather)"


def weight_aliases(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Weight -> the other names ``--skip``/``--override`` patterns may use for it: its nodes, its integer source."""
    sources = {i.name: source for i in model.graph.initializer if (source := provenance(i))}
    return {w: (*(node for node, _, _ in users), *([sources[w]["initializer"]] if w in sources else []))
            for w, users in weight_consumers(model).items()}


@dataclass
class EncodedModel:
    """Every weight layer's record (codec and bytes, or why it stayed dense) and the encoded ones' decodings."""

    records: list[LayerRecord]
    decoded: dict[str, np.ndarray]  # weight name -> decoded weight in its ONNX layout
    seconds: float  # encoding time

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight over every weight layer, the dense ones at 32 (``compile``'s ``totals``)."""
        return totals(self.records)["bits_per_weight"]


def encode_model(weights: dict[str, np.ndarray], layers: list[LayerRecord], policy, calibrations: dict | None = None,
                 jobs: int | None = None, started: Callable[[str], None] = lambda name: None) -> EncodedModel:
    """Encode ``layers`` as ``policy`` (a ``passes.EncodingPolicy``) decides, with error feedback where
    ``calibrations`` ({weight name: Calibration}) has the layer and the codec takes it (and bits budgets split
    by the sensitivities they hold)."""
    start = time.perf_counter()
    choices = {r.name: policy.choose(r.name, r.num_weights) for r in layers if r.fallback_reason is None}
    choices = {r.name: (choices[r.name][0], codecs.for_op(choices[r.name][1], r.op) if choices[r.name][0]
                        else choices[r.name][1]) for r in layers if r.name in choices}
    # a table its codec has no CPU gather kernel for is not a layer (as compile's plan has it)
    tables = {r.name for r in layers if r.op == "gather" and r.fallback_reason is None}
    cpu = make_target() if tables else None
    kept = {n for n in tables if choices[n][0] is not None and has_kernel(choices[n][0], "gather", cpu)}
    records = [replace(layer, details={}) for layer in layers if layer.name not in tables - kept]
    for r in records:
        if r.name in choices and choices[r.name][0] is None:
            r.fallback_reason = choices[r.name][1]
    eligible = {r.name: r for r in records if r.fallback_reason is None}
    matrices = {name: codec_matrix(weights[name], r.op, r.transposed) for name, r in eligible.items()}
    configs = {name: choices[name][1] for name in eligible}
    calibrations = calibrations or {}
    if jobs is None:
        jobs = parallel.default_jobs(sum(m.size for m in matrices.values()))
    for codec in sorted({choices[name][0] for name in eligible}):
        names = [n for n in eligible if choices[n][0] == codec]
        configs.update(codecs.plan(codec, {n: matrices[n] for n in names}, {n: configs[n] for n in names},
                                   {n: calibrations[n] for n in names if n in calibrations}, parallel.Workers(jobs)))
    tasks = {name: (choices[name][0], matrices[name], configs[name], calibrations.get(name)) for name in eligible}
    encodings = parallel.encode_many(tasks, jobs, started)
    decoded = {}
    for name, r in eligible.items():
        codec, enc = choices[name][0], encodings[name]
        reason = codecs.no_saving(codec, enc, r.bytes_dense)
        if reason:
            r.fallback_reason = reason
            continue
        r.codec, r.bytes_encoded, r.config = codec, enc.nbytes, codecs.config_dict(configs[name])
        decoded[name] = onnx_layout(codecs.decode(enc), weights[name].shape, r.op, r.transposed)
    return EncodedModel(records, decoded, time.perf_counter() - start)


def initializer_arrays(model: onnx.ModelProto, names) -> dict[str, np.ndarray]:
    """The named initializers as arrays."""
    wanted = set(names)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in wanted}


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers hold ``weights`` (float32)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(np.asarray(weights[init.name], np.float32), init.name))
    return out

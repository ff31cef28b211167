"""Calibration data: what each encoded layer sees, captured once on the original model with onnxruntime.

The data is one .npz of inputs by name, or a folder of them (one sample set each).
Two uses:

* :func:`capture_hessians`: for every weight, ``X^T X`` over the rows ``X`` its
  MatMul/Gemm/Conv multiplies (a conv's rows are its im2col patches, K ordered
  (kh, kw, in_channel) as the codecs take a conv weight), the statistics that error
  feedback (:mod:`.codecs.feedback`) needs. Samples are run one at a time and only
  the K x K sums are kept, so memory is bounded by one sample's activations.
* :func:`activation_scales`: per-tensor symmetric INT8 scales of those inputs (the
  bitvert target): the largest |value| seen maps to 127.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from .codecs import feedback
from .errors import BieError, BieWarning, OptionError
from .frontend import load_model
from .parity import make_inputs, session_of
from .sensitivity import layer_sensitivities

WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class LayerStatistics:
    xtx: np.ndarray  # float64 [K, K], sum over rows of x^T x
    rows: int


def sample_files(data: str | Path, option: str = "--calibration") -> list[Path]:
    """The .npz files of ``data``: the file itself, or every .npz of the folder in name order."""
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
        if not files:
            raise OptionError(f"{option} {data}: the folder holds no .npz file")
        return files
    if not path.is_file():
        raise OptionError(f"{option} {data}: no such file or folder")
    return [path]


def data_sha256(data: str | Path) -> str:
    """Digest of the calibration data: every sample file's name and bytes, in order."""
    h = hashlib.sha256()
    for path in sample_files(data):
        h.update(path.name.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def calibration_inputs(specs: list[dict], data: str | Path | None, seed: int = 1, batch: int = 8) -> list[dict]:
    """Input sets by name, one per sample file of ``data``; or one seeded random set with a warning.

    The default seed differs from ``check``'s and ``run``'s (0), so parity is not measured on calibration data.
    """
    if data is None:
        warnings.warn("no --calibration inputs; activation scales come from seeded random inputs", BieWarning)
        return [make_inputs(specs, batch, seed)]
    return [make_inputs(specs, batch, seed, path) for path in sample_files(data)]


def _loaded(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A path loaded as the compiler loads it; a ModelProto is taken as loaded already (the compiler's own, whose
    external tensors name their files by absolute path, which onnx's checker refuses)."""
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _readers(model: onnx.ModelProto, weight_names, strict: bool = True) -> dict[str, list[onnx.NodeProto]]:
    """{weight name: the MatMul/Gemm/Conv nodes reading it as input 1}; ``strict``: BieError for a weight nothing
    reads so (e.g. one that goes through a Transpose node first)."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in weight_names:
            readers.setdefault(node.input[1], []).append(node)
    missing = sorted(set(weight_names) - set(readers))
    if missing and strict:
        raise BieError(f"calibration: no MatMul/Gemm/Conv reads weight(s) {missing}")
    return readers


def _observe(model: onnx.ModelProto, tensors: list[str], inputs: dict, threads: int | None = None) -> dict:
    """The named intermediate tensors of ``model`` on ``inputs``, as extra graph outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    by_name = {v.name: v for v in [*probe.graph.value_info, *probe.graph.input]}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(by_name.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    outputs = session_of(probe, threads).run(None, inputs)
    return dict(zip([o.name for o in probe.graph.output], outputs))


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def layer_rows(node: onnx.NodeProto, x: np.ndarray, weight_shape: tuple) -> np.ndarray:
    """The rows [M, K] that ``node`` multiplies its weight with, K in the codec's order."""
    if node.op_type == "MatMul":
        return x.reshape(-1, x.shape[-1])
    if node.op_type == "Gemm":
        return x.T if _attribute(node, "transA", 0) else x
    return im2col(x, weight_shape, node)


def im2col(x: np.ndarray, weight_shape: tuple, node: onnx.NodeProto) -> np.ndarray:
    """A Conv's input patches [groups * B * OH * OW, kh * kw * C / groups], channel fastest (the codecs' K order
    for convs). A grouped conv's groups are stacked as rows: its weight matrix has one K axis for every group,
    so the statistics of its rows are summed over the groups (for error feedback, every group's rows are
    rounded against the inputs all groups see: an approximation a depthwise conv cannot avoid)."""
    _, c, kh, kw = weight_shape  # c: input channels per group
    groups = _attribute(node, "group", 1)
    sh, sw = _attribute(node, "strides", [1, 1])
    dh, dw = _attribute(node, "dilations", [1, 1])
    top, left, bottom, right = _pads(node, x.shape[2:], (kh, kw), (sh, sw), (dh, dw))
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [padded[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]  # each [B, groups * C, OH, OW]
    patches = np.stack(taps, axis=-1)  # [B, groups * C, OH, OW, kh * kw]
    patches = patches.reshape(x.shape[0], groups, c, oh, ow, kh * kw)
    return patches.transpose(1, 0, 3, 4, 5, 2).reshape(-1, kh * kw * c)


def _pads(node: onnx.NodeProto, size: tuple, kernel: tuple, strides: tuple, dilations: tuple) -> tuple:
    """(top, left, bottom, right) of a Conv, its ``auto_pad`` resolved as onnxruntime resolves it."""
    auto_pad = _attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "NOTSET":
        top, left, bottom, right = _attribute(node, "pads", [0, 0, 0, 0])
        return top, left, bottom, right
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise BieError(f"calibration: conv {node.name!r} has auto_pad {auto_pad!r}, not an ONNX value")
    before, after = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        before.append(small if auto_pad == "SAME_UPPER" else large)  # SAME_UPPER puts the odd pixel at the end
        after.append(total - before[-1])
    return before[0], before[1], after[0], after[1]


def capture_hessians(model: str | Path | onnx.ModelProto, weight_names: list[str], samples: list[dict],
                     chunk_rows: int = 4096) -> dict[str, LayerStatistics]:
    """{weight name: X^T X and row count} over every sample, streamed (one sample's activations at a time).

    onnxruntime and BLAS run on one thread so the sums are reproducible bit for bit (``check`` recomputes
    them). A weight that no MatMul/Gemm/Conv reads directly gets no entry (its codec then rounds data-free).
    """
    model = _loaded(model)
    readers = _readers(model, weight_names, strict=False)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    sums: dict[str, np.ndarray] = {}
    rows = dict.fromkeys(readers, 0)
    tensors = sorted({node.input[0] for nodes in readers.values() for node in nodes})
    for inputs in samples:
        values = _observe(model, tensors, inputs, threads=1)
        for name, nodes in readers.items():
            for node in nodes:
                x = layer_rows(node, values[node.input[0]], shapes[name])
                with threadpool_limits(1, "blas"):
                    for start in range(0, len(x), chunk_rows):
                        part = x[start:start + chunk_rows].astype(np.float64)
                        sums[name] = sums.get(name, 0) + part.T @ part
                rows[name] += len(x)
    return {name: LayerStatistics(sums[name], rows[name]) for name in readers if rows[name]}


def activation_scales(model: str | Path | onnx.ModelProto, weight_names: list[str],
                      inputs: dict | list[dict]) -> dict[str, float]:
    """{weight name: scale} of the activation each named weight multiplies, over every input set."""
    model = _loaded(model)
    feeds = {name: nodes[0].input[0] for name, nodes in _readers(model, weight_names).items()}
    observed = sorted(set(feeds.values()))
    peaks = dict.fromkeys(observed, 0.0)
    for sample in [inputs] if isinstance(inputs, dict) else inputs:
        values = _observe(model, observed, sample)
        for name in observed:
            if values[name].size:
                peaks[name] = max(peaks[name], float(np.max(np.abs(values[name]))))
    return {w: (peaks[a] / 127.0 if peaks[a] > 0 else 1.0) for w, a in feeds.items()}


def layer_calibrations(model: str | Path | onnx.ModelProto, weight_names: list[str], samples: list[dict],
                       damping: float, act_order: bool, sensitive: bool = False) -> dict[str, feedback.Calibration]:
    """{weight name: what its codec's error feedback needs}, from :func:`capture_hessians`; ``sensitive``: with
    each layer's measured sensitivity too (:mod:`.sensitivity`, for splitting a bits budget over layers)."""
    model = _loaded(model)
    stats = capture_hessians(model, weight_names, samples)
    measured = layer_sensitivities(model, sorted(stats), samples) if sensitive else {}
    return {name: feedback.Calibration(s.xtx, s.rows, damping, act_order, measured.get(name, 1.0))
            for name, s in stats.items()}


def record(data: str | Path, damping: float, act_order: bool) -> dict:
    """The manifest's ``calibration`` entry: what ``check`` needs to re-encode the layers exactly."""
    return {"path": str(Path(data).absolute()), "sha256": data_sha256(data), "samples": len(sample_files(data)),
            "damping": damping, "act_order": act_order}

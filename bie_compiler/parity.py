"""Parity of an artefact against onnxruntime.

Two references: (a) the original model, which measures what the codec costs in
accuracy, and (b) the same model with each encoded weight replaced by the
codec's reference decoding, which the kernels must match to fp32 accumulation
error. The encodings are recomputed from the source model and must hash to
what the artefact recorded, so (b) is the model the artefact really holds.
An artefact encoded with error feedback records its calibration data (path,
digest, settings): the layers' statistics are captured again from that data
(which must hash the same) and the layers re-encoded with them, bit for bit.
"""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import numpy_helper

from . import codecs, external_data
from .errors import ArtefactError, BieError, ModelError
from .frontend import file_sha256, load_model
from .model_identity import check_data_files
from .preprocess import optimized
from .codecs import lut_tables, rotation
from .codecs.layout import codec_matrix, onnx_layout
from .report import LayerRecord

DEFAULT_TOLERANCE = 1e-4  # relative to the largest reference output; fp32 accumulation-order error
# bitvert: the reference rounds activations to INT8 as the device does, but an activation that TVM and
# onnxruntime compute a last bit apart can land on either side of a rounding boundary; each such flip moves
# outputs by x_scale * |w| (~1e-3 of the output range on the bundled models), and in a deep model the flips
# it causes downstream add up. Measured without flips: ~1e-6. So the end-to-end tolerance holds while no
# layer input flips; past a flip, check asks each device layer to match its reference on its own inputs
# (LAYER_TOLERANCE: float32 output rounding) and every layer input up to the first flip to agree to fp32 error.
BITVERT_TOLERANCE = 1e-3
LAYER_TOLERANCE = 1e-5


def default_tolerance(manifest: dict) -> float:
    return BITVERT_TOLERANCE if manifest["target"]["kind"] == "bitvert" else DEFAULT_TOLERANCE


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a .npz by name; BieError naming the file when it cannot be read."""
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BieError(f"{path}: cannot read inputs ({type(e).__name__}: {str(e)[:200]})") from None


def inputs_from(specs: list[dict], given: dict[str, np.ndarray], label) -> dict:
    """The arrays of ``given`` the inputs in ``specs`` name (others ignored); BieError naming ``label`` if one
    is missing."""
    missing = [s["name"] for s in specs if s["name"] not in given]
    if missing:
        raise BieError(f"{label}: missing input(s) {missing} (has {sorted(given)})")
    return {s["name"]: given[s["name"]] for s in specs}


def make_inputs(specs: list[dict], batch: int = 1, seed: int = 0, npz: str | Path | None = None) -> dict:
    """Inputs from a .npz (by input name) or seeded random ones; symbolic dims take ``batch``.

    Random floats are standard normal; an index input (``range`` in its spec: token ids) takes random
    values in its range; other integer inputs (masks, flags) are ones."""
    if npz is not None:
        return inputs_from(specs, read_npz(npz), npz)
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else batch for d in spec["shape"]]
        dtype = np.dtype(spec["dtype"])
        if np.issubdtype(dtype, np.floating):
            inputs[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        elif "range" in spec:
            inputs[spec["name"]] = rng.integers(*spec["range"], shape).astype(dtype)
        else:
            inputs[spec["name"]] = np.ones(shape, dtype)
    return inputs


def decoded_model(model: onnx.ModelProto, layers: list[LayerRecord], calibrations: dict | None = None,
                  data: external_data.DataFile | None = None, encodings: dict | None = None) -> onnx.ModelProto:
    """The model with every encoded weight replaced by decode(encode(weight)), checked against the artefact.

    ``calibrations``: {weight name: codecs.feedback.Calibration} for layers encoded with error feedback.
    ``data``: where the decoded weights go, as external data (a model past 2 GB); None: inline.
    ``encodings``: if given, filled with {weight name: its encoding}.
    """
    calibrations = calibrations or {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {init.name: init for init in out.graph.initializer}
    for layer in layers:
        if layer.fallback_reason is not None:
            continue
        if layer.name not in by_name:
            raise ArtefactError(f"encoded weight {layer.name!r} is not in the source model")
        weight = external_data.tensor_array(by_name[layer.name])
        module = codecs.get_codec(layer.codec)
        enc = codecs.encode(layer.codec, codec_matrix(weight, layer.op, layer.transposed), module.Config(**layer.config),
                            calibrations.get(layer.name))
        if enc.sha256() != layer.encoded_sha256:
            raise ArtefactError(
                f"re-encoding {layer.name!r} does not reproduce the artefact's encoding "
                "(different source model or bie-compiler version)"
            )
        if encodings is not None:
            encodings[layer.name] = enc
        decoded = onnx_layout(codecs.decode(enc), weight.shape, layer.op, layer.transposed)
        tensor = numpy_helper.from_array(decoded, layer.name) if data is None else data.store(layer.name, decoded)
        by_name[layer.name].CopyFrom(tensor)
    return out


_INT8_TAG = "bie_int8_"  # the prefix of what quantized_model inserts


def quantized_model(model: onnx.ModelProto, layers: list[LayerRecord], calibrations: dict | None = None,
                    data: external_data.DataFile | None = None) -> onnx.ModelProto:
    """:func:`decoded_model` with the input of every layer offloaded to BitVert rounded to INT8 as the device does.

    Before each MatMul, Gemm or Conv reading an offloaded weight: ``clip(round(x / s), -127, 127) * s`` with
    the layer's calibrated activation scale ``s`` (float32, round half to even, as the simulator).
    """
    out = decoded_model(model, layers, calibrations, data)
    scales = {r.name: r.details["activation_scale"] for r in layers if "activation_scale" in r.details}
    nodes = []
    for i, node in enumerate(out.graph.node):
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1 and node.input[1] in scales:
            x, tag = node.input[0], f"{_INT8_TAG}{i}"
            out.graph.initializer.extend([
                numpy_helper.from_array(np.array(scales[node.input[1]], np.float32), f"{tag}_scale"),
                numpy_helper.from_array(np.array(-127, np.float32), f"{tag}_min"),
                numpy_helper.from_array(np.array(127, np.float32), f"{tag}_max"),
            ])
            nodes += [
                onnx.helper.make_node("Div", [x, f"{tag}_scale"], [f"{tag}_div"]),
                onnx.helper.make_node("Round", [f"{tag}_div"], [f"{tag}_round"]),
                onnx.helper.make_node("Clip", [f"{tag}_round", f"{tag}_min", f"{tag}_max"], [f"{tag}_q"]),
                onnx.helper.make_node("Mul", [f"{tag}_q", f"{tag}_scale"], [f"{tag}_x"]),
            ]
            node.input[0] = f"{tag}_x"
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def session_of(model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model`` (its external data read from its files), warnings off;
    ``threads``: onnxruntime's intra- and inter-op threads (None: its default)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    return external_data.session(model, options)


def run_onnxruntime(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    return session_of(model).run(None, inputs)


def bitvert_layers(captured: list, manifest: dict, reference: onnx.ModelProto, inputs: dict) -> list[dict]:
    """Per offloaded layer, in the order the artefact ran them (first call of each):

    * ``device_rel_err``: the rows the device returned against the same input rows rounded to INT8 with the
      layer's scale, times its decoded weight (float64). Fed the artefact's own layer inputs, this reference
      inherits no rounding flips: what is left is float32 output rounding (:data:`LAYER_TOLERANCE`).
    * ``input_rel_diff`` and ``flips``: the layer's float input against the INT8 reference model's (onnxruntime)
      and how many of their INT8 codes differ: inputs a last bit apart that straddle a rounding boundary.
    """
    from .runtime.bitvert.simulator import quantize_activations

    names = [name for name, _ in manifest["bitvert"]["layers"]]
    records = {r["name"]: r for r in manifest["layers"]}
    reference_inputs = _offloaded_inputs(reference, inputs)
    initializers = {i.name: i for i in reference.graph.initializer}
    rows, weights = {}, {}
    for index, x, x_rows, y in captured:
        name = names[index]
        record = records[name]
        scale = np.float32(record["details"]["activation_scale"])
        if name not in weights:  # the decoded weight as the codec matrix [N, K] the device multiplies by
            weights[name] = codec_matrix(external_data.tensor_array(initializers[name]), record["op"],
                                         record["transposed"]).astype(np.float64)
        expected = (quantize_activations(x_rows, scale).astype(np.float64) * np.float64(scale)) @ weights[name].T
        error = _rel(y, expected)
        if name in rows:
            rows[name]["device_rel_err"] = max(rows[name]["device_rel_err"], error)
            continue
        theirs = reference_inputs[name].reshape(x.shape)
        flips = int(np.count_nonzero(quantize_activations(x, scale) != quantize_activations(theirs, scale)))
        rows[name] = {"layer": name, "device_rel_err": error, "input_rel_diff": _rel(x, theirs), "flips": flips}
    return list(rows.values())


def bitvert_passed(layers: list[dict], end_to_end: float, tolerance: float) -> bool:
    """A bitvert artefact computes what it defines: every device layer matches its reference on its own inputs,
    and the outputs match the INT8 reference model's end to end, or, where a layer input flipped an INT8 code,
    every layer input up to the first flip agrees with the reference's to fp32 accumulation error."""
    if any(layer["device_rel_err"] > LAYER_TOLERANCE for layer in layers):
        return False
    first = next((i for i, layer in enumerate(layers) if layer["flips"]), None)
    if first is None:
        return end_to_end <= tolerance
    return all(layer["input_rel_diff"] <= DEFAULT_TOLERANCE for layer in layers[:first + 1])


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    diff = float(np.abs(np.asarray(actual, np.float64) - expected).max(initial=0.0))
    peak = float(np.abs(expected).max(initial=0.0))
    return diff / peak if peak else diff


def _offloaded_inputs(reference: onnx.ModelProto, inputs: dict) -> dict[str, np.ndarray]:
    """The float input of each offloaded layer in :func:`quantized_model`'s model (before its INT8 rounding),
    by weight name, as onnxruntime computes it."""
    producers = {n.output[0]: n for n in reference.graph.node if n.output}
    names = {node.input[1]: producers[node.input[0].removesuffix("_x") + "_div"].input[0]
             for node in reference.graph.node
             if node.input and node.input[0].startswith(_INT8_TAG) and node.input[0].endswith("_x")}
    return _intermediates(reference, inputs, names)


def _intermediates(model: onnx.ModelProto, inputs: dict, names: dict[str, str]) -> dict[str, np.ndarray]:
    """{key: the float tensor named ``names[key]`` in ``model``, as onnxruntime computes it on ``inputs``}."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(v) for v in names.values())
    for out in probe.graph.output[len(model.graph.output):]:
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    values = run_onnxruntime(probe, inputs)[len(model.graph.output):]
    return dict(zip(names, values))


def _compiled_kernel(runner, symbol: str):
    """The artefact's compiled PrimFunc ``symbol`` (in the library the VM imports: the VM's own function of a name
    is its Relax wrapper, when it has one)."""
    for library in runner.vm.module.imports:
        with contextlib.suppress(AttributeError):  # not in this one
            return library.get_function(symbol, query_imports=True)
    raise ArtefactError(f"{runner.path}: no compiled kernel {symbol!r}")


def _int8_table_gemv(enc) -> tuple[int, list, object]:
    """What ``check`` runs of a layer's int8-table GEMV: its K, its constants and ``bound(x)``, the kernel's stated
    error bound per output."""
    from .codecs import bbs, tans
    from .codegen.kernels import bbs_decoded, bbs_lut, bitplane, bitplane_lut, tans_matmul

    if enc.codec == bbs.NAME:
        return enc.shape[1], bbs_decoded.constants(enc, "int8"), lambda x: bbs_lut.int8_error_bound(x, enc)
    if enc.codec == tans.NAME:  # the bytes its kernel decodes at load, from the reference decoder's codes
        layout, codes, scales = tans_matmul.lut_layout(enc), tans.decode_symbols(enc), enc.arrays["steps"][:, None]
    else:
        layout, codes, planes = bitplane.lut_parts(enc)
        scales = planes.scales
    constants = [bitplane_lut.words_of(codes, layout.magnitude_planes, "int8"), bitplane_lut.lanes_of_scales(scales)]
    return layout.k, constants, lambda x: bitplane_lut.int8_error_bound(x, layout, scales)


def int8_table_layers(runner, reference: onnx.ModelProto, inputs: dict, encodings: dict) -> list[dict]:
    """Per layer whose batch-1 GEMV has int8 look-up tables (``lut_tables``: an approximation, which the decoded
    model's outputs cannot be matched against to fp32 error): the artefact's own GEMV kernel run on the layer's input
    in the decoded-weights model (rotated as the kernel's is, for a rotated layer), against the exact product, and
    the kernel's stated bound on that input (``bitplane_lut.int8_error_bound``, ``bbs_lut.int8_error_bound``, per
    output; ``passed``: every error within it, fp32 rounding aside). ``bound_rel`` / ``error_rel``: the largest bound
    / error over the largest exact output; ``in_model``: the model's call runs the GEMV (its input has one row; above
    one, the panel GEMM decodes the same bytes exactly). The layers are those the artefact computes with such a
    kernel (its kind ends with ``lut_tables.INT8_KIND_SUFFIX``: what ``lut_tables.chosen`` gave it at compile time);
    none where its CPU runs the exact tables (the default tolerance applies)."""
    from .codegen import SMALL_BATCH_ROWS

    # layers of one shape share their kernels: the manifest names the layers each symbol computes from
    symbols = {name: symbol for symbol, names in runner.manifest["kernel_layers"].items()
               if symbol.endswith(lut_tables.INT8_KIND_SUFFIX) for name in names.split(", ")}
    layers = [r["name"] for r in runner.manifest["layers"] if r["name"] in symbols]
    if not layers:
        return []
    transposed = {n.output[0]: n.input[0] for n in reference.graph.node if n.op_type == "Transpose"}
    # each weight's MatMul or Gemm (reading it directly or through a Transpose) -> the activation it multiplies
    matmuls = {transposed.get(n.input[1], n.input[1]): n.input[0] for n in reference.graph.node
               if n.op_type in ("MatMul", "Gemm")}
    unchecked = [name for name in layers if name not in matmuls]
    values = _intermediates(reference, inputs, {name: matmuls[name] for name in layers if name not in unchecked})
    rows = [{"layer": name, "passed": False, "unchecked": "no MatMul or Gemm reads the weight itself"}
            for name in unchecked]
    for name in layers:
        if name in unchecked:
            continue
        enc, negated = rotation.unrotated(encodings[name])  # a rotated layer's kernels: the rotated weight's
        k, constants, bound_of = _int8_table_gemv(enc)
        x = values[name].reshape(-1, k).astype(np.float32)
        if negated is not None:  # its GEMV reads the rotated activation (codegen.hadamard)
            x = rotation.rotate(x, negated).astype(np.float32)
        kernel = _compiled_kernel(runner, symbols[name])
        out = tvm.runtime.empty((x.shape[0], enc.shape[0]), "float32", runner.device)
        kernel(tvm.runtime.tensor(x, runner.device), *(tvm.runtime.tensor(c, runner.device) for c in constants), out)
        exact = x.astype(np.float64) @ codecs.decode(enc).T.astype(np.float64)
        error = np.abs(out.numpy() - exact)
        bound = bound_of(x)
        peak = float(np.abs(exact).max()) or 1.0
        rows.append({"layer": name, "bound_rel": float(bound.max()) / peak, "error_rel": float(error.max()) / peak,
                     "passed": bool((error <= bound + LAYER_TOLERANCE * peak).all()),
                     "in_model": x.shape[0] <= SMALL_BATCH_ROWS})  # the model's call runs this GEMV on these inputs
    return rows


def compare(outputs: list[np.ndarray], references: list[np.ndarray]) -> dict:
    """Normwise errors over all outputs together: max |y - ref|, that over max |ref|, and cosine."""
    y = np.concatenate([np.asarray(o, np.float64).ravel() for o in outputs])
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in references])
    if y.shape != ref.shape:
        raise BieError(f"output sizes differ: artefact {y.size} values, onnxruntime {ref.size}")
    abs_err = float(np.max(np.abs(y - ref))) if y.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    norms = np.linalg.norm(y) * np.linalg.norm(ref)
    return {
        "max_abs_err": abs_err,
        "max_rel_err": abs_err / scale if scale else abs_err,
        "cosine": float(y @ ref / norms) if norms else float(np.array_equal(y, ref)),
    }


def recorded_calibrations(manifest: dict, model: onnx.ModelProto, layers: list[LayerRecord], data=None) -> dict:
    """{weight name: Calibration} of the layers encoded with feedback, from the data the manifest records
    (or ``data``, which must hash the same); {} for an artefact encoded without calibration."""
    from .calibration import calibration_inputs, data_sha256, layer_calibrations

    entry = manifest.get("calibration")
    if entry is None:
        return {}
    data = data or entry["path"]
    if not Path(data).exists():
        raise BieError(f"the artefact was encoded with error feedback on calibration data {entry['path']}, "
                       "which is not there: pass it with --calibration")
    if data_sha256(data) != entry["sha256"]:
        raise BieError(f"{data}: not the calibration data this artefact was encoded with (sha256 differs)")
    fed = [layer.name for layer in layers if layer.details.get("feedback") == "gptq"]
    samples = calibration_inputs(manifest["inputs"], data)
    return layer_calibrations(model, fed, samples, entry["damping"], entry["act_order"]) if fed else {}


def source_model(manifest: dict, model_path=None) -> onnx.ModelProto:
    """The model an artefact was compiled from (at ``model_path``, else where the manifest says), loaded as the
    compiler loads it; ModelError if it is missing or not the same file."""
    source = manifest["source_model"]
    path = model_path or source["path"]
    if path is None:
        raise BieError("the artefact was compiled from an in-memory model: pass the ONNX file with --model")
    if not Path(path).is_file():
        raise ModelError(f"{path}: source model not found (pass it with --model)")
    if file_sha256(path) != source["sha256"]:
        raise ModelError(f"{path}: not the model this artefact was compiled from (sha256 differs)")
    check_data_files(path, source)
    return load_model(optimized(path) if manifest.get("preprocess") else path)


@contextlib.contextmanager
def _device_calls(offloaded: bool):
    """The offloaded layers' calls of a bitvert artefact run inside (``device.CAPTURE``); [] for other targets."""
    if not offloaded:
        yield []
        return
    from .runtime.bitvert import device

    device.CAPTURE = captured = []
    try:
        yield captured
    finally:
        device.CAPTURE = None


MIN_COSINE = 0.95  # check's default fidelity floor: below it the codec changed the outputs too much to trust


def check_artefact(runner, model_path=None, inputs=None, tolerance: float | None = None, calibration=None,
                   min_cosine: float = MIN_COSINE) -> dict:
    """Run the artefact and onnxruntime on the same inputs; ``passed`` if (b) is within tolerance (the
    artefact computes what its encodings define), ``faithful`` if its outputs' cosine to the original
    model's is at least ``min_cosine`` (the encodings kept the model's outputs).

    ``calibration``: where the artefact's calibration data is, if not at the path its manifest records.

    For a bitvert artefact (b) is :func:`quantized_model`, and ``implied_*`` compare it with the
    original model: the error that INT8 activations and the encoded weights imply.
    """
    manifest = runner.manifest
    tolerance = default_tolerance(manifest) if tolerance is None else tolerance
    model = source_model(manifest, model_path)
    layers = [LayerRecord.from_json(r) for r in manifest["layers"]]
    offloaded = manifest["target"]["kind"] == "bitvert"
    with _device_calls(offloaded) as captured:
        outputs = list(runner.run(inputs).values())
    references = run_onnxruntime(model, inputs)
    original = compare(outputs, references)
    calibrations = recorded_calibrations(manifest, model, layers, calibration)
    # a model with data files gets its decoded weights in a data file too (inline, it could pass 2 GB)
    external = bool(external_data.data_files(model))
    with tempfile.TemporaryDirectory(prefix="bie-check-") as tmp, \
            external_data.DataFile(Path(tmp) / "decoded.data") if external else contextlib.nullcontext() as data:
        encodings = {}
        reference = (quantized_model if offloaded else decoded_model)(model, layers, calibrations, data,
                                                                      **({} if offloaded else {"encodings": encodings}))
        reference_outputs = run_onnxruntime(reference, inputs)
        device = bitvert_layers(captured, manifest, reference, inputs) if offloaded else []
        int8_tables = [] if offloaded else int8_table_layers(runner, reference, inputs, encodings)
    decoded = compare(outputs, reference_outputs)
    if offloaded:
        passed = bitvert_passed(device, decoded["max_rel_err"], tolerance)
    elif any(layer.get("in_model", True) for layer in int8_tables):  # the outputs approximate: each GEMV within
        passed = all(layer["passed"] for layer in int8_tables)  # its stated bound, the end-to-end difference reported
    else:  # no int8-table GEMV in the model's call (none, or every layer's input above one row): exact parity too
        passed = decoded["max_rel_err"] <= tolerance and all(layer["passed"] for layer in int8_tables)
    implied = compare(reference_outputs, references) if offloaded else {}
    return {
        **original,
        **{f"implied_{k}": v for k, v in implied.items()},
        "decoded_max_abs_err": decoded["max_abs_err"],
        "decoded_max_rel_err": decoded["max_rel_err"],
        "decoded_cosine": decoded["cosine"],
        "tolerance": tolerance,
        "passed": passed,
        **({"device_layers": device} if offloaded else {}),
        **({"int8_table_layers": int8_tables} if int8_tables else {}),
        "min_cosine": min_cosine,
        "faithful": original["cosine"] >= min_cosine,
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
    }

"""ONNX in: load, validate and import a model into TVM Relax with its weights as constants."""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import external_data
from .dequantization import fold_dequantized_weights, provenance
from .errors import ModelError
from .shape_folding import fold_shapes, is_shape_vector

OPSET_FALLBACK = 17


@dataclass(frozen=True)
class TensorSpec:
    """An initializer's shape and dtype: what the report needs of a weight without holding its values."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def of(cls, tensor: onnx.TensorProto) -> "TensorSpec":
        return cls(tuple(tensor.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)))


@dataclass
class ImportedModel:
    """A Relax module plus what the rest of the compiler needs to know about its ONNX origin."""

    mod: object  # tvm.IRModule
    model: onnx.ModelProto  # validated, Constant nodes turned into initializers (large ones may stay external)
    weights: dict[str, TensorSpec]  # every initializer's shape and dtype by name
    inputs: list[dict]  # [{"name", "shape" (ints or dim names), "dtype"}]
    outputs: list[dict]

    constant_names: dict  # the Relax constant bound for an initializer -> its name (by object identity)
    consumers: dict[str, list[tuple[str, str, int]]]  # initializer -> (node name, op, input position) reading it
    dequantized: dict[str, dict]  # float weight -> the integer initializer the source dequantizes it from
    stored: dict  # initializer left in its data file -> its codecs.stored.StoredWeight (read where it is needed)

    def weight_name(self, constant) -> str | None:
        """The initializer name of a constant found in the IR; None for one the importer made itself."""
        return self.constant_names.get(constant)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Read and validate an ONNX model; every problem is a ModelError naming the file. A file's large
    external tensors stay in their data files (:mod:`.external_data`); the checks run on the file, so a
    model past protobuf's 2 GB is checked too."""
    label = "<ModelProto>" if isinstance(source, onnx.ModelProto) else str(source)
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelError(f"{label}: no such file")
        try:
            model = external_data.load(path)
        except ModelError:
            raise
        except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-like and others
            raise ModelError(f"{label}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node:
        raise ModelError(f"{label}: the ONNX graph has no nodes (not an ONNX model, or an empty one)")
    try:
        # the file when there is one: onnx refuses to serialise an in-memory model past 2 GB to check it
        onnx.checker.check_model(model if isinstance(source, onnx.ModelProto) else str(source))
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:
        raise ModelError(f"{label}: invalid ONNX model: {str(e).strip().splitlines()[0]}") from None
    model = fold_dequantized_weights(constants_to_initializers(model))
    check_supported(model, label)
    check_finite(model, label)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn tensor-valued Constant nodes into initializers named by their output, so every weight has a name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = []
    for node in out.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.type == onnx.AttributeProto.TENSOR:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def check_supported(model: onnx.ModelProto, label: str) -> None:
    """Fail with every node whose op the Relax ONNX frontend cannot import."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant", "If"}
    bad = [n for n in model.graph.node if n.op_type not in known or n.domain not in ("", "ai.onnx")]
    if bad:
        listed = "; ".join(f"{n.name or '<unnamed>'} ({(n.domain + '.') if n.domain else ''}{n.op_type})" for n in bad)
        constants = {i.name for i in model.graph.initializer}
        hint = ("; they compute on constants only: compile --preprocess folds them"
                if all(set(n.input) <= constants for n in bad) else "")
        raise ModelError(f"{label}: {len(bad)} node(s) use unsupported operators: {listed}{hint}")


def check_finite(model: onnx.ModelProto, label: str) -> None:
    for init in model.graph.initializer:  # one at a time: an external weight is read, checked and dropped
        _check_finite_tensor(init, label)


def _check_finite_tensor(init: onnx.TensorProto, label: str) -> None:
    try:
        a = external_data.tensor_array(init)
    except ModelError:
        raise
    except Exception as e:  # raw_data that does not match dims and dtype, unknown dtypes, external data
        raise ModelError(f"{label}: initializer {init.name!r} cannot be read: {str(e).strip()[:200]}") from None
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ModelError(f"{label}: initializer {init.name!r} has {bad} NaN/Inf value(s)")


def value_info(values) -> list[dict]:
    infos = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        infos.append({"name": v.name, "shape": shape, "dtype": dtype})
    return infos


# ops whose output holds the same index values as their first input (reshaped, cast): an index input keeps
# its meaning through them to the Gather that uses it
def _readers(model: onnx.ModelProto) -> dict[str, list[tuple[int, onnx.NodeProto, int]]]:
    """Value name -> (node index, node, input position) of every node reading it."""
    readers: dict[str, list] = {}
    for index, node in enumerate(model.graph.node):
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((index, node, position))
    return readers


def _reads_through(readers: dict, name: str, passing: set[str]) -> list[tuple[int, onnx.NodeProto, int]]:
    """The reads of ``name``, looking through ``passing`` ops (their input 0 becomes their output 0): every read
    by another op, or by a passing op at another input."""
    reads, frontier, seen = [], [name], {name}
    while frontier:
        for index, node, position in readers.get(frontier.pop(), []):
            if node.op_type in passing and position == 0:
                if node.output[0] not in seen:
                    seen.add(node.output[0])
                    frontier.append(node.output[0])
            else:
                reads.append((index, node, position))
    return reads


# ops whose output holds the same index values as their first input (reshaped, cast): an index input keeps
# its meaning through them to the Gather that uses it
_INDEX_PRESERVING = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}


def index_ranges(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Integer input -> [low, high): the rows of the constant tables it indexes (Gather indices, through
    reshapes and casts), so that generated inputs are valid token ids and the like."""
    tables = {i.name: list(i.dims) for i in model.graph.initializer}
    readers = _readers(model)
    ranges = {}
    for value in model.graph.input:
        if value.name in tables or value.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        limits = [tables[node.input[0]][next((a.i for a in node.attribute if a.name == "axis"), 0)]
                  for _, node, position in _reads_through(readers, value.name, _INDEX_PRESERVING)
                  if node.op_type == "Gather" and position == 1 and node.input[0] in tables]
        if limits and min(limits) > 0:
            ranges[value.name] = [0, int(min(limits))]
    return ranges


# ops that pass a weight on unchanged in meaning (exporters transpose, cast or dequantize weights first)
_WEIGHT_PRESERVING = {"Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "DequantizeLinear"}


def weight_consumers(model: onnx.ModelProto) -> dict[str, list[tuple[str, str, int]]]:
    """Initializer -> the nodes that compute with it: (node name, op type, input position), looking through
    casts, transposes and dequantizations, so a weight named ``val_3`` can be found by its ``MatMul``."""
    readers = _readers(model)
    return {init.name: [(node.name or f"<node {index}>", node.op_type, position)
                        for index, node, position in _reads_through(readers, init.name, _WEIGHT_PRESERVING)]
            for init in model.graph.initializer}


def model_inputs(model: onnx.ModelProto) -> list[dict]:
    """The inputs as the manifest lists them; an index input also has ``range`` (see :func:`index_ranges`)."""
    initializers = {i.name for i in model.graph.initializer}
    ranges = index_ranges(model)
    infos = value_info(v for v in model.graph.input if v.name not in initializers)
    return [{**info, "range": ranges[info["name"]]} if info["name"] in ranges else info for info in infos]


def fix_input_shapes(model: onnx.ModelProto, specs: list[dict], label: str) -> onnx.ModelProto:
    """The model with its inputs declared as ``specs`` (sizes where they are ints), shapes inferred again,
    so every tensor, the outputs and TVM's import see the fixed sizes; ModelError if the model contradicts them."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {spec["name"]: spec["shape"] for spec in specs}
    for value in out.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, by_name.get(value.name, ())):
            if isinstance(size, int):
                dim.dim_value = size  # clears dim_param (a oneof)
    del out.graph.value_info[:]  # inferred for the symbolic shapes; inferred again below
    try:
        return onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except Exception as e:
        fixed = ", ".join(f"{spec['name']}: {spec['shape']}" for spec in specs)
        raise ModelError(f"{label}: the model does not accept the input shapes {fixed}: "
                         f"{str(e).strip().splitlines()[0]}") from None


def import_model(source: str | Path | onnx.ModelProto, shapes=None) -> ImportedModel:
    """Load, validate and import to Relax (weights inline as constants). ``shapes``, a
    :class:`~bie_compiler.shapes.ShapeRequest`, fixes input sizes; symbolic dims it leaves stay symbolic."""
    from tvm.relax.frontend.onnx import from_onnx

    from .shapes import resolve

    model = load_model(source)
    label = "<ModelProto>" if isinstance(source, onnx.ModelProto) else str(source)
    if shapes:
        model = fix_input_shapes(model, resolve(model_inputs(model), shapes), label)
    model = fold_shapes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET_FALLBACK)
    failure = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the importer prints the
            # operator it failed on (in e), and warns when it renames an input (the weights made inputs)
            warnings.filterwarnings("ignore", "Renaming name", UserWarning)
            mod = from_onnx(_importer_form(model), opset=opset, keep_params_in_input=True)
    except Exception as e:  # raised below, once e and the importer's half-built state it holds are freed
        failure = f"{label}: TVM's ONNX importer failed: {type(e).__name__}: {str(e).strip()[:500]}"
    if failure:
        raise ModelError(failure + _import_hint(model, failure))
    mod, constant_names, stored = bind_weights(mod, model)
    weights = {i.name: TensorSpec.of(i) for i in model.graph.initializer}
    dequantized = {i.name: source for i in model.graph.initializer if (source := provenance(i))}
    return ImportedModel(mod, model, weights, model_inputs(model), value_info(model.graph.output), constant_names,
                         weight_consumers(model), dequantized, stored)


def _external_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [i for i in model.graph.initializer if external_data.uses_external_data(i)]


def _importer_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """What TVM's importer takes: the small integer initializers as Constant nodes, and the initializers left in
    data files declared as graph inputs after the model's own.

    The importer makes every initializer a parameter (``keep_params_in_input``), so an op's shape, axes or pads
    would reach it as a run-time value: an ``Expand`` to a constant shape then computes that shape at run time
    (``tensor_to_shape`` + ``match_cast``), and TVM's FuseOps moves the broadcast it feeds ahead of the
    ``match_cast`` that defines the shape's variables (the VM build fails: "has not been computed"). As
    constants, the importer takes its static paths. The external initializers are never read by the importer
    (which copies every initializer it sees); their values are bound after the import, one at a time
    (:func:`bind_weights`)."""
    external = {i.name for i in _external_initializers(model)}
    shapes = [i for i in model.graph.initializer if i.name not in external and is_shape_vector(i)]
    if not external and not shapes:
        return model
    moved = external | {i.name for i in shapes}
    out = onnx.ModelProto()
    out.CopyFrom(model)  # small: the external tensors hold no bytes
    kept = [i for i in out.graph.initializer if i.name not in moved]
    externals = [i for i in out.graph.initializer if i.name in external]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    inputs = [v for v in out.graph.input if v.name not in moved]  # an initializer an old exporter lists as input
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    out.graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in externals)
    nodes = [onnx.helper.make_node("Constant", [], [i.name], value=i) for i in shapes] + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _import_hint(model: onnx.ModelProto, failure: str) -> str:
    """What the user can do about an import failure: shapes computed at run time are the common one."""
    if "shape" not in failure.lower():
        return ""
    symbolic = sorted({d for spec in model_inputs(model) for d in spec["shape"] if isinstance(d, str)})
    if symbolic:
        return (f"; hint: the model computes shapes from its symbolic input sizes ({', '.join(symbolic)}): fix them "
                "with --input-shape NAME:1x128 or --dim NAME=VALUE")
    return ("; hint: the model computes shapes at run time in a way TVM's importer cannot follow; simplify it "
            "(onnxsim) or re-export it with static shapes")


def bind_weights(mod, model: onnx.ModelProto):
    """Bind the imported function's weight parameters to constants, one per initializer; returns the module,
    the constants' names and where the weights left in data files lie (``external_data.stored_weight``).

    Each initializer gets its own constant object, so weights are known by their ONNX names even when two
    initializers hold identical bytes (tied or duplicated weights stay distinct layers). The initializers
    :func:`_importer_form` made inputs are the last inputs of ``main``; they are bound too, to a memory map of
    their data file where TVM can take one (64-byte aligned): nothing of them is read until a weight that stays
    dense is built (the encoding reads them from the file), so the large weights cost no memory at import.
    """
    import tvm
    from tvm import relax

    mod, _ = relax.frontend.detach_params(mod)
    main = mod["main"]
    external = _external_initializers(model)
    num_input = int(main.attrs["num_input"]) - len(external)
    by_name = {i.name: i for i in model.graph.initializer}
    tensors = [(p, by_name[p.name]) for p in main.params[int(main.attrs["num_input"]):]]
    tensors += list(zip(main.params[num_input:num_input + len(external)], external))
    constants, names, stored, maps = {}, {}, {}, {}
    for param, tensor in tensors:  # a copied array is dropped once TVM holds its copy
        weight = external_data.stored_weight(tensor)
        mapped = external_data.mapped_array(weight, maps) if weight is not None else None
        if weight is not None:
            stored[tensor.name] = weight
        if mapped is not None and mapped.ctypes.data % 64 == 0:
            constants[param] = constant = relax.const(tvm.runtime.from_dlpack(mapped))
        else:  # in the proto, or at a data file offset TVM cannot take as it is: a copy
            array = external_data.tensor_array(tensor)
            # the dtype given: without it relax.const makes int64 arrays int32 (and float64 float32), and an int64
            # initializer then meets the int64 values it is added to as int32 (MiniLM's attention mask)
            constants[param] = constant = relax.const(array, str(array.dtype))
        names[constant] = tensor.name
    mod = relax.transform.BindParams("main", constants)(mod)
    if external:
        mod["main"] = mod["main"].with_attr("num_input", num_input)
    return mod, names, stored

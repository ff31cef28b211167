"""ONNX models whose weights live in external data files (the form of every model past protobuf's 2 GB).

Such a model is loaded without its data: large float tensors stay references to their files (the
location made absolute, so the in-memory model names its data wherever the caller's working folder
is) and are read one tensor at a time when needed. Small or integer tensors (shapes, indices, quantized
weights a fold evaluates) are read in at load. onnxruntime opens such a model from a copy written with
its data beside it (:func:`session`); nothing passes the weights through protobuf.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .codecs.stored import StoredWeight
from .errors import ModelError

# external tensors below this many bytes, or not floating point, are read into the proto at load: the frontend's
# folds and TVM's importer need the values of shapes and indices, and holding them costs nothing
KEPT_EXTERNAL_BYTES = 1 << 16
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
_NUMPY_FLOATS = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                 onnx.TensorProto.DOUBLE: "float64"}  # the raw forms numpy reads as they are


def _location(tensor: onnx.TensorProto) -> str:
    return ExternalDataInfo(tensor).location


def _set_location(tensor: onnx.TensorProto, location: str) -> None:
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location


def _model_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model that may hold external data (initializers, Constant values, subgraphs), by
    onnx's own walk."""
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _model_tensors(model) if uses_external_data(t)]


def load(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` with its large float tensors left in their data files (absolute locations) and the
    others read in; ModelError naming a data file that is missing, outside the model's folder or too short."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    folder = path.absolute().parent
    for tensor in external_tensors(model):
        info = ExternalDataInfo(tensor)
        data = folder / info.location
        if Path(info.location).is_absolute() or ".." in Path(info.location).parts:
            raise ModelError(f"{path}: tensor {tensor.name!r} names external data outside the model's folder: "
                             f"{info.location}")
        _set_location(tensor, str(data))
        nbytes = _stored_bytes(tensor)
        if tensor.data_type not in _FLOATS or nbytes < KEPT_EXTERNAL_BYTES:
            tensor.raw_data = _read_bytes(tensor)
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    info = ExternalDataInfo(tensor)
    if info.length:
        return int(info.length)
    data = Path(info.location)
    return data.stat().st_size - int(info.offset or 0) if data.is_file() else 0


def _extent(tensor: onnx.TensorProto, nbytes: int | None = None) -> tuple[int, int]:
    """(offset, length) of an external tensor's bytes (``nbytes`` of them if given, else as its entry says);
    ModelError if its file is missing or too short."""
    info = ExternalDataInfo(tensor)
    offset = int(info.offset or 0)
    try:
        size = os.stat(info.location).st_size
    except FileNotFoundError:
        raise ModelError(f"{info.location}: external data file of tensor {tensor.name!r} is missing") from None
    length = nbytes if nbytes is not None else int(info.length) if info.length else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelError(f"{info.location}: external data of tensor {tensor.name!r} "
                         f"(bytes {offset}..{offset + length}) lies past the end of the file ({size} bytes)")
    return offset, length


def _read_bytes(tensor: onnx.TensorProto) -> bytes:
    """The bytes of an external tensor (absolute location); ModelError if its file is missing or short."""
    offset, length = _extent(tensor)
    with open(ExternalDataInfo(tensor).location, "rb") as f:
        f.seek(offset)
        return f.read(length)


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values, read from its data file if it has one (one tensor in memory, not the model)."""
    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    stored = stored_weight(tensor)
    if stored is not None:  # read straight into the array
        _extent(tensor, math.prod(stored.shape) * np.dtype(stored.dtype).itemsize)
        return stored.array()
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    inline.raw_data = _read_bytes(tensor)
    return numpy_helper.to_array(inline)


def stored_weight(tensor: onnx.TensorProto) -> StoredWeight | None:
    """Where a float tensor left in its data file (by :func:`load`) lies, for reading it where it is needed;
    None for one read in at load (or of a type numpy has no dtype for)."""
    if not uses_external_data(tensor) or tensor.data_type not in _NUMPY_FLOATS:
        return None
    info = ExternalDataInfo(tensor)
    return StoredWeight(info.location, int(info.offset or 0), _NUMPY_FLOATS[tensor.data_type], tuple(tensor.dims))


def mapped_array(weight: StoredWeight, maps: dict[str, np.memmap]) -> np.ndarray:
    """``weight``'s values as a view of a copy-on-write memory map of its file (``maps``: the files mapped so far,
    shared by their tensors): no page is read until a value is, so the model's weights cost no memory until
    a constant that stays dense in the artefact is built; ModelError if the file is too short."""
    if weight.path not in maps:
        maps[weight.path] = np.memmap(weight.path, np.uint8, mode="c")
    data = maps[weight.path]
    dtype = np.dtype(weight.dtype).newbyteorder("<")
    nbytes = math.prod(weight.shape) * dtype.itemsize
    if weight.offset + nbytes > data.size:
        raise ModelError(f"{weight.path}: external data (bytes {weight.offset}..{weight.offset + nbytes}) lies past "
                         f"the end of the file ({data.size} bytes)")
    return data[weight.offset: weight.offset + nbytes].view(dtype).reshape(weight.shape)


def data_files(model: onnx.ModelProto) -> list[str]:
    """The data files the model's external tensors live in, sorted: absolute paths for a model from :func:`load`."""
    return sorted({_location(t) for t in external_tensors(model)})


def referenced_files(path: str | Path) -> list[str]:
    """The data files (locations as written, relative to the model's folder) a model file's tensors name."""
    return data_files(onnx.load(str(path), load_external_data=False))


def session(model: onnx.ModelProto, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model``. A model with external data is written to a temporary folder
    (its tensors copied one at a time into one data file beside it) and opened from there: onnxruntime maps
    such a file instead of copying it (given the data in memory, it copies every weight), and it accepts
    only data files inside the model's folder, named relatively."""
    options = options or ort.SessionOptions()
    if not external_tensors(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="bie-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # small: the external tensors hold no bytes
        with DataFile(path.with_suffix(".data"), location="model.data") as data:
            for tensor in external_tensors(copy):
                tensor.CopyFrom(data.store_bytes(tensor, _read_bytes(tensor)))
        onnx.save_model(copy, str(path))
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class DataFile:
    """A data file being written: each tensor given to :meth:`store` is appended to it and its proto made an
    external reference to those bytes (so a model past 2 GB never holds its new weights in protobuf).
    ``location``: how the references name the file (default its absolute path, for a model kept in memory;
    a model saved beside the file names it relative to its folder)."""

    def __init__(self, path: str | Path, location: str | None = None):
        self.path = Path(path).absolute()
        self.location = location or str(self.path)
        self._file = open(self.path, "wb")

    def store(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """``array`` appended; the tensor named ``name`` that refers to it."""
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return self.store_bytes(tensor, tensor.raw_data)

    def store_bytes(self, tensor: onnx.TensorProto, payload: bytes) -> onnx.TensorProto:
        """``payload`` (the bytes of ``tensor``) appended; a copy of ``tensor`` that refers to them."""
        out = onnx.TensorProto()
        out.CopyFrom(tensor)
        del out.external_data[:]
        out.ClearField("raw_data")
        offset = self._file.tell()
        self._file.write(payload)
        self._file.flush()
        out.raw_data = b"\0"  # set_external_data wants the field present; cleared below
        onnx.external_data_helper.set_external_data(out, self.location, offset, len(payload))
        out.data_location = onnx.TensorProto.EXTERNAL
        out.ClearField("raw_data")
        return out

    def __enter__(self) -> "DataFile":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

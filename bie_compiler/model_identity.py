"""Which model an artefact was compiled from: the ONNX file's sha256 and, for a model with external data, each
data file's, so that an edited or missing data file is named before anything runs on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from .errors import ModelError
from .external_data import referenced_files
from .frontend import file_sha256


def identity(model: str | Path | onnx.ModelProto) -> dict:
    """The manifest's ``source_model``: path and sha256, and ``data_files`` (location as the model names it,
    sha256) when its tensors live in data files."""
    if isinstance(model, onnx.ModelProto):
        return {"path": None, "sha256": hashlib.sha256(model.SerializeToString()).hexdigest()}
    path = Path(model)
    entry = {"path": str(path.absolute()), "sha256": file_sha256(path)}
    locations = referenced_files(path)
    if locations:
        entry["data_files"] = [{"name": name, "sha256": file_sha256(path.parent / name)} for name in locations]
    return entry


def check_data_files(path: str | Path, recorded: dict) -> None:
    """ModelError naming the first data file of ``recorded`` that is missing or changed beside ``path``."""
    folder = Path(path).parent
    for entry in recorded.get("data_files", []):
        data = folder / entry["name"]
        if not data.is_file():
            raise ModelError(f"{data}: external data file of {path} is missing")
        if file_sha256(data) != entry["sha256"]:
            raise ModelError(f"{data}: external data file of {path} changed since the compile (sha256 differs)")

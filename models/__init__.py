"""Deterministic, seeded ONNX test models with trained-like (heavy-tailed, per-channel
scaled, partly pruned) weights, built in code so no download is needed."""

from __future__ import annotations

import os
from pathlib import Path

from . import cnn, mlp, transformer
from .common import save_model

MODELS = {"mlp": mlp.build, "transformer": transformer.build, "cnn": cnn.build}
DEFAULT_MODEL = "transformer"


def write_all(directory: str | os.PathLike) -> list[Path]:
    """Write `<name>.onnx` for every model (seed 0) into `directory`, creating it; files
    already holding identical bytes are not rewritten. Returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in MODELS.items():
        path = directory / f"{name}.onnx"
        save_model(build(), path)
        paths.append(path)
    return paths

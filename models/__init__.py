"""Deterministic, seeded ONNX test models with trained-like (heavy-tailed, per-channel
scaled, partly pruned) weights, built in code so no download is needed."""

from __future__ import annotations

import os
from pathlib import Path

from . import cnn, digits, digits_cnn, dynamo_style, embedder, encoder, int8_source, mlp, mobilenet, transformer
from .common import save_model

MODELS = {"mlp": mlp.build, "transformer": transformer.build, "cnn": cnn.build}  # small: tests compile each
SPEED_MODELS = {"encoder": encoder.build, "mobilenet": mobilenet.build}  # real-model shapes, for benchmarks
EXPORT_MODELS = {"embedder": embedder.build, "dynamo_style": dynamo_style.build, "int8_source": int8_source.build,
                 "digits": digits.build, "digits_cnn": digits_cnn.build}  # what real exports hold and the others do not, for tests
DEFAULT_MODEL = "transformer"


def write_all(directory: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Write `<name>.onnx` for the named models (default: every one in MODELS; seed 0) into
    `directory`, creating it; files already holding identical bytes are not rewritten. Returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    builders = {**MODELS, **SPEED_MODELS, **EXPORT_MODELS}
    paths = []
    for name in names or list(MODELS):
        build = builders[name]
        path = directory / f"{name}.onnx"
        save_model(build(), path)
        paths.append(path)
    return paths

"""The digits entries: classifiers of scikit-learn's 8x8 handwritten digits, trained in seconds on 1297 images;
the other 500, with their labels, are the evaluation data (exact accuracy on the held-out split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..models import digits, digits_cnn
from ..models.common import save_model

MLP_ABOUT = "scikit-learn digits MLP (64-128-64-10), trained by scikit-learn; 500 held-out labelled images"
CNN_ABOUT = "scikit-learn digits CNN (three 3x3 convs, Gemm), trained in numpy; 500 held-out labelled images"
ROWS_PER_FILE = 100
CALIBRATION_FILES, CALIBRATION_ROWS = 2, 64


def _write(folder: Path, model) -> dict:
    from ..parity import run_onnxruntime

    save_model(model, folder / "model.onnx")
    digits.write_held_out(folder / "data", ROWS_PER_FILE)
    x, labels = digits.held_out()
    train, _ = digits.images()
    picks = np.random.default_rng(0).permutation(digits.TRAIN)[:CALIBRATION_FILES * CALIBRATION_ROWS]
    for i in range(CALIBRATION_FILES):
        np.savez(folder / "calibration" / f"{i:02d}.npz",
                 pixels=train[picks[i * CALIBRATION_ROWS:(i + 1) * CALIBRATION_ROWS]])
    predicted = run_onnxruntime(model, {"pixels": x})[0].argmax(1)
    return {"source": "sklearn.datasets.load_digits", "task": "accuracy", "compile_options": [],
            "fp32": {"accuracy": float((predicted == labels).mean())}}


def build_mlp(folder: Path) -> dict:
    return _write(folder, digits.build())


def build_cnn(folder: Path) -> dict:
    return _write(folder, digits_cnn.build())

"""`digits`: a real trained classifier, small enough to train in seconds: an MLP (64 -> 128 -> 64 -> 10,
ReLU) fitted by scikit-learn to its 8x8 handwritten digits, the first 1297 images; the other 500 are
the held-out set that :func:`held_out` returns with their labels, for ``eval``'s accuracy.

`pixels` [batch, 64] (grey levels 0..16 scaled to 0..1) gives `logits` [batch, 10]. Needs scikit-learn
(the `test` extra).
"""

import warnings

import numpy as np
import onnx

from .common import GraphBuilder

TRAIN = 1297  # images used for training; the rest are held out


def images() -> tuple[np.ndarray, np.ndarray]:
    """Every image (grey levels scaled to 0..1) and its label; the first TRAIN are the training split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The images the model never saw in training, and their labels."""
    x, y = images()
    return x[TRAIN:], y[TRAIN:]


def write_held_out(folder, rows_per_file: int = 100):
    """The held-out images and their labels as .npz samples of ``rows_per_file`` rows (``pixels``, ``label``: what
    ``eval --data`` reads) in ``folder``, created; returns it."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, labels = held_out()
    for i in range(0, len(x), rows_per_file):
        np.savez(folder / f"{i // rows_per_file:02d}.npz", pixels=x[i:i + rows_per_file],
                 label=labels[i:i + rows_per_file])
    return folder


def build(seed: int = 0) -> onnx.ModelProto:
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x, y = images()
    with threadpool_limits(1), warnings.catch_warnings():  # small matrices: threads only contend (10x slower)
        warnings.simplefilter("ignore")  # the optimizer's ConvergenceWarning: accuracy is what the tests check
        mlp = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=150, random_state=seed).fit(x[:TRAIN], y[:TRAIN])
    g = GraphBuilder(seed)
    h = "pixels"
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        last = i == len(mlp.coefs_) - 1
        h = g.op("Gemm", [h, g.const(f"fc{i + 1}.weight", w), g.const(f"fc{i + 1}.bias", b)], f"fc{i + 1}",
                 "logits" if last else None)
        if not last:
            h = g.op("Relu", [h], f"fc{i + 1}.relu")
    return g.model("digits", __doc__, {"pixels": ["batch", 64]}, {"logits": ["batch", 10]})

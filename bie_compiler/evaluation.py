"""``eval``: an artefact against onnxruntime fp32 on its source model, over many real samples.

``check`` asks whether an artefact computes what its encodings define, on one random batch; ``eval``
asks what the encodings cost the model on data: per output and per row of each batch, the cosine and
the relative L2 error to fp32, and for classifier-like outputs ([rows, classes]) top-1 and top-5
agreement with fp32, the KL divergence of its softmax from fp32's, and top-1 accuracy of both when the
samples carry labels. Each figure is a mean over rows with its standard error.
"""

from __future__ import annotations

import numpy as np

from .errors import BieError

LABELS = "label"  # the key of a sample file's labels, one per row of its batch


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def is_classifier(y: np.ndarray) -> bool:
    """Whether an output looks like a classifier's logits: [rows, classes], more than one class."""
    return y.ndim == 2 and y.shape[1] > 1


def row_metrics(y: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-row figures of one output, ``y`` against the fp32 ``ref`` (both [rows, ...])."""
    a = np.asarray(y, np.float64).reshape(len(y), -1)
    b = np.asarray(ref, np.float64).reshape(len(ref), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)
    figures = {
        "cosine": np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), same.astype(float)),
        "rel_l2": np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30),
    }
    if is_classifier(y):
        figures["top1_agreement"] = (a.argmax(axis=1) == b.argmax(axis=1)).astype(float)
        if y.shape[1] >= 5:
            top5 = np.argsort(-a, axis=1)[:, :5]
            figures["top5_agreement"] = (top5 == b.argmax(axis=1)[:, None]).any(axis=1).astype(float)
        p, q = _softmax(b), _softmax(a)
        figures["kl_divergence"] = (p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300)))).sum(axis=1)
        if labels is not None:
            figures["accuracy"] = (a.argmax(axis=1) == labels).astype(float)
            figures["accuracy_fp32"] = (b.argmax(axis=1) == labels).astype(float)
    return figures


def summary(values: list[np.ndarray]) -> dict:
    """Mean and standard error of the mean over every row."""
    v = np.concatenate(values)
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "se": se, "rows": int(v.size)}


class Scorer:
    """Collects :func:`row_metrics` per output over samples, then :meth:`result` sums them up."""

    def __init__(self, names: list[str]):
        self.names = names
        self.samples = 0
        self.collected: dict[str, dict[str, list]] = {name: {} for name in names}

    def add(self, origin: str, outputs: dict, references: list[np.ndarray], labels: np.ndarray | None) -> None:
        """One sample: ``outputs`` by name, ``references`` in the order of ``names``."""
        self.samples += 1
        for name, ref in zip(self.names, references):
            y = outputs[name]
            if y.shape != ref.shape:
                raise BieError(f"{origin}, output {name!r}: shape {list(y.shape)}, onnxruntime {list(ref.shape)}")
            rows = y if y.ndim else y.reshape(1)
            if labels is not None and is_classifier(y) and (
                    labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(rows)):
                raise BieError(f"{origin}: '{LABELS}' must hold one integer per row of output {name!r} "
                               f"({len(rows)} rows), got {labels.dtype} {list(labels.shape)}")
            for metric, values in row_metrics(rows, ref if ref.ndim else ref.reshape(1), labels).items():
                self.collected[name].setdefault(metric, []).append(values)

    def result(self) -> dict:
        return {"samples": self.samples,
                "outputs": {name: {metric: summary(v) for metric, v in figures.items()}
                            for name, figures in self.collected.items()}}


def evaluate(runner, session, samples: list[tuple[str, dict, np.ndarray | None]], progress=None) -> dict:
    """``samples``: (where it came from, inputs by name, labels or None); ``session`` an onnxruntime session of
    the source. Labels are for the classifier outputs: one integer per row."""
    scorer = Scorer([o["name"] for o in runner.outputs])
    for i, (origin, inputs, labels) in enumerate(samples):
        scorer.add(origin, runner(inputs), session.run(scorer.names, inputs), labels)
        if progress:
            progress(f"sample {i + 1}/{len(samples)}")
    return scorer.result()


def load_samples(specs: list[dict], data, option: str = "--data") -> list[tuple[str, dict, np.ndarray | None]]:
    """(file, inputs by name, labels or None) of every sample file of ``data`` (a .npz or a folder of them)."""
    from .calibration import sample_files
    from .parity import inputs_from, read_npz

    samples = []
    for path in sample_files(data, option):
        given = read_npz(path)  # each file read once: its inputs and its labels
        samples.append((str(path), inputs_from(specs, given, path), given.get(LABELS)))
    return samples


def table(result: dict) -> str:
    lines = [f"{result['samples']} sample file(s); mean +- standard error over rows, against onnxruntime fp32"]
    for name, figures in result["outputs"].items():
        rows = next(iter(figures.values()))["rows"]
        lines.append(f"{name} ({rows} rows)")
        for metric, s in figures.items():
            lines.append(f"  {metric:<16} {s['mean']:.6f} +- {s['se']:.6f}")
    return "\n".join(lines)

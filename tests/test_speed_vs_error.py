"""benchmarks/speed_vs_error.py: the batches it times and the table and figure it writes."""

import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed_vs_error  # noqa: E402


def test_batch_of_repeats_free_batches_and_refuses_a_fixed_other_size():
    sample = {"x": np.arange(6, dtype=np.float32).reshape(3, 2), "fixed": np.zeros((1, 4))}
    specs = [{"name": "x", "shape": ["batch", 2]}, {"name": "fixed", "shape": [1, 4]}]
    one = speed_vs_error.batch_of(specs, sample, 1)
    assert one["x"].tolist() == [[0, 1]] and one["fixed"].shape == (1, 4)
    assert speed_vs_error.batch_of(specs[:1], sample, 8)["x"][:, 0].tolist() == [0, 2, 4, 0, 2, 4, 0, 2]
    assert speed_vs_error.batch_of(specs, sample, 8) is None


def test_write_puts_every_measured_point_in_the_table_and_a_figure(tmp_path):
    points = [{"label": "onnxruntime fp32", "kind": "reference", "bits_per_weight": 32.0, "rel_l2": 0.0, "cosine": 1.0,
               "speed": {1: {"ratio": 1.0}, 8: {"ratio": 1.0}}},
              {"label": "bie-compiler int8", "kind": "artefact", "bits_per_weight": 8.1, "rel_l2": 0.02, "cosine": 0.9998,
               "task_metric": "accuracy", "task": 0.97,
               "speed": {1: {"ratio": 0.8}, 8: {"failed": "the model fixes its batch (not 8)"}}},
              {"label": "onnxruntime MatMulNBits 4-bit block 32", "kind": "reference", "skipped": "no onnx-ir"}]
    speed_vs_error.write(points, [1, 8], tmp_path, "m")
    with open(tmp_path / "speed_vs_error.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", "bits_per_weight", "rel_l2", "cosine", "task_metric", "task", "ratio_batch1",
                       "ratio_batch8"]
    assert rows[2] == ["bie-compiler int8", "8.1", "0.02", "0.9998", "accuracy", "0.97", "0.8", ""] and len(rows) == 3
    assert json.loads((tmp_path / "speed_vs_error.json").read_text())["points"][2]["skipped"] == "no onnx-ir"
    assert (tmp_path / "speed_vs_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

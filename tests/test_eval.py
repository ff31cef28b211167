"""``eval``: an artefact against onnxruntime fp32 over real samples, with task metrics."""

import json

import numpy as np
import pytest

from bie_compiler.evaluation import row_metrics, summary
from bie_compiler.models import digits, write_all
from test_cli import cli


def test_row_metrics_of_known_logits():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = np.array([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0]])  # row 0 exact, row 1 argmax moved
    m = row_metrics(y, ref, labels=np.array([0, 0]))
    np.testing.assert_allclose(m["cosine"], [1.0, 1.0 / 10.0])
    np.testing.assert_allclose(m["rel_l2"], [0.0, np.sqrt(18.0 / 10.0)])
    assert list(m["top1_agreement"]) == [1.0, 0.0] and "top5_agreement" not in m  # 3 classes
    assert m["kl_divergence"][0] == 0.0 and m["kl_divergence"][1] > 0
    assert list(m["accuracy"]) == [1.0, 1.0] and list(m["accuracy_fp32"]) == [1.0, 0.0]
    s = summary([np.array([1.0, 0.0]), np.array([1.0, 0.0])])
    assert s == {"mean": 0.5, "se": pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2), "rows": 4}


@pytest.mark.slow
def test_digits_accuracy_survives_the_codecs(tmp_path):
    (model,) = write_all(tmp_path, ["digits"])
    data = digits.write_held_out(tmp_path / "held_out", 100)
    accuracy = {}
    for codec, options in [("bie-bitplane", ["--bits", "4"]), ("bbs", []), ("bie-binary", [])]:
        out = tmp_path / codec
        assert cli("compile", model, "-q", "--codec", codec, *options, "-o", out).returncode == 0
        result = cli("eval", out, "--data", data, "--json")
        assert result.returncode == 0, result.stderr
        logits = json.loads(result.stdout)["outputs"]["logits"]
        assert logits["accuracy"]["rows"] == len(digits.held_out()[1]) == 500
        assert logits["accuracy_fp32"]["mean"] > 0.9  # a real classifier: onnxruntime on the fp32 model
        accuracy[codec] = logits["accuracy"]["mean"] - logits["accuracy_fp32"]["mean"]
        assert logits["top1_agreement"]["mean"] > 0.9
    assert abs(accuracy["bie-bitplane"]) <= 0.02 and abs(accuracy["bbs"]) <= 0.02
    assert accuracy["bie-binary"] < accuracy["bbs"]  # one bit per weight costs accuracy; the table shows how much

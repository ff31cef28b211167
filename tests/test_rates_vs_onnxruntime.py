"""benchmarks/rates_vs_onnxruntime.py's verdict per rate: the best point of each side at or under the rate, compared
on the task figure and the output error."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rates_vs_onnxruntime as rates  # noqa: E402


def _point(bits, task, rel_l2, se=0.0, label="p"):
    return {"label": label, "mode": "x", "bits_per_weight": bits, "task_metric": "accuracy", "task": task,
            "rel_l2": rel_l2, "task_se": se}


def test_each_rate_sets_the_best_at_or_under_it_against_the_other_sides():
    ours = [_point(2.99, 0.93, 0.06, label="ours 3"), _point(3.9, 0.95, 0.02, label="ours 4"),
            {"label": "ours 2", "rate": 2, "skipped": "below the smallest coding"}]
    theirs = [_point(3.0, 0.89, 0.30, 0.01, "ort 2-bit"), _point(5.0, 0.96, 0.06, 0.005, "ort 4-bit"),
              _point(5.1, 0.95, 0.05, 0.01, "ort 4-bit asym")]
    got = {v["rate"]: v for v in rates.verdicts(ours, theirs, [2, 3, 4, 5, 8])}
    assert got[2]["verdict"] == "neither has a setting"
    assert (got[3]["ours"]["label"], got[3]["onnxruntime"]["label"], got[3]["verdict"]) == ("ours 3", "ort 2-bit", "met")
    assert got[4]["verdict"] == "met"  # onnxruntime's best at <= 4 is still its 2-bit mode
    # at 5: its 4-bit mode's accuracy 0.96 is above ours (0.95) by more than its standard error, so not met, though
    # ours has the smaller output error
    assert got[5]["onnxruntime"]["label"] == "ort 4-bit" and got[5]["verdict"] == "NOT met"
    assert got[8]["onnxruntime"]["label"] == "ort 4-bit asym"  # the smallest output error wins, not the task figure
    assert got[8]["verdict"] == "met"  # ours 4: the same accuracy, less than half the error


def test_a_lower_task_figure_within_the_references_standard_error_is_met_on_the_output_error_only():
    theirs = [_point(5.0, 0.944, 0.048, 0.01)]
    assert rates.verdicts([_point(4.8, 0.940, 0.024)], theirs, [5])[0]["verdict"] == "met on rel. L2"
    assert rates.verdicts([_point(4.8, 0.940, 0.050)], theirs, [5])[0]["verdict"] == "NOT met"  # larger error
    assert rates.verdicts([_point(4.8, 0.940, 0.01)], [], [5])[0]["verdict"] == "met (no onnxruntime mode)"
    assert rates.verdicts([], theirs, [5])[0]["verdict"] == "NOT met"

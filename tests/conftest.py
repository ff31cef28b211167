import pytest

from bie_compiler.models import write_all


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The bundled models written once per session: {name: path}."""
    directory = tmp_path_factory.mktemp("models")
    return {p.stem: p for p in write_all(directory)}


@pytest.fixture(scope="session")
def target():
    """The host CPU target the kernels are built for (test_cuda.py overrides it with its GPU target)."""
    from bie_compiler.codegen.target import make_target

    return make_target()


@pytest.fixture(scope="session")
def check_rule():
    """``check(rule, func, sizes)``: ``rule`` schedules ``func`` (a PrimFunc), and the scheduled function computes
    what the unscheduled one does, for each dict in ``sizes`` binding its symbolic dims (by name) to values."""
    import numpy as np
    import tvm

    from bie_compiler.codegen.target import make_target

    target = make_target()

    def run(func, shapes, seed):
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
        rng = np.random.default_rng(seed)
        args = [tvm.runtime.tensor(rng.standard_normal(s).astype("float32")) for s in shapes[:-1]]
        out = tvm.runtime.tensor(np.full(shapes[-1], np.nan, "float32"))  # a slot left unwritten shows
        lib.mod["main"](*args, out)
        return out.numpy()

    def check(rule, func, sizes):
        sch = rule.apply(func, target, False)
        assert sch is not None, f"{type(rule).__name__} did not take the function"
        scheduled = sch.mod["main"]
        for i, size in enumerate(sizes):
            shapes = [[int(d) if isinstance(d, tvm.tirx.IntImm) else size[d.name] for d in p.shape] for p in func.params]
            want, got = run(func, shapes, i), run(scheduled, shapes, i)
            assert not np.isnan(got).any(), size
            assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30), size
        return scheduled

    return check

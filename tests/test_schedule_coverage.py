"""After the CPU build's rules, no PrimFunc of the transformer-like models is left to the generic fallback."""

import pytest
import tvm
from tvm.s_tir import dlight as dl

from bie_compiler.codegen import cpu
from bie_compiler.codegen.target import make_target
from bie_compiler.frontend import import_model
from bie_compiler.models import write_all
from bie_compiler.passes import EncodingPolicy, encoding_passes, plan_encoding


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("encoder"), ["encoder"])[0]


def unscheduled_after_rules(path) -> list[str]:
    target = make_target()
    imported = import_model(path)
    plan = plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("bie-bitplane", skip=("*",)), target)
    mod = encoding_passes(plan)(imported.mod)
    with target:
        mod = dl.ApplyDefaultSchedule(*cpu.RULES)(cpu.fusion()(mod))
    return [gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and not (f.attrs is not None and f.attrs.get(cpu.SCHEDULED, False))]


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_bundled_models_are_scheduled_by_the_rules(model_dir, name):
    assert unscheduled_after_rules(model_dir[name]) == []


def test_encoder_is_scheduled_by_the_rules(encoder):
    assert unscheduled_after_rules(encoder) == []

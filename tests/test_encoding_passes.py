"""The encoding is planned, then rewritten by real TVM passes: composable, seen by PassContext instruments."""

import numpy as np
import tvm
from tvm import relax
from tvm.ir.instrument import PassTimingInstrument

from bie_compiler.codegen import LAYER_ATTR, ROW_DISPATCH_ATTR
from bie_compiler.codegen.target import make_target
from bie_compiler.frontend import import_model
from bie_compiler.passes import EncodeWeights, EncodingPolicy, encoding_passes, plan_encoding
from bie_compiler.passes.weight_uses import collect_weight_uses


def test_the_plan_decides_and_the_pass_rewrites_it(model_dir):
    imported = import_model(model_dir["mlp"])
    plan = plan_encoding(imported.mod, imported.constant_names,
                         EncodingPolicy("bie-bitplane", {"bits": 3}, skip=("fc3.*",)), make_target())
    assert [r.name for r in plan.records] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert set(plan.encoded) == {"fc1.weight", "fc2.weight"} and plan.dense_kernels == {"fc3.weight"}
    assert plan.uses["fc2.weight"].transposed  # Gemm transB=1: matmul(x, permute_dims(W)) matched
    encode = EncodeWeights(plan)
    assert isinstance(encode, tvm.transform.Pass)
    timing = PassTimingInstrument()
    with tvm.transform.PassContext(instruments=[timing]):
        mod = encoding_passes(plan)(imported.mod)
        profile = timing.render()
    assert "EncodeWeights" in profile and "DeadCodeElimination" in profile
    assert collect_weight_uses(mod, plan.names)[0] == []  # no matmul reads a weight constant any more
    layers = {str(f.attrs[LAYER_ATTR]) for _, f in mod.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and LAYER_ATTR in f.attrs}
    assert layers == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_every_constant_is_an_argument_of_main(model_dir):
    """Kernels and row-dispatch functions take their constants as parameters: none is bound inside them."""
    imported = import_model(model_dir["transformer"])
    plan = plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("bie-bitplane"), make_target())
    mod = encoding_passes(plan)(imported.mod)
    assert all(r.codec == "bie-bitplane" for r in plan.records)
    dispatchers = [f for gv, f in mod.functions_items() if isinstance(f, relax.Function) and gv.name_hint != "main"]
    assert len(dispatchers) == len(plan.records)
    # marked for the build (codegen.unit_dims); the VM checks only x on each call, not the constants (main's
    # weights, which main does not check either)
    assert all(f.attrs[ROW_DISPATCH_ATTR] and int(f.attrs["num_input"]) == 1 for f in dispatchers)
    inside = []
    for func in dispatchers:
        relax.analysis.post_order_visit(func, lambda e: inside.append(e) if isinstance(e, tvm.ir.GenericConst)
                                        and len(e.value.shape) > 0 else None)
    assert inside == []


def test_a_weight_used_in_two_layouts_stays_dense(tmp_path):
    """One encoding has one layout: a weight read as [K, N] by a MatMul and as [N, K] by a Gemm is left dense."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bie_compiler import compile_model, load
    from bie_compiler.parity import check_artefact, make_inputs

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gemm", ["h", "w"], ["y"], transB=1)],
        "two_layouts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    out = compile_model(tmp_path / "two.onnx", tmp_path / "art", "bie-bitplane", progress=None)
    runner = load(out)
    [layer] = runner.manifest["layers"]
    assert layer["codec"] == "dense" and "two layouts" in layer["fallback_reason"]
    assert check_artefact(runner, inputs=make_inputs(runner.inputs))["passed"]

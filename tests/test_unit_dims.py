"""``main`` specialized for unit input dimensions (codegen/unit_dims.py): the copy calls each matmul's kernel
directly with static shapes, computes what the symbolic ``main`` computes, and runs only when every dimension is 1."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax, te, tirx

import bie_compiler
from bie_compiler.codegen.kernel_registry import ROW_DISPATCH_ATTR
from bie_compiler.codegen.unit_dims import ANY_DIMS, UNIT_DIMS, specialize_unit_dims

K, N = 64, 48


def _two_layers(batch, seq) -> onnx.ModelProto:
    """x [batch, seq, K] -> relu(x @ W1 + b) @ W2: two weights (min-weights 1024 encodes both)."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor("w1", TensorProto.FLOAT, [K, N], rng.standard_normal((K, N)).astype(np.float32).ravel()),
               helper.make_tensor("b1", TensorProto.FLOAT, [N], rng.standard_normal(N).astype(np.float32)),
               helper.make_tensor("w2", TensorProto.FLOAT, [N, K], rng.standard_normal((N, K)).astype(np.float32).ravel())]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, K])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def symbolic(tmp_path_factory):
    """(model path, artefacts dense and bie-bitplane) of the model with symbolic batch and sequence."""
    folder = tmp_path_factory.mktemp("unit_dims")
    path = folder / "m.onnx"
    onnx.save(_two_layers("batch", "seq"), path)
    dense = bie_compiler.compile_model(path, folder / "dense", skip=("*",), progress=None)
    # the exact look-up tables: the unit copy's GEMV and the general copy's panel GEMM then agree to fp32 rounding
    bitplane = bie_compiler.compile_model(path, folder / "bitplane", "bie-bitplane", {"bits": 4, "lut_tables": "fp32"},
                                          progress=None)
    return path, {"dense": dense, "bie-bitplane": bitplane}


def _vm_text(artefact) -> str:
    return relax.VMExecutable(tvm.runtime.load_module(str(artefact / "model.so"))).as_text()


def _function(text: str, name: str) -> str:
    return text.split(f"@{name}:\n", 1)[1].split("\n@", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["dense", "bie-bitplane"])
def test_unit_copy_calls_kernels_directly_with_static_shapes(symbolic, codec):
    text = _vm_text(symbolic[1][codec])
    unit, general = _function(text, UNIT_DIMS), _function(text, ANY_DIMS)
    # neither chooses a matmul's kernel at run time (no row dispatch called): the unit copy calls the one-row
    # kernels, the general one the many-row kernels (the second matmul's unfused)
    assert "_matmul " not in general and "_matmul " not in unit
    assert ("dense_gemv" if codec == "dense" else "bitplane_lut") in unit
    assert ("dense_gemm " if codec == "dense" else "bitplane_gemm ") in general
    assert "make_shape" in general and "make_shape" not in unit  # shapes are constants


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["dense", "bie-bitplane"])
def test_unit_copy_computes_what_the_general_one_does(symbolic, codec):
    runner = bie_compiler.load(symbolic[1][codec])
    x = np.random.default_rng(1).standard_normal((1, 1, K)).astype(np.float32)
    args = [tvm.runtime.tensor(x), *runner.weights]
    unit, general = runner.vm[UNIT_DIMS](*args).numpy(), runner.vm[ANY_DIMS](*args).numpy()
    # the general copy runs the many-row kernels on one row: the first matmul's GEMM with its bias and ReLU
    # (gemm_epilogues), the second's GEMM; their sums in another order than the one-row kernels'
    np.testing.assert_allclose(unit, general, rtol=0, atol=1e-6 * np.abs(general).max())
    np.testing.assert_array_equal(runner({"x": x})["y"], unit)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, K), (2, 1, K), (1, 3, K), (4, 5, K)])
def test_main_matches_onnxruntime_at_unit_and_other_dims(symbolic, shape):
    path, artefacts = symbolic
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = bie_compiler.load(artefacts["dense"])({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
def test_static_model_gets_its_dispatch_resolved_without_copies(symbolic, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_two_layers(1, 1), path)
    artefact = bie_compiler.compile_model(path, tmp_path / "a", "bie-bitplane", {"bits": 4, "lut_tables": "fp32"},
                                          progress=None)  # the symbolic artefact's tables
    text = _vm_text(artefact)
    assert f"@{UNIT_DIMS}:" not in text and f"@{ANY_DIMS}:" not in text
    assert "_matmul " not in _function(text, "main") and "bitplane_lut" in _function(text, "main")
    x = np.random.default_rng(2).standard_normal((1, 1, K)).astype(np.float32)
    np.testing.assert_array_equal(bie_compiler.load(artefact)({"x": x})["y"],
                                  bie_compiler.load(symbolic[1]["bie-bitplane"])({"x": x})["y"])


@pytest.mark.slow
def test_a_model_whose_unit_copy_fails_to_build_compiles_without_it(symbolic, tmp_path, monkeypatch):
    from bie_compiler.codegen import cpu
    from bie_compiler.errors import BieWarning

    def failing(mod):
        raise tvm.error.InternalError("cannot bind seq to 1")

    monkeypatch.setattr(cpu, "specialize_unit_dims", failing)
    with pytest.warns(BieWarning, match="not specialized for unit dimensions .*cannot bind seq to 1"):
        artefact = bie_compiler.compile_model(symbolic[0], tmp_path / "a", skip=("*",), progress=None)
    assert f"@{UNIT_DIMS}:" not in _vm_text(artefact)
    x = np.random.default_rng(3).standard_normal((1, 1, K)).astype(np.float32)
    np.testing.assert_array_equal(bie_compiler.load(artefact)({"x": x})["y"],
                                  bie_compiler.load(symbolic[1]["dense"])({"x": x})["y"])


def test_a_matmul_above_one_row_calls_its_many_row_kernel(tmp_path):
    """A MatMul without an epilogue (one with an epilogue runs its fused GEMM, gemm_epilogues): the general copy
    calls its panel GEMM, no row dispatch (a VM frame, its checks and branch) between."""
    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])], [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "matmul.onnx")
    artefact = bie_compiler.compile_model(tmp_path / "matmul.onnx", tmp_path / "a", "bie-bitplane",
                                          {"bits": 4, "lut_tables": "fp32"}, progress=None)
    text = _vm_text(artefact)
    assert "_matmul" not in text  # no dispatch function left
    assert "bitplane_gemm " in _function(text, ANY_DIMS) and "bitplane_lut" in _function(text, UNIT_DIMS)
    runner = bie_compiler.load(artefact)
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    rows = np.concatenate([runner({"x": x[i:i + 1]})["y"] for i in range(3)])  # the one-row kernel, a row at a time
    np.testing.assert_allclose(runner({"x": x})["y"], rows, rtol=0, atol=1e-5 * np.abs(rows).max())


def _dispatching_module(rows, marked: bool = True) -> tvm.IRModule:
    """main(x [rows, 4], w) -> f(x, w), f choosing on its row count between two PrimFuncs (a row dispatch, marked
    as ``passes.encode_weights`` marks its own if ``marked``)."""
    m = tirx.Var("m", "int64")

    def kernel(scale):
        a, b = te.placeholder((m, 4), name="a"), te.placeholder((4,), name="b")
        return te.create_prim_func([a, b, te.compute((m, 4), lambda i, j: a[i, j] * b[j] * scale)])

    bb = relax.BlockBuilder()
    one, many = bb.add_func(kernel(1.0), "one_row"), bb.add_func(kernel(2.0), "many_rows")
    xf, wf = relax.Var("x", relax.TensorType([m, 4], "float32")), relax.Var("w", relax.TensorType([4], "float32"))

    def branch(kernel_gv):
        y = relax.Var("y", relax.TensorType([m, 4], "float32"))
        call = relax.call_tir(kernel_gv, [xf, wf], out_ty=relax.TensorType([m, 4], "float32"))
        return relax.SeqExpr([relax.BindingBlock([relax.VarBinding(y, call)])], y)

    r = relax.Var("r", relax.TensorType([m, 4], "float32"))
    body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(r, relax.If(m <= 1, branch(one), branch(many)))])], r)
    func = relax.Function([xf, wf], body, relax.TensorType([m, 4], "float32"))
    dispatch = bb.add_func(bb.normalize(func.with_attr(ROW_DISPATCH_ATTR, True) if marked else func), "dispatch")
    x, w = relax.Var("x", relax.TensorType([rows, 4], "float32")), relax.Var("w", relax.TensorType([4], "float32"))
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit_output(relax.Call(dispatch, [x, w]))
        bb.emit_func_output(y)
    return bb.get()


def _callees(func) -> set:
    found = set()
    relax.analysis.post_order_visit(func.body, lambda e: found.add(
        e.args[0].name_hint if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir"
        else e.op.name_hint if isinstance(e, relax.Call) and isinstance(e.op, relax.GlobalVar) else None))
    return found - {None}


def test_pass_copies_main_for_unit_dims_and_resolves_static_dispatches():
    mod = specialize_unit_dims(_dispatching_module(tirx.Var("batch", "int64")))
    assert _callees(mod[UNIT_DIMS]) == {"one_row"}  # batch 1: the one-row branch, called directly
    assert _callees(mod[ANY_DIMS]) == {"many_rows"}  # a row dispatch above one token: its many-row branch
    assert _callees(mod["main"]) == {UNIT_DIMS, ANY_DIMS}
    relax.analysis.well_formed(mod)  # raises if not
    unmarked = specialize_unit_dims(_dispatching_module(tirx.Var("batch", "int64"), marked=False))
    assert _callees(unmarked[ANY_DIMS]) == {"dispatch"}  # not a row dispatch: it still chooses at run time
    static = specialize_unit_dims(_dispatching_module(3))
    assert _callees(static["main"]) == {"many_rows"}  # 3 rows, known: the other branch, no copies
    assert UNIT_DIMS not in [gv.name_hint for gv in static.get_global_vars()]

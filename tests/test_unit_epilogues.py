"""A kernel and the elementwise kernel reading its output as one call at one token (codegen/unit_epilogues.py): the
fused PrimFunc computes what the two calls did, and a model's unit copy calls it while its other copy is unchanged."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper
from tvm import relax, te, tirx

import bie_compiler
from bie_compiler.codegen import cpu, unit_epilogues
from bie_compiler.codegen.kernel_registry import finish
from bie_compiler.codegen.kernels import bitplane_lut, dense
from bie_compiler.codegen.schedules import matmul
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.unit_dims import ANY_DIMS, UNIT_DIMS
from bie_compiler.codegen.unit_epilogues import FUSED_ATTR, fused_kernel

from unit_copies import assert_unit_copy_exact, compile_as

K, N = 64, 48


def _bias_gelu_residual(n: int) -> tirx.PrimFunc:
    """``y [1, 1, n] = gelu(h + b) + r`` (tanh form), h its first input: an epilogue of three inputs."""
    seq = tirx.Var("seq", "int64")
    h, b, r = te.placeholder((1, seq, n), name="h"), te.placeholder((n,), name="b"), te.placeholder((1, seq, n), name="r")

    def gelu(v):
        return 0.5 * v * (1.0 + te.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))

    y = te.compute((1, seq, n), lambda i, s, j: gelu(h[i, s, j] + b[j]) + r[i, s, j], name="y")
    return te.create_prim_func([h, b, r, y])


def _run(func: tirx.PrimFunc, *arrays) -> None:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target(),
                      tir_pipeline=cpu.TIR_PIPELINE)
    lib["main"](*arrays)


@pytest.mark.parametrize("kernel_name", ["dense", "bitplane_lut"])
def test_fused_kernel_computes_the_kernel_then_the_epilogue(kernel_name):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((N, K)).astype(np.float32)
    if kernel_name == "dense":
        kernel, constants = finish(dense.gemm(N, K, rows=1), "dense_gemv"), [dense.pack(weight)]
    else:
        codes = rng.integers(-7, 8, (N, K))
        kernel = finish(bitplane_lut.gemv(N, K, 3, 0, K, 1), "lut")
        constants = [bitplane_lut.twos_complement_planes(codes, 3), bitplane_lut.lanes_of_scales(
            rng.uniform(0.5, 1.5, (N, 1)).astype(np.float32))]
    x, bias, residual = (rng.standard_normal(shape).astype(np.float32) for shape in ((1, K), (N,), (1, 1, N)))
    tensors = [tvm.runtime.tensor(a) for a in (x, *constants)]
    product = tvm.runtime.tensor(np.zeros((1, N), np.float32))
    _run(kernel, *tensors, product)
    want = tvm.runtime.tensor(np.zeros((1, 1, N), np.float32))
    epilogue = _bias_gelu_residual(N)
    _run(epilogue, tvm.runtime.tensor(product.numpy().reshape(1, 1, N)), tvm.runtime.tensor(bias),
         tvm.runtime.tensor(residual), want)

    shapes = [a.shape for a in (x, *constants)] + [(1, N)]
    fused = fused_kernel(kernel, epilogue, 0, shapes, [(1, 1, N), (N,), (1, 1, N), (1, 1, N)])
    assert len(fused.params) == len(constants) + 4  # x, the constants, bias, residual, out
    got = tvm.runtime.tensor(np.full((1, 1, N), np.nan, np.float32))
    _run(fused, *tensors, tvm.runtime.tensor(bias), tvm.runtime.tensor(residual), got)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert np.abs(want.numpy()).max() > 0.1  # not a trivial output


def test_an_epilogue_taking_a_size_as_a_scalar_gets_it_bound():
    # the softmax kernel takes its batch as a scalar argument (its rows are batch * 12 * seq): the fused kernel
    # binds the call's value and no longer takes it
    rng = np.random.default_rng(3)
    kernel = finish(dense.gemm(N, K, rows=1), "dense_gemv")
    weight, x = rng.standard_normal((N, K)).astype(np.float32), rng.standard_normal((1, K)).astype(np.float32)
    rows = tirx.Var("rows", "int64")
    h = te.placeholder((rows, N), name="h")
    y = te.compute((rows, N), lambda i, j: h[i, j] * rows.astype("float32") + 1.0, name="y")
    epilogue = te.create_prim_func([h, rows, y])
    assert len(epilogue.params) == 3
    fused = fused_kernel(kernel, epilogue, 0, [(1, K), dense.pack(weight).shape, (1, N)], [(1, N), 1, (1, N)])
    assert len(fused.params) == 3  # x, the packed weight, out
    got = tvm.runtime.tensor(np.full((1, N), np.nan, np.float32))
    _run(fused, tvm.runtime.tensor(x), tvm.runtime.tensor(dense.pack(weight)), got)
    np.testing.assert_allclose(got.numpy(), x @ weight.T + 1.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flat", [False, True])
def test_a_transpose_s_product_keeps_its_own_storage_in_the_next_round(flat):
    # a kernel, a transpose reading its product, then an epilogue reading the transpose's output (a product too,
    # once it joins): TVM's storage planner put a product read through a view in place of the one it is computed
    # from (unit_epilogues.fused_kernel), the transpose then overwriting what it still read. A flat kernel output
    # is written through a view of the (rows, cols) product; products of one shape on both sides need none
    rows, cols = 8, 4
    written = (rows * cols,) if flat else (rows, cols)
    x = te.placeholder(written, name="x")
    kernel = te.create_prim_func([x, te.compute(written, lambda *i: x(*i) + 1.0, name="a")])
    h = te.placeholder((rows, cols), name="h")
    transpose = te.create_prim_func([h, te.compute((cols, rows), lambda i, j: h[j, i], name="t")])
    u = te.placeholder((cols, rows), name="u")
    double = te.create_prim_func([u, te.compute((cols, rows), lambda i, j: u[i, j] * 2.0, name="z")])
    first = fused_kernel(kernel, transpose, 0, [written, written], [(rows, cols), (cols, rows)])
    second = fused_kernel(first, double, 0, [written, (cols, rows)], [(cols, rows), (cols, rows)])
    assert _views(first) == _views(second) == (1 if flat else 0)
    values = np.random.default_rng(6).standard_normal(written).astype(np.float32)
    got = tvm.runtime.tensor(np.full((cols, rows), np.nan, np.float32))
    _run(second, tvm.runtime.tensor(values), got)
    np.testing.assert_array_equal(got.numpy(), (values.reshape(rows, cols) + 1.0).T * 2.0)


def _views(func: tirx.PrimFunc) -> int:
    found = []
    tvm_ffi.structural_map(func.body, (tirx.stmt.DeclBuffer, lambda node: found.append(node) or node), order="post")
    return len(found)


def test_a_matmul_scheduled_for_symbolic_rows_lowers_bound_to_one_row():
    # the attention's product with V at one token: rows and k both the sequence length, its register tile's rows
    # predicated on it; bound to 1, TVM's buffer compaction left the tile's loop variables in its accumulator's size
    # unless the bound body is simplified first (unit_epilogues.with_static_shapes), and the lowering refused it
    seq, batch, heads, width = tirx.Var("seq", "int64"), tirx.Var("batch", "int64"), _int64(12), _int64(32)
    a, b = te.placeholder((batch, heads, seq, seq), name="a"), te.placeholder((batch, heads, seq, width), name="b")
    k = te.reduce_axis((_int64(0), seq), name="k")
    product = te.compute((batch, heads, seq, width), lambda n, h, i, j: te.sum(a[n, h, i, k] * b[n, h, k, j], axis=k),
                         name="product")
    target = make_target()
    scheduled = matmul.Matmul().apply(te.create_prim_func([a, b, product]), target, False).mod["main"]
    bound = unit_epilogues.with_static_shapes(scheduled, [(1, 12, 1, 1), (1, 12, 1, 32), (1, 12, 1, 32)])
    with target:
        assert unit_epilogues.lowers(bound)
    rng = np.random.default_rng(7)
    probs, values = (rng.standard_normal(shape).astype(np.float32) for shape in ((1, 12, 1, 1), (1, 12, 1, 32)))
    got = tvm.runtime.tensor(np.full((1, 12, 1, 32), np.nan, np.float32))
    _run(bound, tvm.runtime.tensor(probs), tvm.runtime.tensor(values), got)
    np.testing.assert_array_equal(got.numpy(), probs @ values)


def _int64(value: int) -> tirx.IntImm:
    return tirx.IntImm("int64", value)


def _block(batch, seq) -> onnx.ModelProto:
    """x [batch, seq, K] -> y = gelu(x @ W1 + b1) @ W2 + b2 + x (Erf form): bias, GELU and residual epilogues."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor("w1", TensorProto.FLOAT, [K, N], rng.standard_normal((K, N)).astype(np.float32).ravel()),
               helper.make_tensor("b1", TensorProto.FLOAT, [N], rng.standard_normal(N).astype(np.float32)),
               helper.make_tensor("w2", TensorProto.FLOAT, [N, K], rng.standard_normal((N, K)).astype(np.float32).ravel()),
               helper.make_tensor("b2", TensorProto.FLOAT, [K], rng.standard_normal(K).astype(np.float32)),
               helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
               helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
               helper.make_tensor("root2", TensorProto.FLOAT, [], [1.4142135])]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Div", ["hb", "root2"], ["hd"]), helper.make_node("Erf", ["hd"], ["he"]),
             helper.make_node("Add", ["he", "one"], ["h1"]), helper.make_node("Mul", ["hb", "h1"], ["hm"]),
             helper.make_node("Mul", ["hm", "half"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["ob"]), helper.make_node("Add", ["ob", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, K])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unit_epilogues")
    path = folder / "m.onnx"
    onnx.save(_block("batch", "seq"), path)
    artefacts = {"dense": bie_compiler.compile_model(path, folder / "dense", skip=("*",), progress=None),
                 # the exact look-up tables: the one-row GEMV then equals the general copy's GEMM to fp32 rounding
                 "bie-bitplane": bie_compiler.compile_model(path, folder / "bp", "bie-bitplane",
                                                            {"bits": 4, "lut_tables": "fp32"}, progress=None)}
    return path, artefacts


def _function(artefact, name: str) -> str:
    text = relax.VMExecutable(tvm.runtime.load_module(str(artefact / "model.so"))).as_text()
    return text.split(f"@{name}:\n", 1)[1].split("\n@", 1)[0]


def _kernel_calls(vm_text: str) -> list:
    return [line.split()[1] for line in vm_text.splitlines() if line.strip().startswith("call")
            and not line.split()[1].startswith("vm.builtin")]


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["dense", "bie-bitplane"])
def test_unit_copy_calls_each_matmul_with_its_epilogue(block, codec):
    unit = _kernel_calls(_function(block[1][codec], UNIT_DIMS))
    assert len(unit) == 2, unit  # the two matmuls, bias + GELU and bias + residual in their calls
    general = [call for call in _kernel_calls(_function(block[1][codec], ANY_DIMS)) if not call.startswith("shape_func")]
    assert len(general) == 2, general  # the other copy's GEMMs take theirs in too (see test_gemm_epilogues)


@pytest.mark.slow
def test_a_product_over_the_stack_limit_keeps_its_own_call(tmp_path, monkeypatch):
    # the second matmul's product [1, 1, K] is K * 4 bytes: one byte over the limit leaves it and its epilogue
    # apart, while the first's (N * 4 bytes, fewer) still fuses
    assert N < K
    monkeypatch.setattr(unit_epilogues, "STACK_BYTES", K * 4 - 1)
    path = tmp_path / "m.onnx"
    onnx.save(_block("batch", "seq"), path)
    artefact = bie_compiler.compile_model(path, tmp_path / "dense", skip=("*",), progress=None)
    assert len(_kernel_calls(_function(artefact, UNIT_DIMS))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["dense", "bie-bitplane"])
@pytest.mark.parametrize("shape", [(1, 1, K), (8, 1, K), (1, 8, K)])
def test_fused_unit_copy_matches_the_general_copy_and_onnxruntime(block, codec, shape):
    path, artefacts = block
    runner = bie_compiler.load(artefacts[codec])
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    got = runner({"x": x})["y"]
    args = [tvm.runtime.tensor(x), *runner.weights]
    np.testing.assert_allclose(got, runner.vm[ANY_DIMS](*args).numpy(), rtol=1e-6, atol=1e-6 * np.abs(got).max())
    if codec == "dense":
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _residual_norm_block() -> onnx.ModelProto:
    """x [batch, seq, K] -> y = layer_norm(x @ W + b + x): the bias and residual one epilogue (TVM fuses the adds),
    the layer norm a second one, which reads only the first's output."""
    rng = np.random.default_rng(1)
    weights = [helper.make_tensor("w", TensorProto.FLOAT, [K, K], rng.standard_normal((K, K)).astype(np.float32).ravel()),
               helper.make_tensor("b", TensorProto.FLOAT, [K], rng.standard_normal(K).astype(np.float32)),
               helper.make_tensor("gamma", TensorProto.FLOAT, [K], rng.uniform(0.5, 1.5, K).astype(np.float32)),
               helper.make_tensor("beta", TensorProto.FLOAT, [K], rng.standard_normal(K).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Add", ["hb", "x"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", K])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["dense", "bie-bitplane"])
def test_a_chain_of_epilogues_joins_the_kernel_round_after_round(tmp_path, codec):
    path = tmp_path / "m.onnx"
    onnx.save(_residual_norm_block(), path)
    artefact = compile_as(path, tmp_path / "out", codec)
    general = [call for call in _kernel_calls(_function(artefact, ANY_DIMS)) if not call.startswith("shape_func")]
    assert len(general) == 2, general  # the GEMM with its bias and residual, then the layer norm
    unit = _kernel_calls(_function(artefact, UNIT_DIMS))
    assert len(unit) == 1, unit  # the GEMV, bias and residual, then the layer norm, in one call
    x = np.random.default_rng(2).standard_normal((1, 1, K)).astype(np.float32)
    assert_unit_copy_exact(artefact, x, path if codec == "dense" else None)


def test_lowers_tells_what_the_build_s_lowering_refuses():
    kernel = finish(dense.gemm(N, K, rows=1), "dense_gemv")
    out = tirx.decl_buffer((4,), "int32", "out")
    undefined = tirx.PrimFunc([out], tirx.stmt.BufferStore(out, tirx.Var("free", "int32"), [0]))  # a free variable
    with make_target():
        assert unit_epilogues.lowers(kernel) and not unit_epilogues.lowers(undefined)
    assert unit_epilogues.lowers(undefined)  # no target: nothing to check against


@pytest.mark.slow
def test_a_fused_kernel_the_lowering_refuses_keeps_its_calls_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(unit_epilogues, "lowers", lambda func: False)
    path = tmp_path / "m.onnx"
    onnx.save(_block("batch", "seq"), path)
    artefact = bie_compiler.compile_model(path, tmp_path / "dense", skip=("*",), progress=None)
    assert len(_kernel_calls(_function(artefact, UNIT_DIMS))) == 4  # the two matmuls and their epilogues
    runner = bie_compiler.load(artefact)
    x = np.random.default_rng(4).standard_normal((1, 1, K)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(runner({"x": x})["y"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
def test_the_attention_joins_its_projections_and_many_tokens_stay_exact(model_dir, tmp_path):
    # the bundled transformer has 16 tokens whatever its batch: at batch 1 its unit copy has real attention loops,
    # whose transposes of Q, K and V are products the batched matmuls read (as in
    # test_a_transpose_s_product_keeps_its_own_storage_in_the_next_round)
    artefact = bie_compiler.compile_model(model_dir["transformer"], tmp_path / "bp", "bie-bitplane", {"bits": 4},
                                          progress=None)
    unit = _kernel_calls(_function(artefact, UNIT_DIMS))
    assert [call for call in unit if "matmul" in call]  # the attention's batched matmuls are in the unit copy
    assert not [call for call in unit if "matmul" in call and "bitplane" not in call], unit  # each in a GEMM's call
    x = np.random.default_rng(5).standard_normal((1, 16, 128)).astype(np.float32)
    assert_unit_copy_exact(artefact, x)


def test_fused_attribute_names_the_epilogue():
    kernel = finish(dense.gemm(N, K, rows=1), "dense_gemv")
    fused = fused_kernel(kernel, _bias_gelu_residual(N).with_attr("global_symbol", "gelu"), 0,
                         [(1, K), (2, K, 32), (1, N)], [(1, 1, N), (N,), (1, 1, N), (1, 1, N)])
    assert str(fused.attrs[FUSED_ATTR]) == "gelu" and "global_symbol" not in fused.attrs

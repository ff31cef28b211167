"""At one token our kernels read their arguments in the shapes their producers wrote (codegen/unit_reshapes.py): a
kernel copy with a parameter reshaped computes what the kernel did, and a model's unit copy has no reshape calls."""

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

from bie_compiler.codegen import cpu
from bie_compiler.codegen.kernel_registry import finish
from bie_compiler.codegen.kernels import bitplane_lut
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.unit_dims import ANY_DIMS, UNIT_DIMS
from bie_compiler.codegen.unit_reshapes import with_parameter_shapes

from unit_copies import assert_unit_copy_exact, compile_as

K, N = 64, 48


def _run(func, *arrays) -> None:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), make_target(),
                      tir_pipeline=cpu.TIR_PIPELINE)
    lib["main"](*arrays)


def test_a_kernel_with_its_input_reshaped_computes_the_same():
    rng = np.random.default_rng(0)
    kernel = finish(bitplane_lut.gemv(N, K, 3, 0, K, 1), "lut")
    constants = [bitplane_lut.twos_complement_planes(rng.integers(-7, 8, (N, K)), 3),
                 bitplane_lut.lanes_of_scales(rng.uniform(0.5, 1.5, (N, 1)).astype(np.float32))]
    x = rng.standard_normal((1, K)).astype(np.float32)
    want = tvm.runtime.tensor(np.zeros((1, N), np.float32))
    _run(kernel, tvm.runtime.tensor(x), *map(tvm.runtime.tensor, constants), want)
    # x arrives as [1, 1, K] (a token of a sequence), the output leaves as [1, 1, N]
    copy = with_parameter_shapes(kernel, [(1, K), *(c.shape for c in constants), (1, N)], {0: [1, 1, K], 3: [1, 1, N]})
    assert [list(p.ty.shape) for p in (copy.params[0], copy.params[3])] == [[1, 1, K], [1, 1, N]]
    got = tvm.runtime.tensor(np.full((1, 1, N), np.nan, np.float32))
    _run(copy, tvm.runtime.tensor(x.reshape(1, 1, K)), *map(tvm.runtime.tensor, constants), got)
    np.testing.assert_array_equal(got.numpy().reshape(1, N), want.numpy())
    assert np.abs(want.numpy()).max() > 0.1  # not a trivial output


def _two_layers() -> onnx.ModelProto:
    """x [batch, seq, K] -> y = (x @ W1 + b1) @ W2 + x: each matmul reads its rows flattened, a reshape each."""
    rng = np.random.default_rng(1)
    weights = [helper.make_tensor("w1", TensorProto.FLOAT, [K, N], rng.standard_normal((K, N)).astype(np.float32).ravel()),
               helper.make_tensor("b1", TensorProto.FLOAT, [N], rng.standard_normal(N).astype(np.float32)),
               helper.make_tensor("w2", TensorProto.FLOAT, [N, K], rng.standard_normal((N, K)).astype(np.float32).ravel())]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("MatMul", ["hb", "w2"], ["o"]), helper.make_node("Add", ["o", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", K])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calls(artefact, name: str) -> list:
    text = relax.VMExecutable(tvm.runtime.load_module(str(artefact / "model.so"))).as_text()
    body = text.split(f"@{name}:\n", 1)[1].split("\n@", 1)[0]
    return [line.split()[1] for line in body.splitlines() if line.strip().startswith("call")]


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["dense", "bie-bitplane"])
def test_unit_copy_has_no_reshape_calls(tmp_path, codec):
    path = tmp_path / "m.onnx"
    onnx.save(_two_layers(), path)
    artefact = compile_as(path, tmp_path / "out", codec)
    assert "vm.builtin.reshape" not in _calls(artefact, UNIT_DIMS)
    assert "vm.builtin.reshape" in _calls(artefact, ANY_DIMS)  # any sequence length: the general copy's reshapes
    x = np.random.default_rng(2).standard_normal((1, 1, K)).astype(np.float32)
    assert_unit_copy_exact(artefact, x, path if codec == "dense" else None)

"""``bbs`` CPU kernels against the reference decoder: LUT bit-serial GEMV, decoded matmul, decode + conv."""

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from bie_compiler.codecs import bbs, make_config
from bie_compiler.codegen import ConvSpec, kernel_for
from bie_compiler.codegen.target import make_target
from bie_compiler.parity import run_onnxruntime

CONFIGS = [
    {"preset": "conservative"},
    {"preset": "moderate"},
    {"preset": "moderate", "sensitive_fraction": 0.0},  # pruned rows only, 100 = 6 blocks of 16 + 4 padding lanes
    {"pruned_columns": 6, "method": "avg", "sensitive_fraction": 1.0},  # sensitive rows only
    {"pruned_columns": 1, "method": "zps", "sensitive_fraction": 0.3},
]
SHAPES = [(1, 5), (100, 70), (48, 256), (512, 256)]  # (N, K): K not a multiple of 32 included; 512: many work
# items, the LUT kernel interleaving sensitive items with pruned blocks


@pytest.fixture(scope="module")
def target():
    return make_target()


def run(func, target, x, constants, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target).mod
    out = tvm.runtime.empty(out_shape, "float32")
    lib["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in constants], out)
    return out.numpy()


@pytest.mark.parametrize("options", CONFIGS, ids=[str(o) for o in CONFIGS])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matmul_kernels_match_reference_decoder(options, n, k, target):
    rng = np.random.default_rng(n * k)
    w = rng.standard_t(4, (n, k)).astype(np.float32)
    enc = bbs.encode(w, make_config("bbs", options))
    call = kernel_for(enc, target)
    assert call.kind == "bbs_lut" and call.large_batch.kind == "bbs_decoded"  # this CPU has AVX-512
    decoded = bbs.decode(enc).astype(np.float64)
    for variant in (call, call.large_batch):  # each exact for any row count; the pass picks by rows
        for batch in (1, 5):
            x = rng.standard_normal((batch, k)).astype(np.float32)
            ref = x @ decoded.T
            got = run(variant.func, target, x, variant.constants, (batch, n))
            assert np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30) < 1e-5


def test_lut_kernel_uses_the_table_lookup_and_runs_in_parallel(target):
    enc = bbs.encode(np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32), bbs.Config())
    script = kernel_for(enc, target).func.script()
    assert "llvm.x86.avx512.permvar.sf.512" in script and "T.parallel" in script


def test_without_avx512_only_the_decoded_kernel():
    enc = bbs.encode(np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32), bbs.Config())
    call = kernel_for(enc, make_target(mcpu="x86-64-v3"))
    assert call.kind == "bbs_decoded" and call.large_batch is None


def conv_reference(x, weight, stride, pad):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2, pads=[pad] * 4)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "w")])
    return run_onnxruntime(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})[0]


@pytest.mark.parametrize("o,i,kernel,stride,pad", [(16, 3, 3, 1, 1), (40, 36, 3, 2, 1), (24, 32, 1, 1, 0)])
def test_conv_kernel_matches_reference_decoder(o, i, kernel, stride, pad, target):
    rng = np.random.default_rng(o + i)
    weight = rng.standard_normal((o, i, kernel, kernel)).astype(np.float32)
    matrix = weight.transpose(0, 2, 3, 1).reshape(o, -1)  # codec layout: (kh, kw, in), in fastest
    enc = bbs.encode(matrix, bbs.Config("moderate", sensitive_fraction=0.0))
    decoded = bbs.decode(enc).reshape(o, kernel, kernel, i).transpose(0, 3, 1, 2)
    spec = ConvSpec((stride, stride), (pad,) * 4, (1, 1), (o, i, kernel, kernel))
    call = kernel_for(enc, target, spec)
    x = rng.standard_normal((2, i, 9, 9)).astype(np.float32)
    ref = conv_reference(x, np.ascontiguousarray(decoded), stride, pad)
    got = run(call.func, target, x, call.constants, ref.shape)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5

"""A pointwise conv fused with the depthwise conv reading it: the pass fuses the pair, the rule schedules it, and the
scheduled function computes what the unscheduled one does."""

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from bie_compiler.codegen.schedules.expand_depthwise import ExpandDepthwise
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.fuse_expand_depthwise import fuse_expand_depthwise

from fused_conv import expand_depthwise

CASES = [  # cin, h, w, channels, kernel, stride, epilogue
    (16, 28, 28, 48, 3, 2, "relu6"),  # stride 2: column phases of the band's rows
    (8, 20, 20, 24, 3, 1, "relu6"),
    (6, 15, 13, 20, 3, 2, "none"),  # odd plane, channels not a multiple of the group
    (4, 9, 9, 12, 5, 1, "relu6"),  # 5x5, a band covering the whole plane
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_scheduled_pair_matches_unscheduled(case, check_rule):
    cin, h, w, channels, kernel, stride, epilogue = case
    func = expand_depthwise(cin, h, w, channels, kernel, stride, epilogue)
    check_rule(ExpandDepthwise(), func, [{"batch": 1}, {"batch": 2}])


def _group_count(cin, h, w, channels, min_bytes, stride=1):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, cin, h, w], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = relax.const(np.ones((channels, cin, 1, 1), "float32"))
            w2 = relax.const(np.ones((channels, 1, 3, 3), "float32"))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w1)))
            out = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(y, w2, stride, padding=1, groups=channels)))
        bb.emit_func_output(out)
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
              fuse_expand_depthwise(min_bytes), relax.transform.FuseTIR()]
    with make_target():
        mod = tvm.transform.Sequential(passes)(bb.get())
    return sum(isinstance(f, tirx.PrimFunc) for _, f in mod.functions_items())


@pytest.mark.parametrize("stride", [1, 2])
def test_pass_fuses_only_pairs_with_a_large_intermediate(stride):
    size = 16 * 32 * 32 * 4  # bytes of the pointwise output
    assert _group_count(8, 32, 32, 16, min_bytes=size, stride=stride) == 1
    assert _group_count(8, 32, 32, 16, min_bytes=size + 1, stride=stride) == 2


def test_rule_leaves_a_single_conv_alone():
    from fused_conv import fused_conv
    func, _ = fused_conv(1, 16, 8, 8, 16, 3, 1, 16)
    assert ExpandDepthwise().apply(func, make_target(), False) is None


def _decoded_depthwise_module(cin, h, w, channels, static):
    """A pointwise conv, then a depthwise conv whose weight a decode-like kernel computes from a constant: the kernel
    takes the pointwise output as its (unread) first argument, of any shape of rank 4 as the encoded builds' decode
    kernels do, or (``static``) of the pointwise output's shape only."""
    from tvm import te

    dims = (1, channels, h, w) if static else tuple(te.var(f"d{i}", "int64") for i in range(4))
    x_any = te.placeholder(dims, "float32", "x")
    codes = te.placeholder((channels, 1, 3, 3), "float32", "codes")
    weight = te.compute((channels, 1, 3, 3), lambda *i: codes[i] * 0.5, name="decoded")
    decoder = te.create_prim_func([x_any, codes, weight]).with_attr("global_symbol", "decode")
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, cin, h, w], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = relax.const(rng.standard_normal((channels, cin, 1, 1)).astype("float32"))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w1)))
            w2 = bb.emit(relax.call_tir(bb.add_func(decoder, "decode"), [y, relax.const(
                rng.standard_normal((channels, 1, 3, 3)).astype("float32"))],
                relax.TensorType([channels, 1, 3, 3], "float32")))
            out = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(y, w2, 1, padding=1, groups=channels)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("min_bytes,static,kernels", [(0, False, 2), (1 << 30, False, 3), (0, True, 3)],
                         ids=["fused", "apart", "static-shape"])
def test_pass_fuses_a_pair_whose_depthwise_weight_is_decoded(min_bytes, static, kernels):
    """The decode kernel's unread use of the pointwise output does not keep the pair apart, unless the kernel takes
    only that tensor's shape there (no other tensor could be passed); fused or not, the module computes the same."""
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
              fuse_expand_depthwise(min_bytes), relax.transform.FuseTIR()]
    mod = _decoded_depthwise_module(8, 12, 12, 16, static)
    with make_target():
        fused = tvm.transform.Sequential(passes)(mod)
    count = sum(isinstance(f, tirx.PrimFunc) for _, f in fused.functions_items())
    assert count == kernels  # the decode kernel, then the pair (one or two kernels)
    x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype("float32")
    results = []
    for m in (mod, fused):
        vm = relax.VirtualMachine(tvm.compile(m, make_target()), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-5)

"""The channel-pool rule: a mean over each channel's plane (ONNX GlobalAveragePool) with the channels in vectors,
against the unscheduled function."""

import tvm
from tvm import relax, te, tirx, topi

from bie_compiler.codegen import cpu
from bie_compiler.codegen.schedules import channel_pool
from bie_compiler.codegen.target import make_target
from bie_compiler.frontend import import_model
from bie_compiler.passes import EncodingPolicy, encoding_passes, plan_encoding

SIZES = [{"batch": 1}, {"batch": 8}, {"batch": 3}]


def legalized_mean(channels: int, plane: int) -> tirx.PrimFunc:
    """``mean(x, axis=[2, 3], keepdims=True)`` as Relax legalizes it (what GlobalAveragePool becomes)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tirx.Var("batch", "int64"), channels, plane, plane], "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=True)))
    mod = relax.transform.LegalizeOps()(bb.get())
    return next(f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))


def test_mean_over_planes_in_channel_vectors(check_rule):
    for channels, plane in ((1280, 7), (32, 3), (48, 1)):
        script = check_rule(channel_pool.ChannelPool(), legalized_mean(channels, plane), SIZES).script()
        assert "T.parallel" in script and script.count("T.vectorized(T.int64(16))") == 3  # init, sums, division


def test_topi_adaptive_average_pool(check_rule):
    x = te.placeholder((te.var("batch", "int64"), 64, 5, 5), "float32", "x")
    func = te.create_prim_func([x, topi.nn.adaptive_pool(x, (1, 1), "avg")])
    assert "T.vectorized(16)" in check_rule(channel_pool.ChannelPool(), func, SIZES).script()


def test_declines_channels_off_the_lanes():
    with make_target() as target:
        assert channel_pool.ChannelPool().apply(legalized_mean(1000, 7), target, False) is None


def test_the_cnn_global_average_pool_is_taken(model_dir):
    """The bundled cnn's GlobalAveragePool, as the build fuses it, is one function the rule takes."""
    target = make_target()
    imported = import_model(model_dir["cnn"])
    plan = plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("bie-bitplane", skip=("*",)), target)
    with target:
        fused = cpu.fusion()(encoding_passes(plan)(imported.mod))
        taken = [gv.name_hint for gv, f in fused.functions_items()
                 if isinstance(f, tirx.PrimFunc) and channel_pool.ChannelPool().apply(f, target, False) is not None]
    assert len(taken) == 1 and "mean" in taken[0], taken

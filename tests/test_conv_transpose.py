"""Upsampling transposed convs (kernel = stride) built as a 1x1 conv and a pixel shuffle, against TVM's own
legalization of the transposed conv."""

import numpy as np
import pytest
import tvm
from tvm import relax

from bie_compiler.codegen import cpu
from bie_compiler.codegen.conv_transpose import conv_transpose_as_shuffle
from bie_compiler.codegen.target import make_target


def transposed_conv(channels, out, height, width, kernel, stride):
    """conv2d_transpose (constant weight) + bias, then a sigmoid, with a symbolic batch: PP-OCR det's head."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([tvm.tirx.Var("n", "int64"), channels, height, width], "float32"))
    weight = relax.const(rng.standard_normal((channels, out, kernel, kernel)).astype("float32"))
    bias = relax.const(rng.standard_normal((1, out, 1, 1)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.nn.conv2d_transpose(x, weight, strides=stride), bias))
            y = bb.emit_output(relax.op.sigmoid(y))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize("channels,out,height,width,kernel", [(24, 24, 32, 96, 2), (24, 1, 8, 12, 2), (8, 4, 5, 7, 3)])
def test_upsampling_is_a_pointwise_conv_and_a_shuffle(channels, out, height, width, kernel):
    mod = transposed_conv(channels, out, height, width, kernel, kernel)
    assert "conv2d_transpose" not in conv_transpose_as_shuffle(mod)["main"].script()
    target = make_target()
    built = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=cpu.pipeline(), tir_pipeline=cpu.TIR_PIPELINE),
                                 tvm.cpu())
    reference = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())  # TVM's legalization, unscheduled
    for batch in (1, 2):
        x = tvm.runtime.tensor(np.random.default_rng(batch).standard_normal((batch, channels, height, width)).astype("float32"))
        want = reference["main"](x).numpy()
        assert want.shape == (batch, out, height * kernel, width * kernel)
        np.testing.assert_allclose(built["main"](x).numpy(), want, rtol=1e-5, atol=1e-6)


def test_overlapping_kernels_stay_transposed_convs():
    mod = transposed_conv(8, 4, 5, 7, 3, 2)  # kernel 3, stride 2: output blocks overlap
    assert "conv2d_transpose" in conv_transpose_as_shuffle(mod)["main"].script()

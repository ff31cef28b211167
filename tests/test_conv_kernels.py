"""Decode kernels of every codec: bit-exact against the numpy decoders (matmul [K, N] and conv OIHW layouts), and
convs built as the pass emits them (decode + conv2d; 1x1, 3x3 stride 2, padding, grouped, depthwise; batch 1 and 3)
against onnxruntime's Conv on the decoded weights."""

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from bie_compiler.codecs import CODECS, make_config
from bie_compiler.codegen import ConvSpec, cpu, kernel_for
from bie_compiler.codegen.weights import PRECISION_ATTR
from bie_compiler.parity import run_onnxruntime
from bie_compiler.runtime.progressive_precision import keep_top_planes
from kernel_runs import assert_close, computed_constants, run

CASES = [
    ("bie-bitplane", {"bits": 4}),  # 4-bit integers, two per byte
    ("bie-bitplane", {"bits": 8}),  # 8-bit integers
    ("bie-bitplane", {"bits": 6, "group_size": 32, "planes": 3}),  # the bit planes
    ("bie-binary", {"layout": "bitmap"}),
    ("bie-binary", {"layout": "index", "density": 0.2}),
    ("bie-blocked", {"block_size": 16}),
    ("tans", {"levels": 15, "stream_symbols": 200}),
    ("bbs", {"preset": "moderate", "sensitive_fraction": 0.3}),  # convs: the kept columns as nibbles by channel
    ("bbs", {"preset": "conservative"}),  # 6 kept columns: convs decode the stored column words
    ("bbs", {"preset": "moderate", "sensitive_fraction": 0.0}),  # every row pruned, odd counts: a half nibble row
    ("int8", {}),
    ("bitwave", {"pruned_columns": 3}),
]
IDS = [f"{c}-{o}" for c, o in CASES]
# (out, in / groups, kernel, stride, pad, groups, height): 1x1; 3x3 stride 2 with padding on an odd size; grouped;
# depthwise (K = 9, shorter than every format's block); 5x5 stride 1, asymmetric in / out
CONVS = [(24, 20, 1, 1, 0, 1, 7), (40, 12, 3, 2, 1, 1, 9), (18, 4, 3, 1, 1, 3, 8), (48, 1, 3, 2, 1, 48, 10),
         (8, 6, 5, 1, 2, 1, 6), (32, 1, 3, 1, 1, 32, 7)]  # the last: a 7x7 depthwise conv (written over flat planes)


def weights(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, shape) * (rng.random(shape) > 0.3)).astype(np.float32)


def encode(codec, options, matrix):
    return CODECS[codec].encode(matrix, make_config(codec, options))


def run_decoder(call, target, x, out_shape, constants):
    assert call.decodes and call.func.attrs["tirx.is_scheduled"]
    return run(call.func, target, x, constants, out_shape)


@pytest.mark.parametrize("codec,options", CASES, ids=IDS)
@pytest.mark.parametrize("n,k", [(1, 1), (37, 300), (64, 129), (96, 40)])
def test_matmul_decoder_is_bit_exact(codec, options, n, k, target):
    enc = encode(codec, options, weights((n, k), n * k))
    call = kernel_for(enc, target)
    if call.large_batch is None or not call.large_batch.decodes:
        pytest.skip("several rows run the panel GEMM or the index loop (tests/test_panel_gemm.py)")
    got = run_decoder(call.large_batch, target, np.zeros((3, k), np.float32), (k, n), computed_constants(call, target))
    np.testing.assert_array_equal(got, CODECS[codec].decode(enc).T)


def oihw(matrix, shape):
    o, i, kh, kw = shape
    return np.ascontiguousarray(matrix.reshape(o, kh, kw, i).transpose(0, 3, 1, 2))


# kh != kw: the layout's index order shows; 1x1 with K a multiple of 16 and of 8 only: decoded by output channel;
# 1x1 with 48 channels: bitwave decodes across channels (K = 100: tiles of 50); an odd channel count (4-bit integers
# pair channels in a byte's nibbles); depthwise: by channel
@pytest.mark.parametrize("shape", [(12, 5, 3, 2), (12, 32, 1, 1), (10, 24, 1, 1), (48, 100, 1, 1), (9, 20, 1, 1),
                                   (16, 1, 3, 3)], ids=str)
@pytest.mark.parametrize("codec,options", CASES, ids=IDS)
def test_conv_decoder_is_bit_exact(codec, options, shape, target):
    o, i, kh, kw = shape
    enc = encode(codec, options, weights((o, i * kh * kw), 7))
    call = kernel_for(enc, target, ConvSpec((1, 1), (0, 0, 0, 0), (1, 1), shape))
    got = run_decoder(call, target, np.zeros((1, i, 4, 4), np.float32), shape, computed_constants(call, target))
    np.testing.assert_array_equal(got, oihw(CODECS[codec].decode(enc), shape))


@pytest.mark.parametrize("bits", [4, 8])
def test_conv_codes_cut_at_load_decode_as_fewer_planes(bits, target, tmp_path):
    """Progressive precision (``runtime/progressive_precision.py``) cuts a conv's integer codes, stored by output
    channel, to the weights an encoding of fewer planes holds."""
    shape = (9, 20, 1, 1)
    matrix = weights(shape[:2], 3)
    call = kernel_for(encode("bie-bitplane", {"bits": bits}, matrix), target, ConvSpec((1, 1), (0,) * 4, (1, 1), shape))
    form = dict(call.func.attrs[PRECISION_ATTR])
    entry = {"tensor": 0, "form": str(form["form"]), "magnitude_bits": int(form["magnitude_bits"])}
    cut = keep_top_planes(list(call.constants), [entry], 2, tmp_path)
    got = run_decoder(call, target, np.zeros((1, 20, 4, 4), np.float32), shape, cut)
    fewer = encode("bie-bitplane", {"bits": bits, "planes": 2}, matrix)
    np.testing.assert_array_equal(got, oihw(CODECS["bie-bitplane"].decode(fewer), shape))
    assert not np.array_equal(got, run_decoder(call, target, np.zeros((1, 20, 4, 4), np.float32), shape,
                                               call.constants))


def conv_reference(x, weight, stride, pad, groups):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2, pads=[pad] * 4, group=groups)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "w")])
    return run_onnxruntime(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})[0]


@pytest.mark.parametrize("codec,options", CASES, ids=IDS)
def test_convs_match_onnxruntime_on_decoded_weights(codec, options, target):
    """Every conv of CONVS in one module (one build per codec), as the pass writes it: conv2d(x, decode(x, ...))."""
    bb = relax.BlockBuilder()
    cases = []
    for index, (o, i, kernel, stride, pad, groups, size) in enumerate(CONVS):
        shape = (o, i, kernel, kernel)
        enc = encode(codec, options, weights((o, kernel * kernel * i), index))
        call = kernel_for(enc, target, ConvSpec((stride,) * 2, (pad,) * 4, (1, 1), shape, groups))
        decoder = bb.add_func(call.func.with_attr("global_symbol", f"decode{index}"), f"decode{index}")
        x = relax.Var("x", relax.TensorType([tvm.tirx.Var("n", "int64"), i * groups, size, size], "float32"))
        with bb.function(f"conv{index}", [x]):
            w = bb.emit(relax.call_tir(decoder, [x, *map(relax.const, computed_constants(call, target))],
                                       out_ty=relax.TensorType(list(shape), "float32")))
            bb.emit_func_output(bb.emit(relax.op.nn.conv2d(x, w, (stride,) * 2, (pad,) * 4, groups=groups)))
        cases.append((index, oihw(CODECS[codec].decode(enc), shape), stride, pad, groups, (i * groups, size)))
    executable, *_ = cpu.build(bb.get(), target)  # no main: nothing lifted out of the code
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(0)
    for index, decoded, stride, pad, groups, (channels, size) in cases:
        for batch in (1, 3):
            x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
            ref = conv_reference(x, decoded, stride, pad, groups)
            got = vm[f"conv{index}"](tvm.runtime.tensor(x)).numpy()
            assert_close(got, ref, context=(index, batch))

"""The depthwise conv written over flat planes against the unscheduled fused conv."""

import numpy as np
import pytest

from bie_compiler.codegen.schedules.depthwise_flat import DepthwiseFlat
from bie_compiler.codegen.target import make_target

from fused_conv import fused_conv, scheduled_and_plain

CASES = [  # batch, cin, h, w, cout, kernel, stride, groups, epilogue
    (1, 32, 7, 7, 32, 3, 1, 32, "relu6"),  # 49 pixels: vectors at 0, 16, 32, 33
    (8, 32, 7, 7, 32, 3, 1, 32, "relu6"),
    (2, 24, 5, 7, 24, 3, 1, 24, "residual"),  # 35 pixels, an epilogue reading another plane
    (3, 16, 9, 5, 16, 3, 1, 16, "nanrelu"),  # 45 pixels; an epilogue DAG (its input read twice)
    (1, 16, 4, 4, 16, 3, 1, 16, "bare"),  # one vector: the whole plane; no epilogue
    (8, 20, 6, 3, 20, 3, 1, 20, "none"),  # 3-wide rows: the left and right taps masked in most lanes
    (2, 16, 20, 7, 16, 3, 1, 16, "relu6"),  # 140 pixels: nine vectors, the vector loops not unrolled
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_written_conv_matches_unscheduled(case):
    got, want = scheduled_and_plain(DepthwiseFlat(), case)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_infinite_neighbour_row_stays_out_of_the_masked_lanes():
    """A lane at a row's edge reads the neighbouring row for its outer taps and must drop it: an infinite input
    pixel changes only the outputs whose 3x3 window holds it (multiplying the dropped value by zero would make NaN
    in the pixels at the other end of the neighbouring row)."""
    import tvm

    from bie_compiler.codegen import cpu

    func, _ = fused_conv(1, 16, 7, 7, 16, 3, 1, 16, "none")
    lib = tvm.compile(tvm.IRModule({"main": DepthwiseFlat().apply(func, make_target(), False).mod["main"]
                                    .with_attr("global_symbol", "main")}), make_target(), tir_pipeline=cpu.TIR_PIPELINE)
    x = np.ones((1, 16, 7, 7), np.float32)
    x[:, :, 2, 6] = np.inf  # the last pixel of row 2: the left taps of row 3's first pixel read it
    args = [x, np.ones((16, 1, 3, 3), np.float32), np.zeros((1, 16, 1, 1), np.float32), np.zeros_like(x)]
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    out = tensors[-1].numpy()
    window = np.zeros((7, 7), bool)
    window[1:4, 5:7] = True
    assert np.isinf(out[:, :, window]).all()
    assert np.isfinite(out[:, :, ~window]).all()


@pytest.mark.parametrize("case", [
    (1, 32, 14, 14, 32, 3, 1, 32, "relu6"),  # 14-wide rows: the rule of depthwise_conv2d.py
    (1, 32, 7, 7, 32, 3, 2, 32, "relu6"),  # strided
    (1, 32, 7, 7, 32, 5, 1, 32, "relu6"),  # 5x5
    (1, 32, 3, 3, 32, 3, 1, 32, "relu6"),  # less than one vector
    (1, 16, 7, 7, 32, 3, 1, 1, "relu6"),  # not depthwise
], ids=str)
def test_rule_declines_other_convs(case):
    func, _ = fused_conv(*case)
    assert DepthwiseFlat().apply(func, make_target(), False) is None

"""The depthwise conv2d schedule rule against the unscheduled fused conv, on awkward shapes."""

import numpy as np
import pytest

from bie_compiler.codegen.schedules.conv2d import Conv2D
from bie_compiler.codegen.schedules.depthwise_conv2d import DepthwiseConv2D
from bie_compiler.codegen.target import make_target

from fused_conv import fused_conv, scheduled_and_plain

CASES = [  # batch, channels, h, w, kernel, stride, epilogue
    (1, 32, 16, 16, 3, 1, "relu6"),
    (3, 24, 14, 14, 3, 2, "relu6"),  # stride 2, column phases
    (1, 20, 9, 13, 3, 1, "none"),  # odd sizes, channels not a multiple of 16
    (3, 12, 15, 15, 3, 2, "residual"),  # stride 2 with an odd padded width
    (1, 8, 7, 7, 5, 1, "relu"),  # 5x5
    (2, 16, 12, 12, 3, 1, "nanrelu"),  # the NaN-keeping relu: an epilogue DAG
    (1, 4, 48, 48, 3, 1, "relu6"),  # a plane large enough to be copied per band of rows
    (2, 4, 94, 94, 3, 2, "residual"),  # the same, stride 2 (column phases per band)
    (2, 40, 5, 5, 3, 1, "residual"),  # rows narrower than half a vector: a tile of every row
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_scheduled_depthwise_matches_unscheduled(case):
    batch, channels, h, w, kernel, stride, epilogue = case
    got, want = scheduled_and_plain(DepthwiseConv2D(), (batch, channels, h, w, channels, kernel, stride, channels,
                                                        epilogue))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rule_leaves_other_convs_alone():
    func, _ = fused_conv(1, 16, 8, 8, 32, 1)
    assert DepthwiseConv2D().apply(func, make_target(), False) is None
    assert Conv2D().apply(func, make_target(), False) is not None

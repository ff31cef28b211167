"""The conv2d schedule rule against the unscheduled fused conv, on awkward shapes."""

import numpy as np
import pytest

from bie_compiler.codegen.schedules.conv2d import Conv2D, find_conv, schedule_conv2d
from bie_compiler.codegen.target import make_target

from fused_conv import fused_conv, run, scheduled_and_plain

CASES = [  # batch, cin, h, w, cout, kernel, stride, groups, epilogue
    (1, 32, 28, 28, 48, 1, 1, 1, "relu6"),  # pointwise, plane a multiple of 16
    (3, 24, 7, 7, 40, 1, 1, 1, "residual"),  # pointwise, 49-pixel plane: zero-padded to 64
    (1, 20, 9, 13, 36, 1, 1, 1, "none"),  # odd plane, channels not a multiple of 16, no epilogue
    (1, 3, 17, 17, 16, 3, 2, 1, "relu6"),  # the stem: 3x3 stride 2, odd width (no column phases)
    (3, 16, 32, 32, 24, 3, 2, 1, "relu"),  # stride 2, column phases
    (1, 8, 11, 15, 12, 3, 1, 1, "relu6"),  # 3x3 stride 1, odd sizes
    (1, 16, 14, 14, 32, 3, 1, 4, "relu6"),  # grouped
    (3, 12, 10, 10, 18, 1, 2, 1, "none"),  # 1x1 stride 2 (not a GEMM over the plane)
    (1, 16, 32, 32, 32, 3, 2, 1, "nanrelu"),  # the NaN-keeping relu: an epilogue DAG (the bundled cnn's conv2)
    (3, 32, 16, 16, 32, 1, 1, 1, "nanrelu"),  # the same after a pointwise conv
    (1, 192, 1, 1, 48, 1, 1, 1, "nanrelu"),  # a one-pixel plane (squeeze-excitation after a global pooling)
    (1, 96, 16, 48, 24, 3, 1, 1, "bare"),  # no epilogue, not even a bias (PP-OCR det's neck convs)
    (1, 32, 7, 7, 48, 1, 1, 1, "bare"),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_scheduled_conv_matches_unscheduled(case):
    got, want = scheduled_and_plain(Conv2D(), case)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rule_leaves_depthwise_to_its_own_rule():
    func, _ = fused_conv(1, 16, 8, 8, 16, 3, 1, 16)
    assert Conv2D().apply(func, make_target(), False) is None


def test_schedule_conv2d_is_callable_on_a_found_conv():
    func, batch = fused_conv(1, 16, 7, 7, 24, 1)
    sch, blocks = find_conv(func)
    schedule_conv2d(sch, blocks)
    np.testing.assert_allclose(run(sch.mod["main"], batch), run(func, batch), rtol=1e-5, atol=1e-5)

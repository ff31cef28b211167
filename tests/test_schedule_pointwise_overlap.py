"""The written 1x1 conv with overlapping vectors against the unscheduled fused conv."""

import numpy as np
import pytest

from bie_compiler.codegen.schedules.pointwise_overlap import PointwiseOverlap
from bie_compiler.codegen.target import make_target

from fused_conv import fused_conv, scheduled_and_plain

CASES = [  # batch, cin, h, w, cout, kernel, stride, groups, epilogue
    (1, 40, 14, 14, 24, 1, 1, 1, "residual"),  # 196 pixels: 13 tiles of one vector, the last at 180
    (1, 48, 14, 14, 48, 1, 1, 1, "relu6"),  # two tiles of 24 channels per vector
    (8, 40, 14, 14, 24, 1, 1, 1, "residual"),
    (1, 32, 7, 7, 36, 1, 1, 1, "residual"),  # 49 pixels: three vectors and one pixel as dot products
    (8, 48, 7, 7, 36, 1, 1, 1, "relu6"),
    (2, 32, 5, 7, 24, 1, 1, 1, "nanrelu"),  # 35 pixels: two vectors and three dot products; an epilogue DAG
    (1, 24, 7, 7, 36, 1, 1, 1, "relu6"),  # 49 pixels, channels not a multiple of 16: four vectors at 0, 16, 32, 33
    (8, 24, 7, 7, 36, 1, 1, 1, "relu6"),
    (3, 20, 9, 13, 30, 1, 1, 1, "none"),  # 117 pixels, channels not a multiple of the tile
    (1, 16, 5, 5, 16, 1, 1, 1, "bare"),  # 25 pixels: two vectors at 0 and 9; no epilogue
    (2, 32, 7, 7, 32, 1, 1, 1, "nanrelu"),  # an epilogue DAG (its input read twice)
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_written_conv_matches_unscheduled(case):
    got, want = scheduled_and_plain(PointwiseOverlap(), case)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [
    (1, 32, 28, 28, 48, 1, 1, 1, "relu6"),  # whole vectors: the rule of conv2d.py
    (1, 32, 3, 3, 48, 1, 1, 1, "relu6"),  # less than one vector
    (1, 16, 14, 14, 32, 3, 1, 1, "relu6"),  # 3x3
    (1, 16, 14, 14, 16, 3, 1, 16, "relu6"),  # depthwise
], ids=str)
def test_rule_declines_other_convs(case):
    func, _ = fused_conv(*case)
    assert PointwiseOverlap().apply(func, make_target(), False) is None


@pytest.mark.parametrize("case, prefetches", [
    ((1, 32, 7, 7, 48, 1, 1, 1, "relu6"), 1),  # 3 vectors x 8 channels: 8 weights of the next tile a step, one line
    ((1, 32, 14, 14, 48, 1, 1, 1, "relu6"), 2),  # 1 vector x 24 channels: 24 weights a step span two lines
], ids=str)
def test_each_reduction_step_prefetches_its_share_of_the_next_tasks_weight_rows(case, prefetches):
    func, _ = fused_conv(*case)
    script = PointwiseOverlap().apply(func, make_target(), False).mod["main"].script()
    assert script.count("llvm.prefetch") == prefetches

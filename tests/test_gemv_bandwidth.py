"""benchmarks/common.py's bandwidth fractions: each round's ceiling is its fastest reference, a method's fraction the
median over rounds of its rate over that round's ceiling."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402


def method(name: str, nbytes: int, seconds: list[float], reference: bool = False) -> dict:
    return {"name": name, "bytes": nbytes, "seconds": seconds, "reference": reference}


def test_fractions_follow_each_rounds_fastest_reference():
    # the machine slows by half in round 2: both references and the kernel with it
    sums = method("sum", 1000, [1.0, 2.0, 1.0], reference=True)  # 1000, 500, 1000 bytes/s
    gemv = method("gemv", 400, [0.5, 0.8, 0.5], reference=True)  # 800, 500, 800
    kernel = method("kernel", 100, [0.2, 0.4, 0.125])  # 500, 250, 800
    ceiling = common.bandwidth_fractions([sums, gemv, kernel])
    assert ceiling["bandwidth"] == 1000.0  # median of the rounds' ceilings 1000, 500, 1000
    assert ceiling["references"] == {"sum": 1000.0, "gemv": 800.0}
    assert kernel["bw_fraction"] == pytest.approx(0.5)  # median of 0.5, 0.5, 0.8
    assert gemv["bw_fraction"] == pytest.approx(0.8)  # median of 0.8, 1.0, 0.8
    assert sums["bw_fraction"] == 1.0


def test_a_method_faster_than_every_reference_reads_above_one():
    sums = method("sum", 1000, [1.0, 1.0, 1.0], reference=True)
    kernel = method("kernel", 1000, [0.5, 2.0, 0.8])
    common.bandwidth_fractions([sums, kernel])
    assert kernel["bw_fraction"] == pytest.approx(1.25)  # median of 2.0, 0.5, 1.25


def test_rounds_without_the_full_compute_are_left_out_of_the_full_fraction():
    # in round 2 the compute probe runs at half its best rate: the host took a core
    sums = method("sum", 1000, [1.0, 1.0, 1.0], reference=True)
    probe = {"name": "probe", "bytes": 100, "seconds": [1.0, 2.0, 1.0 / 0.8], "probe": True}  # 0.8: its usual spread
    kernel = method("kernel", 1000, [1.0 / 0.9, 2.0, 1.0 / 0.96])  # 0.9, 0.5, 0.96 of the ceiling
    result = common.bandwidth_fractions([sums, probe, kernel])
    assert result["compute"] == pytest.approx([1.0, 0.5, 0.8])
    assert kernel["bw_fraction"] == pytest.approx(0.9)  # median of all three rounds
    assert kernel["bw_fraction_full"] == pytest.approx(0.93)  # median of rounds 1 and 3


def test_without_a_compute_probe_there_is_no_full_fraction():
    sums = method("sum", 1000, [1.0, 1.0], reference=True)
    kernel = method("kernel", 1000, [1.0, 2.0])
    assert "compute" not in common.bandwidth_fractions([sums, kernel])
    assert "bw_fraction_full" not in kernel

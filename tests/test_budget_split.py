"""The bits budget split: the second split on the options a codec narrows each calibrated layer to."""

from dataclasses import dataclass

import numpy as np

from bie_compiler.codecs import budget_split, feedback


@dataclass(frozen=True)
class Budget:
    bits_per_weight: float


# per layer (choice, bits, distortion), fewest bits first: "a" wins on distortion, "b" is what feedback prefers
OPTIONS = [(("a", 1), 100, 0.5), (("b", 1), 110, 0.6), (("a", 2), 200, 0.1), (("b", 2), 210, 0.2)]


def options(weight, config, calibration):
    return OPTIONS


def resolved(config, choice):
    return choice


def only_b(weight, config, calibration, opts, choice):
    assert opts == OPTIONS and choice == ("a", 2) and calibration is not None
    return [o for o in opts if o[0][0] == "b"]


def test_a_narrowed_layer_is_split_again_on_its_narrowed_options():
    matrices = {"x": np.zeros((10, 10), np.float32), "y": np.zeros((10, 10), np.float32)}
    configs = {n: Budget(2.1) for n in matrices}  # 210 bits per layer: each layer's ("a", 2) fits
    calibrations = {n: feedback.Calibration(np.eye(10), 10) for n in matrices}
    assert budget_split.plan("t", matrices, configs, None, options, resolved) == {"x": ("a", 2), "y": ("a", 2)}
    narrowed = budget_split.plan("t", matrices, configs, calibrations, options, resolved, narrow=only_b)
    assert narrowed == {"x": ("b", 2), "y": ("b", 2)}

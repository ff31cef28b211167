"""A bits budget split over a model's layers: each layer's choice of precision with the least total distortion.

Codecs' ``plan`` hooks measure, per layer, each precision they offer as (bits it costs, distortion it causes:
:func:`.feedback.distortion`) and hand the table here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import numpy as np

from ..errors import CodecError
from .parallel import SERIAL, Workers
from .stored import LazyMapping, StoredMatrix


def plan(codec: str, matrices: Mapping[str, np.ndarray | StoredMatrix], configs: dict, calibrations: dict | None,
         options: Callable[[np.ndarray, object, object], list], resolved: Callable[[object, int], object],
         workers: Workers = SERIAL, coded_bits: Callable[[np.ndarray, object, object], int] | None = None,
         narrow: Callable[[np.ndarray, object, object, list, object], list] | None = None) -> dict:
    """Per-layer configs: the layers whose config sets ``bits_per_weight`` split that budget, the others kept.

    ``options(weight, config, calibration or None)``: the layer's table for :func:`allocate`, measured by
    ``workers`` (a module-level function: it is pickled to them); ``resolved(config, choice)``: the config
    fixing that choice (and no budget, so re-encoding from it reproduces the layer). Layers sharing a budget
    are weighed by their sensitivities only when ``calibrations`` has every one of them (else the units would
    differ between layers). ``matrices`` may read each matrix when it is asked for, or name a stored one
    that the worker measuring it reads.

    ``coded_bits(weight, resolved config, calibration)``: the bits of the layer's encoding as ``encode`` makes it
    with that calibration. Given, and the layers calibrated, the split is made to fit what error feedback
    actually codes (:func:`fit`): the options' sizes are measured on round-to-nearest codes, which entropy-code
    smaller than the feedback's. Each calibrated matrix is then read a second time.

    ``narrow(weight, config, calibration, options, choice)``: the layer's options a codec keeps once the first
    split chose ``choice`` for it, the calibrated layers only (e.g. the kinds of coding of the options compared
    with error feedback, which the round-to-nearest table cannot see); the split is then made again on them.
    """
    out = dict(configs)
    calibrations = calibrations or {}
    # the layers' sizes, for the workers to measure the largest first (a lazy mapping's without reading it)
    layer_sizes = matrices.sizes if isinstance(matrices, LazyMapping) else {n: m.size for n, m in matrices.items()}
    for budget in sorted({c.bits_per_weight for c in configs.values() if c.bits_per_weight}):
        names = [n for n, c in configs.items() if c.bits_per_weight == budget]
        measured = all(n in calibrations for n in names)
        sizes = {}

        def task(n: str) -> tuple:  # each matrix read once, when its turn comes
            matrix = matrices[n]
            sizes[n] = matrix.size
            return matrix, configs[n], calibrations[n] if measured else None

        sized = {n: layer_sizes[n] for n in names} if layer_sizes else None
        table = workers.map(options, LazyMapping(names, task, sized))
        chosen = allocate(codec, table, budget, sum(sizes.values()))
        if narrow is not None and measured:
            table = workers.map(narrow, LazyMapping(names, lambda n: (
                matrices[n], configs[n], calibrations[n], table[n], chosen[n])))
            chosen = allocate(codec, table, budget, sum(sizes.values()))
        if coded_bits is not None and measured:
            def measure(choice: dict[str, int]) -> dict[str, int]:
                return workers.map(coded_bits, LazyMapping(choice, lambda n: (
                    matrices[n], resolved(configs[n], choice[n]), calibrations[n])))

            chosen = fit(codec, table, chosen, budget * sum(sizes.values()), measure)
        for name in names:
            out[name] = resolved(configs[name], chosen[name])
    return out


def fit(codec: str, options: dict[str, list], chosen: dict[str, int], budget_bits: float,
        measure: Callable[[dict[str, int]], dict[str, int]]) -> dict[str, int]:
    """``chosen`` (a choice per layer from ``options``, as :func:`allocate` takes them) lowered until the
    encodings' bits as ``measure({layer: choice})`` finds them fit ``budget_bits``, then raised where what is left
    of the budget allows.

    Each step down takes the cheaper option losing the least distortion per bit it saves (the saving scaled by
    the layer's measured bits over its planned ones), and measures that layer again. The last step down of a
    whole option can leave much of the budget unspent; each step up then takes the option saving the most
    distortion per bit it is expected to cost among those expected to fit, measured, and undone if it does not.
    """
    actual = measure(chosen)
    position = {n: [o[0] for o in opts].index(chosen[n]) for n, opts in options.items()}
    while sum(actual.values()) > budget_bits:
        best = None
        for n, o in options.items():
            i = position[n]
            for j in range(len(o)):
                saved = (o[i][1] - o[j][1]) * actual[n] / o[i][1]
                if saved > 0 and (best is None or (o[j][2] - o[i][2]) / saved < best[0]):
                    best = (o[j][2] - o[i][2]) / saved, n, j
        if best is None:
            over = sum(actual.values()) / budget_bits
            raise CodecError(f"{codec}: the encodings of the smallest choices take {over:.3f} times the budget")
        _, n, j = best
        position[n] = j
        actual.update(measure({n: options[n][j][0]}))
    tried = set()
    while True:
        spare, best = budget_bits - sum(actual.values()), None
        for n, o in options.items():
            i = position[n]
            for j in range(len(o)):
                cost = (o[j][1] - o[i][1]) * actual[n] / o[i][1]
                gain = o[i][2] - o[j][2]
                if (n, j) not in tried and 0 < cost <= spare and gain > 0 and (best is None or gain / cost > best[0]):
                    best = gain / cost, n, j
        if best is None:
            break
        _, n, j = best
        tried.add((n, j))
        raised = measure({n: options[n][j][0]})
        if sum(actual.values()) - actual[n] + raised[n] <= budget_bits:
            position[n], actual[n] = j, raised[n]
    return {n: options[n][i][0] for n, i in position.items()}


def allocate(codec: str, options: dict[str, list], budget: float, num_weights: int) -> dict[str, int]:
    """One choice per layer from ``options`` ({layer: [(choice, bits, distortion), ...] fewest bits first}):
    the least total distortion with at most ``budget * num_weights`` bits.

    A Lagrangian sweep picks the least ``distortion + lambda * bits`` per layer for the smallest lambda that
    fits, then the bits left are spent greedily on the upgrade saving the most distortion per bit.
    """
    budget_bits = budget * num_weights
    smallest = sum(opts[0][1] for opts in options.values())
    if smallest > budget_bits:
        raise CodecError(
            f"{codec}: a budget of {budget:g} bits/weight is below the smallest coding of these {len(options)} "
            f"layer(s), {smallest / num_weights:.3f} bits/weight (overheads included)"
        )

    def pick(lam: float) -> dict[str, int]:
        return {n: min(range(len(o)), key=lambda i: (o[i][2] + lam * o[i][1], o[i][1])) for n, o in options.items()}

    def bits(choice: dict[str, int]) -> int:
        return sum(options[n][i][1] for n, i in choice.items())

    lo, hi = 0.0, 1.0  # lam = 0: best distortion regardless of bits; raise hi until the choice fits
    while bits(pick(hi)) > budget_bits:
        hi *= 4
    if bits(pick(lo)) <= budget_bits:
        hi = lo
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if bits(pick(mid)) <= budget_bits else (mid, hi)
    choice = pick(hi)
    spare = budget_bits - bits(choice)
    while True:  # spend what is left on the upgrade saving the most distortion per bit
        best = None
        for n, o in options.items():
            for i in range(len(o)):
                extra, saved = o[i][1] - o[choice[n]][1], o[choice[n]][2] - o[i][2]
                if 0 < extra <= spare and saved > 0 and (best is None or saved / extra > best[0]):
                    best = saved / extra, n, i
        if best is None:
            break
        _, n, i = best
        spare -= options[n][i][1] - options[n][choice[n]][1]
        choice[n] = i
    return {n: options[n][i][0] for n, i in choice.items()}

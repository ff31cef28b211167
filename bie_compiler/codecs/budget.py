"""Mixed precision within a bits/weight budget: one option per layer, least total distortion, measured sizes.

A Lagrangian sweep picks the cheapest-distortion option per layer within the budget, then the bits left
are spent greedily on the best ratio of distortion saved per bit. Used by the codecs' ``plan`` hooks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..errors import CodecError


def plan(matrices: dict[str, np.ndarray], configs: dict, options_of: Callable[[np.ndarray, object], list],
         choice_field: str, codec: str) -> dict:
    """Per-layer configs with ``choice_field`` set for every layer given a ``bits_per_weight`` budget (its
    field 0); layers with the field set are kept. Layers sharing one budget are planned together from
    ``options_of(matrix, config)``: (choice, coded bits, distortion) for each choice."""
    out = dict(configs)
    unplanned = {n: c for n, c in configs.items() if c.bits_per_weight and not getattr(c, choice_field)}
    for bits in sorted({c.bits_per_weight for c in unplanned.values()}):
        names = [n for n, c in unplanned.items() if c.bits_per_weight == bits]
        options = {name: options_of(matrices[name], configs[name]) for name in names}
        chosen = allocate(options, bits, sum(matrices[n].size for n in names), codec)
        for name in names:
            out[name] = replace(configs[name], **{choice_field: chosen[name]}, bits_per_weight=0.0)
    return out


def allocate(options: dict[str, list], budget: float, num_weights: int, codec: str) -> dict[str, int]:
    """The choice per layer (the first field of its option) with the least total distortion within
    ``budget * num_weights`` coded bits; ``options``: per layer, (choice, coded bits, distortion) tuples."""
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


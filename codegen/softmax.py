"""Softmax over the last axis with its reductions written as vector-lane partial results.

TOPI's softmax reduces each row in one scalar chain. Here the max and the sum
first reduce ``LANES`` interleaved partial results (lane ``l`` takes elements
``l, l + LANES, ...``; lanes past a row's end contribute the identity), which
the row-reduction schedule vectorizes, then those ``LANES`` values pairwise (a
tree four steps deep, where a chain of 16 waits on each step's latency). Written
in the compute rather than by ``rfactor`` because the row length may be
symbolic: the split's tail needs its bounds test in the computation itself. The
exponentials are scaled by the reciprocal of their sum (one division per row).

The exponentials are computed twice, once for the sum and once for the output,
each read by one block only, so the row-reduction rule inlines them and a row
makes three passes over its input (in L1) in one parallel loop. Computed once,
they are a whole-tensor buffer (a symbolic row length rules out a row buffer),
written and read back from memory by a second parallel loop: the exponentials'
polynomial costs less than that round trip.
"""

from __future__ import annotations

from tvm import te, tirx, topi

from .schedules.elementwise import LANES


def softmax(x: te.Tensor) -> te.Tensor:
    """``softmax(x, axis=-1)``, exp as TOPI's ``fast_exp``."""
    *rows, n = x.shape
    dtype = x.dtype
    chunks = (n + LANES - 1) // LANES

    def partial(value, identity, combine, name):
        chunk = te.reduce_axis((0, chunks), "chunk")

        def element(*i):
            j = i[-1] + chunk * LANES
            return te.if_then_else(j < n, value(*i[:-1], j), identity)

        return te.compute((*rows, LANES), lambda *i: combine(element(*i), axis=chunk), name=f"{name}_lanes")

    def lanes_combined(partials, combine):
        return lambda *r: _pairwise([partials[(*r, lane)] for lane in range(LANES)], combine)

    minimum = tirx.min_value(dtype)
    max_lanes = partial(lambda *i: x[i], minimum, te.max, "row_max")
    row_max = te.compute(tuple(rows), lanes_combined(max_lanes, tirx.max), name="row_max")

    def exp():
        return topi.fast_exp(te.compute(x.shape, lambda *i: x[i] - row_max[i[:-1]], name="delta"))

    summed = exp()
    sum_lanes = partial(lambda *i: summed[i], tirx.const(0, dtype), te.sum, "row_sum")
    add = lanes_combined(sum_lanes, lambda a, b: a + b)
    inverse = te.compute(tuple(rows), lambda *r: tirx.const(1, dtype) / add(*r), name="row_inverse")
    scaled = exp()
    return te.compute(x.shape, lambda *i: scaled[i] * inverse[i[:-1]], name="softmax")


def _pairwise(values: list, combine):
    """``values`` combined as a balanced tree: ``combine(v[i], v[i + half])`` halving the list each step."""
    while len(values) > 1:
        half = len(values) // 2
        values = [combine(values[i], values[i + half]) for i in range(half)]
    return values[0]

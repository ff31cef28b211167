"""Decode kernels: the dense float32 weight of a matmul or conv computed from its encoding, once per call.

Above one row of activations an encoded matmul is compute-bound, and a conv
always is: there the pass decodes the weight into the layout of the plain op
(``matmul(x, W)`` with ``W`` [K, N]; ``conv2d(x, W)`` with ``W`` OIHW, any
groups) and leaves the multiplication to the dense schedules. A decode kernel
is ``f(x, *constants, W)``: it takes the op's activation ``x`` without reading
it, so that constant folding, which pre-computes any ``call_tir`` of constants
only, cannot store the dense weight in the artefact again.

Codecs whose weights decode element by element give a TE function
``weight(n, kk)`` over their ``[N, K]`` matrix (:func:`elementwise`); the
others (index lists, tANS streams) write TIR that stores weight ``(n, kk)`` at
``layout.flat(n, kk)`` of the output (:class:`Layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, tirx

from bie_compiler.codecs.base import PACK_LANES


@dataclass(frozen=True)
class Layout:
    """Where weight ``(n, kk)`` of the codec's matrix [N, K] goes in the dense op's weight.

    Matmul: ``[K, N]``. Conv: OIHW ``[O, I / groups, kh, kw]``, whose codec
    matrix runs K over (kh, kw, in-channel), in-channel fastest.
    """

    shape: tuple[int, ...]
    conv: bool

    @staticmethod
    def matmul(n: int, k: int) -> "Layout":
        return Layout((k, n), conv=False)

    @staticmethod
    def conv2d(kernel_shape: tuple[int, int, int, int]) -> "Layout":
        return Layout(tuple(kernel_shape), conv=True)

    def source(self, *index):
        """(n, kk) of the codec matrix that output element ``index`` holds."""
        if not self.conv:
            kk, n = index
            return n, kk
        _, i, _, kw = self.shape
        o, c, r, s = index
        return o, (r * kw + s) * i + c

    def flat(self, n, kk):
        """The row-major offset in the output of codec weight ``(n, kk)``."""
        if not self.conv:
            return kk * self.shape[1] + n
        _, i, kh, kw = self.shape
        c, rs = kk % i, kk // i
        return ((n * i + c) * kh + rs // kw) * kw + rs % kw

    @property
    def size(self) -> int:
        total = 1
        for d in self.shape:
            total *= d
        return total


def activation(ndim: int) -> te.Tensor:
    """The op's activation as a decode kernel takes it (unread): any shape of its rank."""
    return te.placeholder(tuple(te.var(f"d{i}", "int64") for i in range(ndim)), "float32", "x")


def elementwise(weight, holders: list[te.Tensor], layout: Layout, x_ndim: int) -> tirx.PrimFunc:
    """Scheduled ``f(x, *holders, W)`` with ``W[index] = weight(*layout.source(index))``.

    Schedule: the output as one flat loop, 16-lane vectors of it in parallel
    (16 divides every layout's size here but the odd conv; then a smaller power of two).
    """
    x = activation(x_ndim)
    out = te.compute(layout.shape, lambda *index: weight(*layout.source(*index)), name="decoded")
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    block = sch.get_sblock("decoded")
    fused = sch.fuse(*sch.get_loops(block))
    lanes = next(v for v in (PACK_LANES, 8, 4, 2, 1) if layout.size % v == 0)
    outer, inner = sch.split(fused, [None, lanes])
    sch.parallel(outer)
    if lanes > 1:
        sch.vectorize(inner)
    return sch.mod["main"]

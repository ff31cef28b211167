"""The matmul of a weight left dense (a fallback layer): the register-tiled GEMM over a packed weight.

The weight is packed at compile time into panels of ``COLS`` output channels,
each K-major ([N / COLS, K, COLS]), so the micro-kernel of
:mod:`..schedules.matmul` reads one contiguous ``COLS``-wide vector per k. The
same packed constant serves one row (a GEMV: one-row tiles, still a contiguous
stream through the weight) and many rows (8-row register tiles); the pass
dispatches on the row count.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from ..kernel_registry import KernelCall, finish
from ..schedules import matmul

BLOCK = "dense"


def pack(weight: np.ndarray, cols: int = matmul.COLS) -> np.ndarray:
    """``weight`` [N, K] as [ceil(N / cols), K, cols]: each panel of ``cols`` channels K-major, zero-padded."""
    n, k = weight.shape
    panels = -(-n // cols)
    padded = np.zeros((panels * cols, k), weight.dtype)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(panels, cols, k).transpose(0, 2, 1))


def plain(shape: list, k: int) -> tirx.PrimFunc:
    """Unscheduled ``f(x [*lead, K], packed [N / COLS, K, COLS], out [*lead, N])``, ``out = x @ weight.T``
    (``packed = pack(weight)``; ``shape``: the product's, [*lead, N]), block ``BLOCK``."""
    cols = matmul.COLS
    packed = te.placeholder((-(-int(shape[-1]) // cols), k, cols), "float32", "packed")
    shape, k = _one_index_type(shape, k)
    x = te.placeholder([*shape[:-1], k], "float32", "x")
    rk = te.reduce_axis((0, k), "rk")
    out = matmul.padded_product(
        shape, lambda *i: te.sum(x[(*i[:-1], rk)] * packed[i[-1] // cols, rk, i[-1] % cols], axis=rk), BLOCK
    )
    return te.create_prim_func([x, packed, out])


def _one_index_type(shape: list, k: int) -> tuple[list, int | tirx.IntImm]:
    """``shape`` and ``k`` with every static dim in the index type of the symbolic ones (int64 as Relax gives them),
    so that the register tile's accumulator is indexed by tile (:func:`..schedules.matmul.schedule_matmul`): with
    int32 columns under int64 rows it stayed a [rows, N] buffer, allocated per call. Not where N is not whole tiles
    and the rows have several dims: the tail tile is then peeled, which needs int32 columns."""
    types = {str(d.ty) for d in shape[:-1] if isinstance(d, tirx.Var)}
    n = int(shape[-1])
    if types != {"int64"} or (n % matmul.COLS and len(shape) != 2):
        return shape, k
    return [d if isinstance(d, tirx.Var) else tirx.IntImm("int64", int(d)) for d in shape], tirx.IntImm("int64", k)


def gemm(n: int, k: int, rows: int = matmul.ROWS) -> tirx.PrimFunc:
    """``f(x [m, K], packed [N / COLS, K, COLS], out [m, N])`` (:func:`plain`) scheduled in ``rows``-row tiles."""
    sch = s_tir.Schedule(plain([te.var("m", "int64"), n], k))
    sch.work_on("main")
    panels = matmul.gemv_panels(n) if rows == 1 else 1
    matmul.schedule_matmul(sch, sch.get_sblock(BLOCK), rows=rows, panels=panels)
    return sch.mod["main"]


def has_dense_kernel(target: tvm.target.Target) -> bool:
    """Whether matmul weights left dense get :func:`dense_kernel` on ``target`` (the CPU; dlight's GPU rules serve)."""
    return target.kind.name == "llvm"


def dense_kernel(weight: np.ndarray, target: tvm.target.Target) -> KernelCall:
    """The kernels of a matmul whose weight stays dense (``weight`` [N, K]): one row, and several rows."""
    if not has_dense_kernel(target):
        raise NotImplementedError(f"no dense matmul kernel for {target.kind.name}")
    n, k = weight.shape
    packed = [pack(weight)]
    many_rows = KernelCall("dense_gemm", finish(gemm(n, k), "dense_gemm"), packed)
    return KernelCall("dense_gemv", finish(gemm(n, k, rows=1), "dense_gemv"), packed, many_rows)

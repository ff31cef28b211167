"""Weight uses: the matmuls and convs of a Relax module whose weight is a constant, matched with ``relax.dpl``.

Matched: ``matmul(x, W)`` (ONNX MatMul), ``matmul(x, permute_dims(W))`` with a
2-D transpose (Gemm with transB = 1; its bias add stays a separate op),
``conv2d(x, W)`` and ``take(W, x, axis=0)`` (ONNX Gather of a table's rows), ``W`` a constant. Weights are known by the names the caller
gives their constants (the ONNX initializer names, see ``frontend.bind_weights``).
The collecting walk and the rewriting passes share the pattern and the matcher,
so they agree on what a weight use is.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from functools import reduce
from operator import mul
from typing import Callable, Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from bie_compiler.codecs.layout import codec_matrix
from bie_compiler.codecs.stored import StoredMatrix, StoredWeight
from bie_compiler.codegen import ConvSpec

_X, _W = wildcard(), is_const()
_TRANSPOSED = is_op("relax.permute_dims")(_W)
WEIGHT_CALL = (is_op("relax.matmul")(_X, _W | _TRANSPOSED) | is_op("relax.nn.conv2d")(_X, _W)
               | is_op("relax.take")(_W, _X))


@dataclass
class WeightUse:
    """A constant weight feeding a matmul or conv, in its ONNX layout."""

    name: str
    op: str  # "matmul", "conv2d" or "gather"
    value: tvm.runtime.Tensor  # the constant's tensor: its values are copied out only when asked for
    transposed: bool = False  # matmul whose ONNX weight is [N, K] (Gemm transB=1)
    conv: ConvSpec | None = None  # of a conv in NCHW/OIHW layout
    unsupported: str | None = None  # why no codec can take it, on any target
    stored: StoredWeight | None = None  # where its values lie in a data file, read from there (external data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(str(self.value.dtype))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def groups(self) -> int:
        return self.conv.groups if self.conv else 1

    @property
    def rows(self) -> int:
        """N, the rows of :meth:`matrix` (a matmul's outputs, a conv's output channels, a table's rows)."""
        return self.shape[0] if self.op != "matmul" or self.transposed else self.shape[1]

    def weight(self) -> np.ndarray:
        """The weight's values in its ONNX layout (a copy: a large model holds each weight once, in its constant
        or its data file)."""
        return self.stored.array() if self.stored is not None else self.value.numpy()

    def matrix(self) -> np.ndarray:
        """The weight as codecs take it, [N, K] (``codecs.layout``)."""
        return codec_matrix(self.weight(), self.op, self.transposed)

    def task_matrix(self) -> np.ndarray | StoredMatrix:
        """:meth:`matrix` as an encoding task takes it: a stored weight is read by the process encoding it."""
        return StoredMatrix(self.stored, self.op, self.transposed) if self.stored is not None else self.matrix()


@dataclass
class Match:
    """One matched call: its activation, the weight constant, and what the weight is."""

    call: relax.Call
    x: relax.Expr
    constant: tvm.ir.GenericConst
    use: WeightUse


def _conv_spec(call: relax.Call) -> ConvSpec | None:
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW" or a.out_layout != "NCHW":
        return None
    return ConvSpec(
        strides=tuple(int(v) for v in a.strides),
        padding=tuple(int(v) for v in a.padding),
        dilation=tuple(int(v) for v in a.dilation),
        kernel_shape=tuple(int(d) for d in call.args[1].ty.shape.values),
        groups=int(a.groups),
    )


def match(call: relax.Call, matches: dict, names: Mapping) -> Match | None:
    """The weight use of a call ``WEIGHT_CALL`` matched, or None (a permute_dims that is not a 2-D transpose).
    ``names``: the weights' names by constant."""
    constant = matches[_W]
    transposed = _TRANSPOSED in matches
    if transposed:
        axes = matches[_TRANSPOSED].attrs.axes
        if len(constant.value.shape) != 2 or (axes is not None and [int(a) for a in axes] != [1, 0]):
            return None
    op = {"relax.nn.conv2d": "conv2d", "relax.take": "gather"}.get(call.op.name, "matmul")
    if op == "gather" and (len(constant.value.shape) != 2 or int(call.attrs.axis) != 0):
        return None  # not rows of a table
    name = names[constant]
    use = WeightUse(name, op, constant.value, transposed, _conv_spec(call) if op == "conv2d" else None)
    x_dtype = matches[_X].ty.dtype
    if op == "gather":
        if use.dtype != np.float32 or x_dtype not in ("int64", "int32"):
            use.unsupported = f"dtype {use.dtype} table, {x_dtype} indices (only float32 tables are encoded)"
    elif x_dtype != "float32" or use.dtype != np.float32:
        use.unsupported = f"dtype {x_dtype}/{use.dtype} (only float32 is encoded)"
    elif op == "matmul" and len(use.shape) != 2:
        use.unsupported = f"{len(use.shape)}-D weight (only 2-D matmul weights are encoded)"
    elif op == "conv2d" and use.conv is None:
        use.unsupported = "conv layout other than NCHW/OIHW"
    return Match(call, matches[_X], constant, use)


def rewrite_weight_calls(mod: tvm.IRModule, rewrite: Callable[[Match], relax.Expr | None],
                         names: Mapping) -> tvm.IRModule:
    """Every Relax function of ``mod`` with each weight use ``m`` replaced by ``rewrite(m)`` (None: kept)."""
    out = mod.clone()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            def visit(call, matches):
                found = match(call, matches, names)
                new = rewrite(found) if found is not None else None
                return call if new is None else new

            out[gv] = rewrite_call(WEIGHT_CALL, visit, func)
    return out


class _Names(dict):
    """Constants by name, and ``unnamed_weight_<i>`` for a constant the importer made itself."""

    def __missing__(self, constant) -> str:
        self[constant] = name = f"unnamed_weight_{sum(n.startswith('unnamed_weight_') for n in self.values())}"
        return name


def collect_weight_uses(mod: tvm.IRModule, names: Mapping) -> tuple[list[WeightUse], dict]:
    """The weight uses of ``mod``, once per weight, in the order the calls run, and the names of their
    constants (``names`` and a made-up name for each constant it lacks)."""
    order: dict = {}  # call -> its position (the matcher visits in an order of its own)
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: order.setdefault(e, len(order)))
    found: list[Match] = []
    names = _Names(names)
    rewrite_weight_calls(mod, found.append, names)
    uses: dict[str, WeightUse] = {}
    for m in sorted(found, key=lambda m: order.get(m.call, len(order))):
        first = uses.setdefault(m.use.name, m.use)
        if (first.op, first.transposed) != (m.use.op, m.use.transposed) and not first.unsupported:
            first.unsupported = "used in two layouts (e.g. by a MatMul and a Gemm with transB=1)"
    return list(uses.values()), dict(names)


def as_index_rows(ids: relax.Expr, k: int,
                   call_1d: Callable[[relax.Expr, relax.TensorType], relax.Expr]) -> relax.Expr:
    """``call_1d(ids1, out_ty)`` on indices of any shape flattened to ``ids1 [M]`` (int64), the result ``[M, k]``
    reshaped to ``[*ids.shape, k]``."""
    lead = list(ids.ty.shape.values)
    rows = reduce(mul, lead, 1)
    flat = relax.op.reshape(ids, [rows])
    if ids.ty.dtype != "int64":
        flat = relax.op.astype(flat, "int64")
    return relax.op.reshape(call_1d(flat, relax.TensorType([rows, k], "float32")), [*lead, k])


def as_rows(x: relax.Expr, n: int, call_2d: Callable[[relax.Expr, relax.TensorType], relax.Expr]) -> relax.Expr:
    """``call_2d(x2, out_ty)`` on ``x [..., K]`` with its leading dims flattened into the rows of ``x2 [M, K]``,
    the result ``[M, n]`` reshaped back to ``[..., n]``."""
    *lead, k = x.ty.shape.values
    rows = reduce(mul, lead)
    out_ty = relax.TensorType([rows, n], "float32")
    if len(lead) == 1:
        return call_2d(x, out_ty)
    return relax.op.reshape(call_2d(relax.op.reshape(x, [rows, k]), out_ty), [*lead, n])

"""Reading a Relax function's calls of PrimFuncs: the parts of a ``call_tir``, how often each variable is read,
and whether a called kernel only reshapes. The fusion passes of this package rewrite such calls.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from .kernel_registry import is_per_call_kernel


def call_tir_parts(expr):
    """``(callee, args, output type)`` of a ``call_tir`` of a PrimFunc, else None."""
    if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")) \
            and isinstance(expr.args[1], relax.Tuple):
        return expr.args[0], list(expr.args[1].fields), expr.ty_args[0] if expr.ty_args else None
    return None


def variable_uses(func: relax.Function) -> dict:
    """How many times each variable of ``func``'s body is read."""
    uses = {}

    def count(expr):
        if isinstance(expr, relax.Var):
            uses[expr] = uses.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, count)
    return uses


def is_reshape(func) -> bool:
    """A PrimFunc (not a codec's kernel) that only moves its input's elements as a reshape would."""
    return isinstance(func, tirx.PrimFunc) and not is_per_call_kernel(func) and relax.analysis.has_reshape_pattern(func)

"""Reading a Relax function's calls of PrimFuncs: the parts of a ``call_tir``, how often each variable is read,
and whether a called kernel only reshapes. The fusion passes of this package rewrite such calls.
"""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=1024)  # asked of each kernel at each of its calls, by each fusion pass: 0.5 s a compile
def is_reshape(func) -> bool:
    """A PrimFunc (not a codec's kernel) that only moves its input's elements as a reshape would."""
    return isinstance(func, tirx.PrimFunc) and not is_per_call_kernel(func) and relax.analysis.has_reshape_pattern(func)


def producer(var, uses: dict, lookup_binding, mod: tvm.IRModule):
    """The value that ``var`` holds through single-use aliases and reshapes (:func:`is_reshape` kernels of ``mod``),
    else None (a variable read more than once, or a parameter, on the way); ``lookup_binding``: a mutator's."""
    while isinstance(var, relax.Var) and uses.get(var, 0) == 1:
        value = lookup_binding(var)
        call = call_tir_parts(value)
        if isinstance(value, relax.Var):
            var = value
        elif call is not None and call[0] in mod and len(call[1]) == 1 and is_reshape(mod[call[0]]):
            var = call[1][0]
        else:
            return value
    return None

"""Lift the constants of a lowered module into parameters of ``main``, so they can live outside the library.

Run last, after constant folding and fusion (folding needs the weights as constants, and schedules may
have packed them): every constant call argument of ``main`` of at least ``min_bytes`` becomes a
parameter after the inputs, in order of first use; small ones (shapes, scalars) stay inline.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _Lifter(PyExprMutator):
    def __init__(self, mod, min_bytes: int):
        super().__init__(mod)
        self.min_bytes = min_bytes
        self.lifted: list[tuple[relax.Var, np.ndarray]] = []
        self.by_constant: dict = {}

    def visit_generic_const_(self, const):
        array = const.value.numpy()
        if array.nbytes < self.min_bytes:
            return const
        if const not in self.by_constant:
            var = relax.Var(f"weight{len(self.lifted)}", const.ty)
            self.by_constant[const] = var
            self.lifted.append((var, array))
        return self.by_constant[const]


def lift_constants(mod: tvm.IRModule, min_bytes: int = 1024) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """``mod`` with ``main``'s large constants as trailing parameters, and those constants in order."""
    main = mod["main"]
    lifter = _Lifter(mod, min_bytes)
    body = lifter.visit_expr(main.body)
    if not lifter.lifted:
        return mod, []
    num_input = len(main.params)
    params = [*main.params, *(var for var, _ in lifter.lifted)]
    lifted = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs, main.span)
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions_items()))
    mod["main"] = lifted.with_attr("num_input", num_input)
    return mod, [array for _, array in lifter.lifted]

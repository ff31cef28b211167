"""At one token, a kernel that only moves unit axes (a transpose of [1, 1, 12, 32] to [1, 12, 1, 32]) is a view.

The attention of a transformer transposes its heads in and out of the sequence axis: at one token the
elements stay where they are, but the transpose kernels, written for any sequence length, copy them (a
vector of 16 lanes with one of them used, per element). In ``main`` specialized for unit dimensions
(:mod:`.unit_dims`) the shapes are static: a single-input kernel whose loop nest, at those shapes, reads
each element at the flat position it writes (``relax.analysis.has_reshape_pattern``) is replaced by a
reshape, which the VM runs as a view of its input (no call, no copy).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .unit_dims import UNIT_DIMS
from .kernel_registry import is_per_call_kernel
from .relax_calls import call_tir_parts
from .unit_epilogues import static_shape, with_static_shapes


@mutator
class _Views(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod, self.replaced = mod, 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        found = call_tir_parts(call)
        if found is None or len(found[1]) != 1 or found[0] not in self.mod:
            return call
        func, (arg,), out_ty = self.mod[found[0]], found[1], found[2]
        shapes = [static_shape(arg), static_shape(out_ty)]
        if not isinstance(func, tirx.PrimFunc) or is_per_call_kernel(func) or None in shapes or len(func.params) != 2:
            return call
        if not relax.analysis.has_reshape_pattern(with_static_shapes(func, shapes)):
            return call
        self.replaced += 1
        return relax.op.reshape(arg, shapes[1])


@tvm.transform.module_pass(opt_level=0, name="UnitViews")
def unit_views(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: in the unit-dimensions ``main`` (when there is one), each single-input kernel that keeps its
    elements in place at those shapes replaced by a reshape (see the module docstring)."""
    if UNIT_DIMS not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    gv = mod.get_global_var(UNIT_DIMS)
    views = _Views(mod)
    func = views.visit_expr(mod[gv])
    if not views.replaced:
        return mod
    mod = mod.clone()
    mod[gv] = func
    return mod

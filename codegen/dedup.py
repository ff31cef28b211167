"""Structurally identical PrimFuncs compiled once.

Every weight left dense gets its own kernels (named after its layer), but
layers of one shape get the same code: a transformer's 36 dense kernels are
6 distinct functions. LLVM compiling each copy took most of the build.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

_NAMING_ATTRS = ("global_symbol", "bie.layer")  # differ between copies without changing the code


def _code(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    for attr in _NAMING_ATTRS:
        if func.attrs is not None and attr in func.attrs:
            func = func.without_attr(attr)
    return func


@mutator
class _Redirect(PyExprMutator):
    def __init__(self, mod, targets: dict):
        super().__init__(mod)
        self.targets = targets

    def visit_global_var_(self, gv):
        return self.targets.get(gv, gv)


@tvm.transform.module_pass(opt_level=0, name="DeduplicatePrimFuncs")
def deduplicate_prim_funcs(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: calls of a PrimFunc identical to an earlier one call the earlier one; the copy is removed."""
    kept: dict[int, list] = {}
    duplicate_of = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        code = _code(func)
        bucket = kept.setdefault(tvm_ffi.structural_hash(code), [])
        original = next((g for g, c in bucket if tvm_ffi.structural_equal(code, c)), None)
        if original is None:
            bucket.append((gv, code))
        else:
            duplicate_of[gv] = original
    if not duplicate_of:
        return mod
    served: dict = {}  # kept kernel -> the layers of its removed copies, so reports can name them all
    for gv, original in duplicate_of.items():
        attrs = mod[gv].attrs
        if attrs is not None and _NAMING_ATTRS[1] in attrs:
            served.setdefault(original, []).append(str(attrs[_NAMING_ATTRS[1]]))
    redirect = _Redirect(mod, duplicate_of)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            redirect.builder_.update_func(gv, redirect.visit_expr(func))
    out = redirect.builder_.get()
    for gv in duplicate_of:
        del out[gv]
    for gv, layers in served.items():
        own = out[gv].attrs[_NAMING_ATTRS[1]] if _NAMING_ATTRS[1] in (out[gv].attrs or {}) else None
        out[gv] = out[gv].with_attr(_NAMING_ATTRS[1], ", ".join([str(own)] * (own is not None) + layers))
    return out

"""exp, erf, tanh, GELU and softmax as TOPI's vectorizable polynomial versions (``fast_exp`` and co.).

GELU is an op of its own in real exports (ONNX ``Gelu``, opset 20, as torch's dynamo exporter writes it),
which Relax legalizes straight to TIR's ``erf``: it is rewritten here as Relax legalizes it, with the
polynomial erf.

Softmax over the last axis is :mod:`.softmax`'s (reductions as vector-lane partial results), over the
input viewed as one axis of rows: rows indexed by several axes (batch, head, query) would be split back
into them by 64-bit divisions by symbolic extents in every row, a sizeable share of a short row's work.

LLVM turns a vector ``exp`` or ``erf`` into one libm call per lane; the
polynomials vectorize. Their error against float64 is about 1e-7 (exp, tanh)
and 3.3e-7 (erf) relative, inside our parity tolerances against onnxruntime.
This is Relax's ``FastMathTransform``, which fails on calls of a GlobalVar
(our dispatch functions), restricted to operator calls.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, tirx, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from . import softmax


def fast_gelu(x):
    """x (1/2 + erf(x / sqrt 2) / 2), as Relax legalizes ``nn.gelu``, with the polynomial erf."""
    half = tirx.const(0.5, x.dtype)
    return x * (half + topi.fast_erf(x * tirx.const(0.5 ** 0.5, x.dtype)) * half)


_FAST = {
    "relax.exp": topi.fast_exp,
    "relax.erf": topi.fast_erf,
    "relax.tanh": topi.fast_tanh,
    "relax.nn.gelu": fast_gelu,
}


@mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name in _FAST:
            return self.builder_.call_te(_FAST[name], call.args[0])
        if name == "relax.nn.softmax":
            x = call.args[0]
            if int(call.attrs.axis) in (-1, len(x.ty.shape) - 1):
                return self._softmax_over_rows(x)
            return self.builder_.call_te(topi.nn.fast_softmax, x, call.attrs.axis)
        return call

    def _softmax_over_rows(self, x: relax.Expr) -> relax.Expr:
        *rows, n = x.ty.shape
        if len(rows) > 1:
            flat = self.builder_.emit(relax.op.reshape(x, [math.prod(rows), n]))
            y = self.builder_.emit(self.builder_.call_te(softmax.softmax, flat, primfunc_name_hint="softmax"))
            return relax.op.reshape(y, x.ty.shape)
        return self.builder_.call_te(softmax.softmax, x, primfunc_name_hint="softmax")


@tvm.transform.module_pass(opt_level=0, name="FastMath")
def fast_math(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: every Relax function's exp, erf, tanh and softmax calls as fast polynomial kernels."""
    mutator_ = _FastMath(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator_.builder_.update_func(gv, mutator_.visit_expr(func))
    return mutator_.builder_.get()

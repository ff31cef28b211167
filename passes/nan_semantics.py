"""PropagateNaN: a ReLU that passes NaN through, as onnxruntime's does.

TVM lowers ``relu`` to ``max(x, 0)``, which LLVM compiles so that a NaN input comes out as 0: a NaN
that onnxruntime reports would vanish. This pass rewrites it into the select ``x <= 0 ? 0 : x``, which
keeps NaN and stays elementwise (it fuses into the producer's epilogue like the original). Run it
right after import. (ONNX Clip arrives from the importer as maximum/minimum kernels and still maps NaN
to its bounds; the README's security model says so.)
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


@tvm.transform.module_pass(opt_level=0, name="PropagateNaN")
class PropagateNaN:
    """Rewrite every ``relax.nn.relu`` of every Relax function into a NaN-preserving select."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        x = wildcard()

        def rewrite(call, matches):
            zero = relax.const(0, call.ty.dtype)
            return relax.op.where(relax.op.less_equal(matches[x], zero), zero, matches[x])

        out = mod.clone()
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                out[gv] = rewrite_call(is_op("relax.nn.relu")(x), rewrite, func)
        return out

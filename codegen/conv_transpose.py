"""A transposed conv whose kernel equals its stride (a learned 2x upsampling, as in PP-OCR's detector) as a 1x1
conv followed by a pixel shuffle.

Each input pixel then writes its own kernel-sized block of the output, nothing overlapping:
``out[n, o, y*s + i, x*s + j] = sum_c in[n, c, y, x] * w[c, o, i, j]``, a 1x1 conv to ``o * s * s`` channels
whose channels are moved into the blocks by a reshape and transpose. The 1x1 conv is the conv2d rule's GEMM;
legalized as it is, the transposed conv dilates its input with zeros and runs a dense conv over them, which no
rule schedules.
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax.expr_functor import PyExprMutator, mutator


def _is_pixel_shuffle(call: relax.Call) -> bool:
    """NCHW, no padding, groups 1, no dilation, a static kernel equal to the stride."""
    a = call.attrs
    w = call.args[1].ty
    if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "IOHW", "NCHW") or int(a.groups) != 1:
        return False
    if not isinstance(w, relax.TensorType) or w.shape is None or w.ndim != 4:
        return False
    kernel = [d for d in w.shape.values[2:]]
    return (all(isinstance(d, tvm.tirx.IntImm) for d in kernel) and [int(d) for d in kernel] == [int(s) for s in a.strides]
            and all(int(p) == 0 for p in [*a.padding, *a.output_padding]) and all(int(d) == 1 for d in a.dilation))


@mutator
class _ConvTransposeAsShuffle(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d_transpose" and _is_pixel_shuffle(call)):
            return call
        x, w = call.args
        n, _, h, width = x.ty.shape.values
        channels, out, kh, kw = w.ty.shape.values
        emit = self.builder_.emit
        weight = emit(relax.op.reshape(relax.op.permute_dims(w, [1, 2, 3, 0]), [out * kh * kw, channels, 1, 1]))
        y = emit(relax.op.nn.conv2d(x, weight, out_dtype=call.attrs.out_dtype))
        return self.builder_.call_te(_pixel_shuffle, y, out, kh, kw, primfunc_name_hint="pixel_shuffle")


def _pixel_shuffle(y: te.Tensor, out, kh, kw) -> te.Tensor:
    """[n, out * kh * kw, h, w] -> [n, out, h * kh, w * kw], channel (o, i, j) to pixel (y * kh + i, x * kw + j)."""
    n, _, h, w = y.shape
    return te.compute((n, out, h * kh, w * kw), lambda b, o, r, c: y[b, (o * kh + r % kh) * kw + c % kw, r // kh, c // kw],
                      name="pixel_shuffle")


@tvm.transform.module_pass(opt_level=0, name="ConvTransposeAsShuffle")
def conv_transpose_as_shuffle(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: every transposed conv whose kernel equals its stride as a 1x1 conv and a pixel shuffle."""
    mutator_ = _ConvTransposeAsShuffle(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator_.builder_.update_func(gv, mutator_.visit_expr(func))
    return mutator_.builder_.get()

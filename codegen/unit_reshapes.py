"""At one token, a kernel reads its arguments in the shapes their producers wrote: no reshape calls between kernels.

In ``main`` specialized for unit dimensions (:mod:`.unit_dims`), once the epilogues joined their kernels
(:mod:`.unit_epilogues`), the encoder's one-token call still has 6 reshapes a layer (rows flattened for each
matmul, the attention's heads joined again). Each is a VM call (``vm.builtin.reshape``, a new tensor object) and
a release of what it held. A reshape changes no element's place, and a PrimFunc's buffers are flat memory once
lowered: so each argument of one of our kernels (:func:`.kernel_registry.is_per_call_kernel`, fused ones
included) that is a reshape (a chain of them) of a tensor of static shape is passed as that tensor, and the
kernel gets a copy whose parameter has that tensor's shape and declares its original buffer, in the shape it
indexes, over the same memory: the same loop nests, one VM call and release fewer per reshape
(benchmarks/README.md, stop 20). The reshapes no kernel reads any more are removed; those the function returns
stay. TVM's own scheduled kernels are left as they are: bound to static shapes, the attention's batched matmul
tripped TVM's arithmetic analyzer in its lowering, and at one token they are fused into ours anyway.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.tirx import stmt as s

from .kernel_registry import is_per_call_kernel
from .relax_calls import call_tir_parts
from .unit_dims import UNIT_DIMS
from .unit_epilogues import LoweredCopies, static_shape, with_static_shapes

RESHAPE = tvm.ir.Op.get("relax.reshape")


def with_parameter_shapes(func: tirx.PrimFunc, shapes: list, given: dict) -> tirx.PrimFunc:
    """``func`` at the static ``shapes`` of its parameters, the parameters at the indices of ``given`` taking the
    shapes it maps them to (as many elements): each declares the buffer it replaces over its memory."""
    func = with_static_shapes(func, shapes)
    params, body = list(func.params), func.body
    for at, shape in sorted(given.items(), reverse=True):
        old = params[at]
        new = tirx.decl_buffer(shape, old.ty.dtype, old.name)
        body = s.SeqStmt([s.DeclBuffer(old, data=new.data), body])
        params[at] = new
    attrs = dict(func.attrs or {})
    attrs.pop("global_symbol", None)
    return tirx.PrimFunc(params, body, func.ret_type).with_attrs(attrs)


@mutator
class _AbsorbReshapes(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod, self.copies = mod, LoweredCopies(self.builder_)

    def _reshaped(self, arg):
        """The tensor of static shape that ``arg`` reshapes (through a chain of reshapes), else None."""
        source = arg
        while isinstance(source, relax.Var):
            value = self.lookup_binding(source)
            if not (isinstance(value, relax.Call) and value.op.same_as(RESHAPE)):
                break
            source = value.args[0]
        if source is arg or not isinstance(source, relax.Var) or static_shape(source) is None:
            return None
        return source

    def visit_call_(self, call):
        call = super().visit_call_(call)
        found = call_tir_parts(call)
        if found is None or found[0] not in self.mod or not is_per_call_kernel(self.mod[found[0]]):
            return call
        gv, args, out_ty = found
        shapes = [static_shape(a) for a in args] + [static_shape(out_ty)]
        if any(shape is None for shape in shapes) or len(self.mod[gv].params) != len(shapes):
            return call
        sources = {at: self._reshaped(arg) for at, arg in enumerate(args)}
        given = {at: static_shape(source) for at, source in sources.items() if source is not None}
        if not given:
            return call
        key = (gv.name_hint, str(shapes), str(sorted(given.items())))
        copy = self.copies.get(key, lambda: (with_parameter_shapes(self.mod[gv], shapes, given), gv.name_hint))
        if copy is None:
            return call
        args = [arg if sources[at] is None else sources[at] for at, arg in enumerate(args)]
        return relax.call_tir(copy, relax.Tuple(args), out_ty)


@tvm.transform.module_pass(opt_level=0, name="AbsorbUnitReshapes")
def absorb_unit_reshapes(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: in the unit-dimensions ``main`` (when there is one), each kernel argument that is a reshape
    passed as the tensor it reshapes (see the module docstring); the reshapes left unread removed."""
    if UNIT_DIMS not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    gv = mod.get_global_var(UNIT_DIMS)
    absorber = _AbsorbReshapes(mod)
    func = absorber.visit_expr(mod[gv])
    if not absorber.copies.added:
        return mod
    mod = absorber.builder_.get()
    mod[gv] = relax.analysis.remove_all_unused(func)
    return mod

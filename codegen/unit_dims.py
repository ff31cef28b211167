"""``main`` specialized for the call where every symbolic input dimension is 1 (one token, one sample).

A model compiled with symbolic dimensions (batch, sequence) runs every call through shape code: the VM
computes each tensor's shape from the dimensions, matches them, and each matmul of an encoded or dense
weight is a call of a Relax function that checks its arguments and chooses its one-row or many-row
kernel at run time (``passes.encode_weights``). At one token that interpretation costs as much as the
kernels. ``main`` gets a copy of itself with those dimensions bound to 1, where every shape is a
constant, memory is planned statically and each matmul calls its kernel directly; ``main`` runs that
copy when the dimensions are all 1 and the symbolic one otherwise. In the symbolic copy a matmul whose many-row
branch is one kernel calls that kernel directly too (the dispatch's call costs ~20 VM instructions per layer and
call: a frame, its argument checks, the branch): that copy runs when some input dimension is above one, and a
matmul with one row there anyway gets the many-row kernel's result on that row (as the GEMMs fused with their
epilogues do, :mod:`.gemm_epilogues`). A ``main`` without symbolic input dimensions only gets its matmul calls
resolved. The kernels (PrimFuncs) are shared by both copies.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .kernel_registry import ROW_DISPATCH_ATTR
from .relax_calls import call_tir_parts

NUM_INPUT = "num_input"
UNIT_DIMS = "main_unit_dims"  # main with every symbolic input dimension 1
ANY_DIMS = "main_any_dims"  # main as compiled


def _input_dims(main: relax.Function) -> list[tirx.Var]:
    """The symbolic dimensions of ``main``'s inputs (the parameters before its weights), in order."""
    dims = []
    for param in list(main.params)[:int(main.attrs[NUM_INPUT])]:
        for dim in getattr(param.ty, "shape", None) or []:
            if isinstance(dim, tirx.Var) and not any(dim.same_as(d) for d in dims):
                dims.append(dim)
    return dims


def _static_branch(callee: relax.Function, args) -> tuple[relax.Function, relax.SeqExpr] | None:
    """``callee`` with its symbolic sizes bound to those of ``args``, and the branch of its ``If`` (``callee``'s
    body is one, like a row dispatch's) that they take; None if their static shapes do not decide it."""
    body = callee.body
    if not (isinstance(body, relax.SeqExpr) and len(body.blocks) == 1 and len(body.blocks[0].bindings) == 1
            and isinstance(body.blocks[0].bindings[0].value, relax.If)):
        return None
    sizes = {}
    for param, arg in zip(callee.params, args):
        param_shape, arg_shape = getattr(param.ty, "shape", None), getattr(arg.ty, "shape", None)
        if param_shape is None or arg_shape is None:
            continue
        for p, a in zip(param_shape, arg_shape):
            if isinstance(p, tirx.Var) and isinstance(a, tirx.IntImm):
                sizes[p] = a
    if not sizes:
        return None
    bound = callee.bind_symbolic_vars(sizes)
    choice = bound.body.blocks[0].bindings[0].value
    cond = tvm.sym.Analyzer().simplify(choice.cond)  # a PrimExpr is a Relax expression
    if not isinstance(cond, tirx.IntImm):
        return None
    return bound, choice.true_branch if cond.value else choice.false_branch


def _many_row_kernel(dispatch: relax.Function) -> relax.GlobalVar | None:
    """The kernel a row dispatch (``ROW_DISPATCH_ATTR``) calls above one row, where that branch is that one call on
    the dispatch's parameters (not a decode and a matmul); else None."""
    if not (dispatch.attrs or {}).get(ROW_DISPATCH_ATTR, False):
        return None
    branch = dispatch.body.blocks[0].bindings[0].value.false_branch
    bindings = [b for block in branch.blocks for b in block.bindings]
    found = call_tir_parts(bindings[0].value) if len(bindings) == 1 else None
    if found is None or len(found[1]) != len(dispatch.params) \
            or not all(a.same_as(p) for a, p in zip(found[1], dispatch.params)):
        return None
    return found[0]


@mutator
class _ResolveDispatches(PyExprMutator):
    """Calls of Relax functions that branch on sizes the arguments fix statically replaced by that branch's
    bindings; with ``many_rows``, the other calls of row dispatches by calls of their many-row kernel."""

    def __init__(self, mod: tvm.IRModule, many_rows: bool = False):
        super().__init__(mod)
        self.mod, self.many_rows = mod, many_rows

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, relax.GlobalVar) or not isinstance(self.mod[call.op], relax.Function):
            return call
        found = _static_branch(self.mod[call.op], call.args)
        if found is None:
            kernel = _many_row_kernel(self.mod[call.op]) if self.many_rows else None
            return call if kernel is None else relax.call_tir(kernel, list(call.args), out_ty=call.ty)
        bound, branch = found
        for param, arg in zip(bound.params, call.args):
            self.set_var_remap(param, arg if isinstance(arg, relax.Var) else self.builder_.emit(arg))
        for block in branch.blocks:
            for binding in block.bindings:
                self.set_var_remap(binding.var, self.builder_.emit(self.visit_expr(binding.value)))
        return self.visit_expr(branch.body)


def _private(func: relax.Function, mod: tvm.IRModule, many_rows: bool = False) -> relax.Function:
    """``func`` with its dispatches resolved (``_ResolveDispatches``) and fresh variables (a variable is defined in
    one function only), without a global symbol."""
    func = relax.utils.copy_with_new_vars(_ResolveDispatches(mod, many_rows).visit_expr(func))
    return func.without_attr("global_symbol")


@tvm.transform.module_pass(opt_level=0, name="SpecializeUnitDims")
def specialize_unit_dims(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: ``main`` runs a copy with its symbolic input dimensions bound to 1 when they are all 1."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()] or not isinstance(mod["main"], relax.Function):
        return mod
    main = mod["main"]
    if NUM_INPUT not in (main.attrs or {}):
        return mod
    dims = _input_dims(main)
    if not dims:
        mod = mod.clone()
        mod["main"] = _ResolveDispatches(mod).visit_expr(main)
        return mod
    if {UNIT_DIMS, ANY_DIMS} & {gv.name_hint for gv in mod.get_global_vars()}:
        raise ValueError(f"{UNIT_DIMS} or {ANY_DIMS} is already in the module")
    builder = relax.BlockBuilder(mod)
    unit_gv = builder.add_func(_private(main.bind_symbolic_vars({d: 1 for d in dims}), mod), UNIT_DIMS)
    any_gv = builder.add_func(_private(main, mod, many_rows=True), ANY_DIMS)

    def calling(callee, ret_ty):
        result = relax.Var("result", ret_ty)
        return relax.SeqExpr([relax.BindingBlock([relax.VarBinding(result, relax.Call(callee, main.params))])], result)

    is_unit = tirx.all(*[d == 1 for d in dims]) if len(dims) > 1 else dims[0] == 1
    unit_ty = builder.get()[unit_gv].ret_ty
    chosen = relax.Var("chosen", relax.AnyType())
    result = relax.Var("result", main.ret_ty)
    bindings = [relax.VarBinding(chosen, relax.If(relax.prim_value(is_unit), calling(unit_gv, unit_ty),
                                                  calling(any_gv, main.ret_ty))),
                relax.MatchCast(result, chosen, main.ret_ty)]
    body = relax.SeqExpr([relax.BindingBlock(bindings)], result)
    builder.update_func(builder.get().get_global_var("main"),
                        builder.normalize(relax.Function(main.params, body, main.ret_ty, main.is_pure, main.attrs)))
    return builder.get()

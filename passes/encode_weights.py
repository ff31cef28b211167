"""EncodeWeights: the module pass that replaces planned weights by encoded constants and kernels reading them.

It rewrites what an :class:`~.plan.EncodingPlan` decided and decides nothing:
each matched weight use (``weight_uses.WEIGHT_CALL``) of an encoded weight becomes
``call_tir(kernel, (x2d, *encoded))``, a batched ``x`` reshaped to 2-D and back
(a matmul weight left dense gets the target's dense kernels, ``codegen.dense_kernel``,
over the same weight stored [N, K]). Where the codec has a decode kernel (the CPU),
a matmul dispatches on its row count: one row runs the fused kernel, more rows
``matmul(x2d, call_tir(decode, (x2d, *encoded)))`` (compute-bound: decode once,
then the dense schedules' GEMM); a ``conv2d(x, W)`` (any groups) becomes
``conv2d(x, call_tir(decode, (x, *encoded)))`` with its attributes kept; a ``take(W, ids)``
becomes ``call_tir(gather, (ids1d, *encoded))``, the rows decoded as they are read. Every
kernel takes ``x`` (a decode kernel without reading it), so constant folding cannot
pre-compute a dense weight into the artefact again. A kernel whose constants are
computed at load (``KernelCall.at_load``) reads them from the tuple of
``call_tir(at_load, stored)``, the stored arrays its only arguments: a tuple is
never constant-folded, and the build lifts the call out of ``main`` into the
function the runtime runs once at load (``codegen.cpu.build``). A rotated encoding (``codecs.rotation``)
gets its kernels from the codec's encoding of the rotated weight, and their ``x2d`` is first rotated by
``call_tir(hadamard_K, (x2d, signs))`` (``codegen.hadamard``, one PrimFunc per K). The rewritten calls leave
their weight constants unused: ``DeadCodeElimination`` after it removes them
(``passes.encoding_passes`` composes both).
"""

from __future__ import annotations

import tvm
from tvm import relax

from bie_compiler import codegen
from bie_compiler.codecs import rotation
from bie_compiler.codegen import KernelCall, hadamard

from .plan import EncodingPlan
from .weight_uses import Match, WeightUse, as_index_rows, as_rows, rewrite_weight_calls


def _dispatch_by_rows(small, large, large_decodes: bool, types: list[relax.TensorType], k: int, n: int) -> relax.Function:
    """``f(x [m, k], *constants) -> [m, n]`` (constants of ``types``): the small-batch kernel up to SMALL_BATCH_ROWS rows, else the
    large-batch one (``large_decodes``: a decode kernel of the weight [k, n], then a plain matmul).

    The constants are parameters, not bound inside, so every constant of the model is an argument in
    ``main`` and the build can move them all out of the code."""
    m = tvm.tirx.Var("m", "int64")
    x = relax.Var("x", relax.TensorType([m, k], "float32"))
    params = [relax.Var(f"c{i}", ty) for i, ty in enumerate(types)]
    out_ty = relax.TensorType([m, n], "float32")

    def branch(kernel, decodes):
        y = relax.Var("y", out_ty)
        if not decodes:
            call = relax.call_tir(kernel, [x, *params], out_ty=out_ty)
            return relax.SeqExpr([relax.BindingBlock([relax.VarBinding(y, call)])], y)
        w_ty = relax.TensorType([k, n], "float32")
        w = relax.Var("w", w_ty)
        bindings = [relax.VarBinding(w, relax.call_tir(kernel, [x, *params], out_ty=w_ty)),
                    relax.VarBinding(y, relax.op.matmul(x, w))]
        return relax.SeqExpr([relax.BindingBlock(bindings)], y)

    choice = relax.If(relax.prim_value(m <= codegen.SMALL_BATCH_ROWS), branch(small, False),
                      branch(large, large_decodes))
    result = relax.Var("result", out_ty)
    body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(result, choice)])], result)
    # num_input 1: the VM checks only x on each call, not the constants, which are main's weights (main checks
    # none of them either); each constant's check cost two VM instructions per layer and call
    func = relax.Function([x, *params], body, out_ty, is_pure=True)
    return func.with_attrs({"num_input": 1, codegen.ROW_DISPATCH_ATTR: True})


@tvm.transform.module_pass(opt_level=0, name="EncodeWeights")
class EncodeWeights:
    """Rewrite the weight uses ``plan`` encodes (or routes to the dense kernel) into calls of their kernels."""

    def __init__(self, plan: EncodingPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        builder = relax.BlockBuilder(mod)
        kernels: dict = {}  # (weight, conv) -> (callee, constants, decodes, is a Relax function): one per use kind
        transforms: dict[int, relax.GlobalVar] = {}  # K -> the Walsh-Hadamard PrimFunc of rotated weights

        def rewrite(found: Match):
            use = found.use
            if use.name not in self.plan.encoded and use.name not in self.plan.dense_kernels:
                return None
            key = use.name, use.conv
            if key not in kernels:
                kernels[key] = self._kernel(builder, use)
            callee, constants, decodes, dispatches = kernels[key]
            x = found.x
            rotated = self._rotation(builder, transforms, use)
            if use.op == "gather":
                return as_index_rows(x, use.shape[1],
                                     lambda ids, out_ty: relax.call_tir(callee, [ids, *constants], out_ty=out_ty))
            if use.op == "conv2d" and decodes:
                w = relax.call_tir(callee, [x, *constants], out_ty=relax.TensorType(list(use.shape), "float32"))
                return relax.Call(found.call.op, [x, w], found.call.attrs, found.call.ty_args)
            if use.op == "conv2d":
                return relax.call_tir(callee, [x, *constants], out_ty=found.call.ty)
            if dispatches:
                return as_rows(x, use.rows, lambda x2, out_ty: relax.Call(callee, [rotated(x2, out_ty), *constants]))
            return as_rows(x, use.rows, lambda x2, out_ty: relax.call_tir(
                callee, [rotated(x2, out_ty), *constants], out_ty=out_ty))

        rewritten = rewrite_weight_calls(mod, rewrite, self.plan.names)
        for gv, func in rewritten.functions_items():
            if isinstance(func, relax.Function):
                builder.update_func(gv, func)
        return builder.get()

    def _rotation(self, builder: relax.BlockBuilder, transforms: dict, use: WeightUse):
        """``f(x2d, out_ty)``: ``x2d`` as the layer's kernels take it, rotated when its encoding is."""
        _, negated = rotation.unrotated(self.plan.encoded[use.name][1]) if use.name in self.plan.encoded else (None, None)
        if negated is None:
            return lambda x2, out_ty: x2
        if use.op != "matmul":
            raise ValueError(f"{use.name}: a rotated encoding of a {use.op} weight (only matmuls are rotated)")
        k = use.size // use.rows
        if k not in transforms:
            transforms[k] = builder.add_func(hadamard.kernel(k), f"{hadamard.KIND}_{k}")
        signs = relax.const(self.plan.encoded[use.name][1].arrays[rotation.SIGNS])
        return lambda x2, out_ty: relax.call_tir(transforms[k], [x2, signs],
                                                 out_ty=relax.TensorType([out_ty.shape.values[0], k], "float32"))

    def _kernel(self, builder: relax.BlockBuilder, use: WeightUse):
        """(callee, constants, decodes, dispatches): a PrimFunc for call_tir (a decode kernel if ``decodes``), or
        a Relax function dispatching on the row count (``dispatches``), called with the same constants."""
        target = self.plan.target
        if use.name in self.plan.encoded:
            codec, enc = self.plan.encoded[use.name]
            enc, _ = rotation.unrotated(enc)  # the kernels compute from the codec's encoding of the rotated weight
            kernel = codegen.kernel_for(enc, target, use.conv, use.op, **self.plan.kernel_options.get(use.name, {}))
        else:
            codec, kernel = "dense", codegen.dense_kernel(use.matrix(), target)
        stem = f"{codec.replace('-', '_')}_" + "".join(c if c.isalnum() else "_" for c in use.name)
        constants = [relax.const(c) for c in kernel.constants]
        if kernel.at_load is not None:
            constants = _computed_at_load(builder, kernel, stem, use.name)
        small = _add_prim_func(builder, kernel, stem, use.name)
        if kernel.large_batch is None:
            return small, constants, kernel.decodes, False
        large = _add_prim_func(builder, kernel.large_batch, stem, use.name)
        n, k = use.rows, use.size // use.rows
        types = [relax.TensorType(list(c.shape), c.dtype.name) for c in kernel.constants]
        dispatch = _dispatch_by_rows(small, large, kernel.large_batch.decodes, types, k, n)
        return builder.add_func(dispatch, f"{stem}_matmul"), constants, False, True


def _computed_at_load(builder: relax.BlockBuilder, kernel: KernelCall, stem: str, layer: str) -> list[relax.Expr]:
    """The kernel's constants as the fields of ``f(*stored)``, a Relax function around ``call_tir(at_load, stored)``
    (see the module docstring)."""
    name = f"{stem}_{kernel.kind}_at_load"
    func = builder.add_func(kernel.at_load.func.with_attrs({"global_symbol": name, codegen.LAYER_ATTR: layer}), name)
    stored = [relax.const(a) for a in kernel.at_load.stored]
    types = [relax.TensorType(list(c.shape), c.dtype.name) for c in kernel.constants]
    params = [relax.Var(f"s{i}", s.ty) for i, s in enumerate(stored)]
    computed = relax.Var("computed", relax.TupleType(types))
    if len(types) > 1:
        bindings = [relax.VarBinding(computed, relax.call_tir(func, params, out_ty=types))]
    else:  # call_tir returns one output as a tensor, not a tuple of one
        single = relax.Var("single", types[0])
        bindings = [relax.VarBinding(single, relax.call_tir(func, params, out_ty=types[0])),
                    relax.VarBinding(computed, relax.Tuple([single]))]
    body = relax.SeqExpr([relax.BindingBlock(bindings)], computed)
    wrapper = builder.add_func(relax.Function(params, body, relax.TupleType(types), is_pure=True), f"{name}_call")
    call = relax.Call(wrapper, stored)
    return [relax.TupleGetItem(call, i) for i in range(len(types))]


def _add_prim_func(builder: relax.BlockBuilder, kernel: KernelCall, stem: str, layer: str) -> relax.GlobalVar:
    name = f"{stem}_{kernel.kind}"
    return builder.add_func(kernel.func.with_attrs({"global_symbol": name, codegen.LAYER_ATTR: layer}), name)

"""A pointwise (1x1) conv group and the depthwise conv group that reads its output fused into one group.

MobileNet-style blocks expand channels with a 1x1 conv, then run a depthwise conv over the expanded
tensor. On early, large planes that tensor (e.g. 96 x 112 x 112 floats, 4.8 MB) does not fit a core's L2:
the pointwise conv writes it out to memory and the depthwise conv reads it back. Fused, each task of the
depthwise conv computes the rows of the pointwise output it needs into a small buffer, and the tensor is
never stored (``codegen/schedules/expand_depthwise.py`` schedules the fused function).

Runs between ``FuseOps`` and ``FuseTIR``: the two groups (Relax functions marked ``Primitive``, each a
chain of ``call_tir``) become one group, which ``FuseTIR`` turns into one PrimFunc. Only pairs whose
intermediate tensor is at least ``MIN_BYTES`` per image are fused: the separate pointwise conv tiles channels
and pixels better than the fused one (whose register tile runs along one row: 8-lane vectors on a 56-wide
row), and its band halos recompute rows, which costs more than the round trip of a mid-sized tensor through
the shared L3 (144 x 56 x 56, stride 1 or 2); a tensor of several MB (96 x 112 x 112) is worth keeping in L2.

An encoded depthwise weight is computed by a decode kernel that takes the conv's input without reading it
(``codegen/kernels/decode.py``): that use does not keep the pair apart; the decode kernel is given the pointwise
conv's input instead, as the expanded tensor no longer exists.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.utils import copy_with_new_vars

from .relax_calls import call_tir_parts, variable_uses

MIN_BYTES = 4 << 20  # per image: the expanded tensor of one image from which the pair is fused (see above)


def _static(shape) -> list[int | None]:
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in shape]


def _first_conv(mod: tvm.IRModule, group: relax.Function) -> tuple[list, list, list] | None:
    """(input, weight, output) shapes of ``group``'s first binding if it calls a legalized conv2d on the group's
    first parameter, else None."""
    blocks = group.body.blocks
    if len(blocks) != 1 or not blocks[0].bindings:
        return None
    call = blocks[0].bindings[0].value
    found = call_tir_parts(call)
    if found is None:
        return None
    callee, args, _ = found
    if not isinstance(mod[callee], tvm.tirx.PrimFunc) or not callee.name_hint.startswith("conv2d"):
        return None
    if len(args) != 2 or not args[0].same_as(group.params[0]):
        return None
    return (_static(args[0].ty.shape), _static(args[1].ty.shape),
            _static(call.ty.shape))


def is_pointwise(shapes) -> bool:
    """A 1x1, stride-1 conv of static channels and plane (groups = 1)."""
    x, w, y = shapes
    return (None not in x[1:] + w + y[1:] and w[2:] == [1, 1] and w[1] == x[1] and y[2:] == x[2:])


def is_depthwise(shapes) -> bool:
    """A conv with one input channel per group and as many groups as channels, static channels and plane."""
    x, w, y = shapes
    return None not in x[1:] + w + y[1:] and w[1] == 1 and w[0] == x[1] == y[1] and x[1] > 1


def _unread_input(mod: tvm.IRModule, value) -> relax.Var | None:
    """The first argument of a ``call_tir`` whose PrimFunc never reads its first parameter and takes any shape of
    its rank there (a decode kernel's activation), else None: any tensor of that rank may be passed instead."""
    found = call_tir_parts(value)
    if found is None:
        return None
    callee, args, _ = found
    func = mod[callee] if isinstance(callee, tvm.ir.GlobalVar) else None
    if not isinstance(func, tvm.tirx.PrimFunc) or not args or not isinstance(args[0], relax.Var):
        return None
    if not all(isinstance(dim, tvm.tirx.Var) for dim in func.params[0].ty.shape):
        return None
    used = tvm.tirx.analysis.undefined_vars(func.body, [])
    return None if any(var.same_as(func.params[0]) for var in used) else args[0]


def _with_first_argument(value: relax.Call, first: relax.Expr) -> relax.Call:
    """The ``call_tir`` ``value`` with its first argument replaced."""
    args = [first, *value.args[1].fields[1:]]
    return relax.Call(value.op, [value.args[0], relax.Tuple(args), *value.args[2:]], value.attrs, value.ty_args)


def _bytes(shape) -> int:
    """Bytes of one image of a float32 NCHW tensor."""
    return shape[1] * shape[2] * shape[3] * 4


def merge_groups(first: relax.Function, second: relax.Function) -> relax.Function:
    """One primitive function computing ``second(first(a...), b...)``: parameters ``a..., b...``."""
    first, second = copy_with_new_vars(first), copy_with_new_vars(second)
    second = second.bind_params({second.params[0]: first.body.body})
    bindings = list(first.body.blocks[0].bindings) + list(second.body.blocks[0].bindings)
    body = relax.SeqExpr([relax.DataflowBlock(bindings)], second.body.body)
    return relax.Function(list(first.params) + list(second.params), body, second.ret_ty,
                          attrs=second.attrs)


def fuse_expand_depthwise(min_bytes: int = MIN_BYTES) -> tvm.transform.Pass:
    """The pass: each pointwise conv group whose output (per image) has at least ``min_bytes`` and is read only by a
    depthwise conv group fused with it."""
    return tvm.transform.module_pass(lambda mod, _ctx: _fuse(mod, min_bytes), opt_level=0,
                                     name="FuseExpandDepthwise")


def _fuse(mod: tvm.IRModule, min_bytes: int) -> tvm.IRModule:
    groups = {gv: f for gv, f in mod.functions_items()
              if isinstance(f, relax.Function) and f.attrs is not None and f.attrs.get("Primitive", False)}
    builder = relax.BlockBuilder(mod)
    merged: dict[tuple, tvm.ir.GlobalVar] = {}
    callers = {gv: f for gv, f in mod.functions_items() if isinstance(f, relax.Function) and gv not in groups}
    rewritten = {gv: _fuse_calls(mod, f, groups, builder, merged, min_bytes)
                 for gv, f in callers.items()}
    rewritten = {gv: f for gv, f in rewritten.items() if f is not None}
    if not rewritten:
        return mod
    mod = builder.get()
    for gv, func in rewritten.items():
        mod[gv] = func
    return tvm.transform.Sequential([relax.transform.Normalize(), relax.transform.DeadCodeElimination()])(mod)


def _fuse_calls(mod, func: relax.Function, groups, builder, merged, min_bytes) -> relax.Function | None:
    """``func`` with each fusable pair of group calls made one call (new groups added to ``builder``), or None."""
    if not isinstance(func.body, relax.SeqExpr):
        return None
    uses = variable_uses(func)
    for block in func.body.blocks:  # a decode kernel's unread activation is no use
        for binding in block.bindings:
            unread = _unread_input(mod, binding.value)
            if unread is not None:
                uses[unread] -= 1
    changed = False
    new_blocks = []
    for block in func.body.blocks:
        producers = {}  # var -> binding of a large pointwise group's call
        bindings = []
        for binding in block.bindings:
            value = binding.value
            unread = _unread_input(mod, value)
            if unread is not None and unread in producers:  # read by no kernel: the pointwise input serves as well
                value = _with_first_argument(value, producers[unread].value.args[0])
                binding = relax.VarBinding(binding.var, value)
                changed = True
            callee = value.op if isinstance(value, relax.Call) else None
            group = groups.get(callee) if isinstance(callee, tvm.ir.GlobalVar) else None
            shapes = _first_conv(mod, group) if group is not None else None
            source = value.args[0] if shapes is not None else None
            if shapes is not None and is_depthwise(shapes) and source in producers and uses.get(source) == 1:
                first = producers.pop(source)
                key = (first.value.op, callee)
                if key not in merged:
                    merged[key] = builder.add_func(merge_groups(groups[first.value.op], group),
                                                   f"{first.value.op.name_hint}_{callee.name_hint}")
                bindings.remove(first)
                bindings.append(relax.VarBinding(binding.var, relax.Call(
                    merged[key], list(first.value.args) + list(value.args[1:]))))
                changed = True
                continue
            if shapes is not None and is_pointwise(shapes):
                if _bytes(shapes[2]) >= min_bytes:
                    producers[binding.var] = binding
            bindings.append(binding)
        new_blocks.append(relax.DataflowBlock(bindings) if isinstance(block, relax.DataflowBlock)
                          else relax.BindingBlock(bindings))
    if not changed:
        return None
    return relax.Function(func.params, relax.SeqExpr(new_blocks, func.body.body), func.ret_ty, func.is_pure,
                          func.attrs, func.span)

"""At one token, each matmul kernel and the elementwise kernel that consumes its output are one call.

In ``main`` specialized for unit dimensions (:mod:`.unit_dims`) every shape is static, and a matmul of
an encoded or dense weight (a kernel of :mod:`.kernel_registry`) is followed, through reshapes, by
the elementwise kernel that adds its bias (and the residual, or applies GELU). Each kernel call costs
the VM an output allocation, the call, its reshapes and the releases of what they held: at one token,
where each kernel runs for a few microseconds, as much as the small kernels themselves. Here the two
calls become one PrimFunc that runs the matmul into a buffer of its own (through a view of it where the matmul's
output shape differs) and then the epilogue reading that buffer: the same two loop nests, one call.

Only where the matmul's output is read by nothing else (each reshape on the way too), so no work is
repeated, and is at most ``STACK_BYTES`` (one token's activations, which stay on the stack; not a conv's
decoded weight or a feature map); the bodies are composed as they are scheduled, so the fused kernel
computes exactly what the two did.

A fused kernel is one of ours again, so the pass repeats until no call fuses: the next kernel that alone reads
its output joins it (in the encoder at one token, the layer norm after the bias and residual, the attention's
transposes, batched matmuls and softmax after the Q, K and V projections: 6 calls a layer instead of 11,
benchmarks/README.md, stops 20 and 21). A size that an epilogue takes as a scalar argument (the softmax's batch)
is bound to the call's value. A fused kernel the build's lowering refuses keeps its calls (:func:`lowers`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.tirx import stmt as s

from .kernel_registry import is_per_call_kernel
from .relax_calls import call_tir_parts, is_reshape, producer, variable_uses
from .stack_buffers import STACK_BYTES
from .tir_nodes import substituted
from .tir_pipeline import TIR_PIPELINE
from .unit_dims import UNIT_DIMS

FUSED_ATTR = "bie.fused_epilogue"  # on a fused kernel: the epilogue's name


def with_static_shapes(func: tirx.PrimFunc, shapes: list) -> tirx.PrimFunc:
    """``func`` with the symbolic sizes of its buffer parameters bound to ``shapes`` (one per parameter); a scalar
    parameter given an ``int`` (a symbolic size passed as a value, :func:`static_arguments`) is bound to it and is no
    longer a parameter. The body is then simplified at those sizes: a matmul scheduled for a symbolic number of rows
    (the attention's product with V) predicates its register tile's rows on it, and with that number bound to 1 but
    not simplified, TVM's buffer compaction left the tile's loop variables in its accumulator's size (the lowering
    then failed in the arithmetic analyzer, "conflicts with memorization": the `int8` encoder's V kernels)."""
    sizes = {param: tirx.const(shape, str(param.ty.dtype)) for param, shape in zip(func.params, shapes)
             if isinstance(shape, int)}
    for param, shape in zip(func.params, shapes):
        if not isinstance(shape, int):
            for dim, size in zip(param.ty.shape, shape):
                if isinstance(dim, tirx.Var):
                    sizes[dim] = tirx.const(int(size), str(dim.ty))
    if not sizes:
        return func
    kept = [param for param, shape in zip(func.params, shapes) if not isinstance(shape, int)]
    func = tirx.PrimFunc(kept, func.body, func.ret_type, func.attrs)
    func = substituted(func, sizes)
    return tvm.s_tir.transform.StmtSimplify()(tvm.IRModule({"main": func}))["main"]


def fused_kernel(kernel: tirx.PrimFunc, epilogue: tirx.PrimFunc, at: int, kernel_shapes: list,
                 epilogue_shapes: list) -> tirx.PrimFunc:
    """``f(*kernel inputs, *epilogue inputs but the one at ``at`` and its scalars, out)``: ``kernel`` writing into a
    buffer of the call, then ``epilogue`` reading it as its input ``at``. ``*_shapes``: the static shapes of each
    function's parameters at the call (outputs last; a scalar parameter's value, see :func:`with_static_shapes`)."""
    kernel = with_static_shapes(kernel, kernel_shapes)
    epilogue = with_static_shapes(epilogue, epilogue_shapes)
    at = sum(1 for shape in epilogue_shapes[:at] if not isinstance(shape, int))  # its place among those kept
    # The product is allocated in the shape the epilogue reads it and the kernel writes it through a view, not the
    # other way round: TVM's StorageRewrite gives a buffer the storage of one it is computed from ("in place") where
    # every load of that one is at the store's own index, but it sees only loads of the buffer itself, not loads
    # through a view. Read through a view, the product of a transpose's fused kernel (the attention's Q, K and V at
    # 16 tokens, read by the batched matmul joining in the next round) took the storage of the product it was
    # still transposing from. Where the two shapes are one, the kernel writes the product itself: no view hides its
    # stores, so an epilogue's output can still take its storage in place (else it took another free buffer, such as
    # a GEMV's accumulators, and the GEMV's loop then counted a hand-off to its tasks: serial_small_loops.handoff).
    written, product = kernel.params[-1], epilogue.params[at]
    if static_shape(written) == static_shape(product):
        body = s.SeqStmt([s.AllocBuffer(product), substituted(kernel.body, {written: product}), epilogue.body])
    else:
        body = s.SeqStmt([s.AllocBuffer(product), s.DeclBuffer(written, data=product.data), kernel.body, epilogue.body])
    params = [*kernel.params[:-1], *(p for i, p in enumerate(epilogue.params) if i != at)]
    attrs = dict(kernel.attrs or {})
    attrs.update({key: value for key, value in (epilogue.attrs or {}).items() if key not in attrs})
    attrs.pop("global_symbol", None)
    attrs[FUSED_ATTR] = str((epilogue.attrs or {}).get("global_symbol", "epilogue"))
    return tirx.PrimFunc(params, body, kernel.ret_type).with_attrs(attrs)


def lowers(func: tirx.PrimFunc) -> bool:
    """Whether the build's TIR lowering, for the current target, takes ``func`` (True without a target). A kernel
    TVM scheduled for symbolic sizes, bound to static ones, can fail there (as the attention's product with V did
    before :func:`with_static_shapes` simplified it), which would cost the whole model its unit copy; such a kernel
    keeps its own call. A few milliseconds a kernel."""
    target = tvm.target.Target.current(allow_none=True)
    if target is None:
        return True
    lower, _, _ = tvm.tirx.get_tir_pipeline(TIR_PIPELINE)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    try:  # as tvm.compile runs it: the target bound (its own host), then the pipeline's lowering passes
        lower(tvm.tirx.transform.BindTarget(target.with_host(target))(mod))
    except Exception:  # noqa: BLE001 (TVM raises its internal errors as several Python types)
        return False
    return True


class LoweredCopies:
    """The kernel copies a unit pass adds through ``builder``, by key, each added only where the build's lowering
    takes it (:func:`lowers`). A refused key is remembered (``refused``, which a pass running in rounds passes on
    from one round to the next), so each copy is made and lowered once."""

    def __init__(self, builder: relax.BlockBuilder, refused: set | None = None):
        self.builder, self.added, self.refused = builder, {}, set() if refused is None else refused

    def get(self, key, make) -> relax.GlobalVar | None:
        """The copy of ``key``, the first time made by ``make() -> (PrimFunc, name hint)``; None where refused."""
        if key not in self.added and key not in self.refused:
            func, name = make()
            if lowers(func):
                self.added[key] = self.builder.add_func(func, name)
            else:
                self.refused.add(key)
        return self.added.get(key)


def static_arguments(args) -> list:
    """Per argument of a call: its static shape (a tensor), its value (an integer: a symbolic size the callee takes
    as a scalar, such as the softmax's batch), else None."""
    return [int(a.value) if isinstance(a, tirx.IntImm) else static_shape(a) for a in args]


def static_shape(expr_or_ty) -> list | None:
    ty = getattr(expr_or_ty, "ty", expr_or_ty)
    shape = getattr(ty, "shape", None)
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in getattr(shape, "values", shape)):
        return None
    return [int(d) for d in getattr(shape, "values", shape)]


@mutator
class _FuseEpilogues(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, uses: dict, refused: set):
        super().__init__(mod)
        self.mod, self.uses, self.fused = mod, uses, LoweredCopies(self.builder_, refused)

    def _kernel_call(self, var):
        """The ``call_tir`` of a kernel that ``var`` holds through single-use aliases and reshapes, else None."""
        call = call_tir_parts(producer(var, self.uses, self.lookup_binding, self.mod))
        return call if call is not None and call[0] in self.mod and is_per_call_kernel(self.mod[call[0]]) else None

    def visit_call_(self, call):
        call = super().visit_call_(call)
        found = call_tir_parts(call)
        if found is None or found[0] not in self.mod or not isinstance(self.mod[found[0]], tirx.PrimFunc) \
                or is_per_call_kernel(self.mod[found[0]]) or is_reshape(self.mod[found[0]]):
            return call
        epilogue_gv, args, out_ty = found
        for at, arg in enumerate(args):
            inner = self._kernel_call(arg)
            if inner is None:
                continue
            kernel_gv, kernel_args, kernel_out = inner
            shapes = [static_shape(a) for a in kernel_args] + [static_shape(kernel_out)]
            epilogue_shapes = static_arguments(args) + [static_shape(out_ty)]
            if any(shape is None for shape in shapes + epilogue_shapes) or _bytes(kernel_out) > STACK_BYTES:
                continue
            key = (kernel_gv.name_hint, epilogue_gv.name_hint, at, str(shapes), str(epilogue_shapes))
            fused = self.fused.get(key, lambda: (
                fused_kernel(self.mod[kernel_gv], self.mod[epilogue_gv], at, shapes, epilogue_shapes),
                f"{kernel_gv.name_hint}_{epilogue_gv.name_hint}"))
            if fused is None:
                continue
            rest = [a for i, a in enumerate(args) if i != at and not isinstance(epilogue_shapes[i], int)]
            return relax.call_tir(fused, relax.Tuple([*kernel_args, *rest]), out_ty)
        return call


def _bytes(ty) -> int:
    return int(np.prod(static_shape(ty), dtype=np.int64)) * tvm.runtime.DataType(ty.dtype).itemsize


@tvm.transform.module_pass(opt_level=0, name="FuseUnitEpilogues")
def fuse_unit_epilogues(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: in the unit-dimensions ``main`` (when there is one), each kernel whose output only an
    elementwise kernel reads called together with it, round after round until no call fuses (see the module
    docstring); the calls left unused removed."""
    if UNIT_DIMS not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    refused = set()  # fusions the lowering refused: not tried again in a later round
    while True:  # a fused kernel is a kernel again: the next round gives it the epilogue that reads its output
        gv = mod.get_global_var(UNIT_DIMS)
        fuser = _FuseEpilogues(mod, variable_uses(mod[gv]), refused)
        func = fuser.visit_expr(mod[gv])
        if not fuser.fused.added:
            return mod
        mod = fuser.builder_.get()
        mod[gv] = relax.analysis.remove_all_unused(func)

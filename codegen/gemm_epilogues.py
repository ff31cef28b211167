"""Above one row, a GEMM and the elementwise kernel that consumes its output are one kernel.

A matmul runs the register-tiled GEMM (:mod:`.kernels.dense` where its weight stays dense, the panel GEMM of
its codec, :mod:`.kernels.panel_gemm`, where it is encoded) into a buffer, and its bias add (with the
residual, or GELU) is a second kernel that reads that buffer back and writes another: at a few hundred rows
both are passes over memory, and the elementwise one gains less from a second thread than the GEMM. Here the
epilogue's blocks follow the GEMM's in one PrimFunc and the matmul schedule inlines them into the tile
write-back (:func:`..schedules.matmul.schedule_matmul`), so the product never reaches memory. A :class:`Gemm`
rebuilds a kernel's GEMM for the epilogue's shape: the dense one from its packed weight's shape, a panel GEMM
from the decoder it carries (a codec computing in stored channel order writes each channel where it belongs).

The GEMM is written over the product's shape as the epilogue reads it (``[batch, seq, N]`` for the
encoder, the activations viewed alike): the leading dims are the schedule's batch loops, run inside the
loop over the weight's panels, so a thread's panel stays in its cache over every sample's rows as in the
two-dimensional GEMM (samples outside the panels, each reusing its rows from L2, measured slower); a panel
GEMM decodes each panel once for all of them.

Applied in the main that runs above one token (:data:`.unit_dims.ANY_DIMS`, or a ``main`` whose rows are
statically more than one), where the matmul's output is read by nothing but the epilogue (each reshape on
the way too), from the epilogue as fusion made it (before its own schedule). The one-row kernel, and the
one-token ``main``, are untouched; a call of ``ANY_DIMS`` with one row (another input dimension above one)
runs the GEMM on that row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .kernel_registry import KERNEL_ATTR, kernel_kind
from .kernels import dense, panel_gemm
from .schedules import matmul
from .tir_nodes import collected, substituted
from .unit_dims import ANY_DIMS
from .relax_calls import call_tir_parts, is_reshape, producer, variable_uses

GEMM_KIND = "dense_gemm"  # the kernel kind (KERNEL_ATTR) of the dense GEMM
EPILOGUE = "_epilogue"  # a fused kernel's kind: its GEMM's, then this


@dataclass
class Gemm:
    """A GEMM as the fusion rebuilds it: ``plain(shape)``, the unscheduled ``f(x [*lead, K], *weights, product)``
    (``shape``: the product's, [*lead, N]; written last); ``schedule(func)``, that function with blocks after it
    scheduled."""

    plain: Callable[[list], tirx.PrimFunc]
    schedule: Callable[[tirx.PrimFunc], tirx.PrimFunc]


def dense_gemm(k: int) -> Gemm:
    """The dense GEMM of ``x`` times the weight [N, K] ``dense.pack`` made (:func:`.kernels.dense.plain`)."""

    def plain(shape: list) -> tirx.PrimFunc:
        return dense.plain(static_as_int32(shape), k)

    def schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
        sch = s_tir.Schedule(func)
        matmul.schedule_matmul(sch, sch.get_sblock(dense.BLOCK), batch_inside=True)
        return sch.mod["main"]

    return Gemm(plain, schedule)


def panel_gemm_of(decode: tirx.PrimFunc, k: int) -> Gemm:
    """The panel GEMM after ``decode`` (a codec's :func:`.kernels.panel_gemm.decoder`)."""
    return Gemm(lambda shape: panel_gemm.plain(decode, shape[:-1], k), lambda func: panel_gemm.schedule(func, decode))


def gemm_of(kernel: tirx.PrimFunc, k: int) -> Gemm | None:
    """The :class:`Gemm` of a GEMM kernel, None for another kernel."""
    decode = panel_gemm.carried_decoder(kernel)
    if decode is not None:
        return panel_gemm_of(decode, k)
    if kernel_kind(kernel) == GEMM_KIND:
        return dense_gemm(k)
    return None


def fused_gemm(epilogue: tirx.PrimFunc, at: int, n: int, gemm: Gemm) -> tirx.PrimFunc | None:
    """``f(x [*lead, K], *weights, *epilogue inputs but the one at ``at``, out)``: ``gemm`` into the buffer the
    epilogue reads as its input ``at`` ([*lead, N]), the epilogue inlined into the tile write-back; None where that
    input is not [*lead, N] (a reshape that splits the channels) or the epilogue is not elementwise over it."""
    product, out = epilogue.params[at], epilogue.params[-1]
    root = epilogue.body.block
    if len(epilogue.params) < 2 or not tvm_ffi.structural_equal(list(product.shape), list(out.shape)) \
            or product.dtype != "float32" or len(product.shape) < 2 \
            or not isinstance(product.shape[-1], tirx.IntImm) or int(product.shape[-1]) != n:
        return None
    if any(iv.iter_type != tirx.IterVar.DataPar for b in collected(root.body, s_tir.SBlock) for iv in b.iter_vars):
        return None
    plain = gemm.plain(list(product.shape))
    written = plain.params[-1]
    nest = substituted(plain.body.block.body, {written: product})
    body = s_tir.SBlock([], [], [], "root", tirx.stmt.SeqStmt([nest, root.body]), None,
                        [product, *plain.body.block.alloc_buffers, *root.alloc_buffers])
    params = [*plain.params[:-1], *(p for i, p in enumerate(epilogue.params) if i != at)]
    func = tirx.PrimFunc(params, s_tir.SBlockRealize([], True, body), epilogue.ret_type, epilogue.attrs)
    if "global_symbol" in (func.attrs or {}):  # the fused kernel gets its own name where it is added
        func = func.without_attr("global_symbol")
    try:
        return gemm.schedule(func)
    except s_tir.ScheduleError:  # an epilogue block that cannot be inlined into the tile
        return None


def _gemm_kernel(mod: tvm.IRModule, expr) -> tuple[tvm.ir.GlobalVar, list] | None:
    """``(GEMM kernel, [x, *weights])`` of a call of it (in :data:`.unit_dims.ANY_DIMS` a matmul calls its many-row
    kernel directly, no row dispatch between)."""
    found = call_tir_parts(expr)
    if found is None:
        return None
    callee, args, _ = found
    return (callee, args) if callee in mod and _is_gemm(mod[callee]) else None


def _is_gemm(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and (kernel_kind(func) == GEMM_KIND
                                                or panel_gemm.DECODER_ATTR in (func.attrs or {}))


@mutator
class _FuseGemmEpilogues(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, unscheduled: tvm.IRModule, uses: dict):
        super().__init__(mod)
        self.mod, self.unscheduled, self.uses = mod, unscheduled, uses
        self.names = {gv.name_hint for gv in unscheduled.get_global_vars()}
        self.fused = {}

    def _gemm_call(self, var):
        """``(kernel, [x, packed])`` of the GEMM ``var`` holds through single-use reshapes, else None."""
        value = producer(var, self.uses, self.lookup_binding, self.mod)
        return None if value is None else _gemm_kernel(self.mod, value)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        found = call_tir_parts(call)
        if found is None or found[0].name_hint not in self.names \
                or kernel_kind(self.mod[found[0]]) is not None or is_reshape(self.mod[found[0]]):
            return call
        epilogue_gv, args, out_ty = found
        epilogue = self.unscheduled[epilogue_gv.name_hint]
        if not isinstance(epilogue, tirx.PrimFunc):
            return call
        for at, arg in enumerate(args):
            gemm = self._gemm_call(arg)
            if gemm is None:
                continue
            kernel_gv, (x, *weights) = gemm
            k = int(x.ty.shape[-1])
            key = (kernel_gv.name_hint, epilogue_gv.name_hint, at)
            if key not in self.fused:
                kernel = self.mod[kernel_gv]
                n = int(kernel.params[-1].shape[-1])
                func = fused_gemm(epilogue, at, n, gemm_of(kernel, k))
                attrs = {**kernel.attrs, KERNEL_ATTR: f"{kernel_kind(kernel)}{EPILOGUE}"}
                for name in ("global_symbol", panel_gemm.DECODER_ATTR):
                    attrs.pop(name, None)
                self.fused[key] = None if func is None else self.builder_.add_func(
                    func.with_attrs(attrs), f"{kernel_gv.name_hint}_{epilogue_gv.name_hint}")
            if self.fused[key] is None:
                continue
            lead = list(getattr(args[at].ty.shape, "values", args[at].ty.shape))[:-1]
            rows = self.builder_.emit(relax.op.reshape(x, [*lead, k]))
            rest = [a for i, a in enumerate(args) if i != at]
            return relax.call_tir(self.fused[key], relax.Tuple([rows, *weights, *rest]), out_ty)
        return call


def fuse_gemm_epilogues(mod: tvm.IRModule, unscheduled: tvm.IRModule) -> tvm.IRModule:
    """In :data:`.unit_dims.ANY_DIMS` (else in ``main``, more than one row: both call their GEMMs directly), each
    GEMM (dense or panel) whose output only an elementwise kernel reads fused with it (see the module docstring);
    ``unscheduled``: the module as fusion made it, where the epilogues are found by name before their schedule."""
    names = {gv.name_hint for gv in mod.get_global_vars()}
    name = ANY_DIMS if ANY_DIMS in names else "main"
    if name not in names or not isinstance(mod[name], relax.Function):
        return mod
    gv = mod.get_global_var(name)
    fuser = _FuseGemmEpilogues(mod, unscheduled, variable_uses(mod[gv]))
    func = fuser.visit_expr(mod[gv])
    if not any(f is not None for f in fuser.fused.values()):
        return mod
    mod = fuser.builder_.get()
    mod[gv] = relax.analysis.remove_all_unused(func)
    return mod


def static_as_int32(shape: list) -> list:
    """``shape`` with its static dims as Python ints (int32 loop variables): the epilogue's shape arrives in int64,
    and :func:`..schedules.matmul.schedule_matmul` peels a static N's tail tile only with int32 indices; unpeeled,
    every tile is predicated on N and runs in scalars (mobilenet's 1000 classes at 8 rows: 16x slower)."""
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in shape]

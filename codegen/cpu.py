"""The LLVM build: lower Relax, schedule every kernel, compile.

Our encoded-weight kernels arrive scheduled and opaque (see ``kernel_for``).
The rest is legalized and fused (exp, erf, tanh and softmax first become
vectorizable polynomials, :mod:`.fast_math`), then scheduled by the first of
``RULES`` that applies (:mod:`.schedules`: convs, depthwise convs, matmuls, row reductions, global pools,
elementwise chains; dlight's CPU reduction rule for other reductions); a kernel no rule
takes gets MetaSchedule's rule-based parallelize / vectorize / unroll rewrite,
so no op runs as a single-threaded scalar loop nest.

dlight's CPU GEMV rule is left out: it vectorizes 128 output channels with
strided gathers of the weight under a 256-step unroll, which LLVM did not finish
compiling in 10 minutes for a 384x96 1x1 conv of PP-OCRv4's detector (every
other function of that model compiles in under a second), and it was no faster
than the rewrite on the bundled models or a dense 4096x4096 GEMV.
"""

from __future__ import annotations

import os
import warnings

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl
from tvm.s_tir import meta_schedule as ms

from bie_compiler.errors import BieWarning

from .conv_transpose import conv_transpose_as_shuffle
from .dedup import deduplicate_prim_funcs
from .fast_math import fast_math
from .fuse_expand_depthwise import fuse_expand_depthwise
from .gemm_epilogues import fuse_gemm_epilogues
from .kernel_registry import kernel_layers
from .parallel_compile import compile_in_parallel
from .schedules import (channel_pool, conv2d, depthwise_conv2d, depthwise_flat, elementwise, expand_depthwise,
                        matmul, pointwise_overlap, reduction)
from .schedules.linear_epilogue import linear_epilogues
from .serial_small_loops import mark_streamed_weights
from .tir_pipeline import TIR_PIPELINE
from .unit_dims import specialize_unit_dims
from .unit_epilogues import fuse_unit_epilogues
from .unit_reshapes import absorb_unit_reshapes
from .unit_views import unit_views
from .weights import Weights, split_weights

SCHEDULED = "tirx.is_scheduled"
NOALIAS = "tirx.noalias"

# Tried in order on each unscheduled PrimFunc; the first that applies schedules it.
RULES = [
    expand_depthwise.ExpandDepthwise(),
    pointwise_overlap.PointwiseOverlap(),
    conv2d.Conv2D(),
    depthwise_flat.DepthwiseFlat(),
    depthwise_conv2d.DepthwiseConv2D(),
    matmul.Matmul(),
    reduction.RowReduction(),
    channel_pool.ChannelPool(),
    dl.cpu.Reduction(),
    elementwise.Elementwise(),
]


@tvm.transform.module_pass(opt_level=0, name="ParallelizeRest")
def parallelize_rest(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Module pass: annotate each unscheduled PrimFunc's root block for parallel outer loops and vectorized
    inner ones, over this process's cores."""
    cores = len(os.sched_getaffinity(0))
    mod = mod.clone()
    rewrite = ms.postproc.RewriteParallelVectorizeUnroll()
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs is not None and func.attrs.get(SCHEDULED, False)):
            continue
        sch = tvm.s_tir.Schedule(func)
        root = sch.get_sblock("root", func_name="main")
        sch.annotate(root, "meta_schedule.parallel", 16 * cores)  # max fused extent of parallel loops
        sch.annotate(root, "meta_schedule.vectorize", 64)  # max extent of a vectorized loop
        sch.annotate(root, "meta_schedule.unroll_explicit", 16)
        if rewrite.apply(sch):
            mod[gv] = sch.mod["main"].with_attr(SCHEDULED, True)
    return mod


@tvm.transform.module_pass(opt_level=0, name="MarkSingleArgumentNoAlias")
def mark_single_argument_noalias(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Mark PrimFuncs of at most one argument (the VM's shape function) ``tirx.noalias``: nothing can alias.

    TVM's LLVM code generator gives no function of a module its noalias arguments (and per-buffer alias
    types) as soon as one function lacks the attribute; the VM's shape function lacks it, and without it
    the conv kernels keep their register accumulators in memory (measured 1.8x slower).
    """
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and len(func.params) <= 1 and not (func.attrs and func.attrs.get(NOALIAS)):
            mod[gv] = func.with_attr(NOALIAS, True)
    return mod


@tvm.transform.module_pass(opt_level=0, name="LinearEpilogues")
def linear_epilogue_pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """:func:`.schedules.linear_epilogue.linear_epilogues` as a pass: branching epilogues made chains."""
    return linear_epilogues(mod, SCHEDULED)


def fusion() -> tvm.transform.Pass:
    """Fast math, upsampling transposed convs as 1x1 convs, legalize, fold constants, fuse (TVM's "zero"
    pipeline, with large pointwise convs fused into the depthwise convs that read them between its FuseOps and
    FuseTIR), branching epilogues made chains: the PrimFuncs the rules schedule."""
    fuse = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
            relax.transform.FuseOps(), fuse_expand_depthwise(), relax.transform.FuseTIR()]
    return tvm.transform.Sequential([fast_math, conv_transpose_as_shuffle, *fuse, linear_epilogue_pass],
                                    name="BieLlvmFusion")


def schedule_fused() -> tvm.transform.Pass:
    """Every PrimFunc of a module :func:`fusion` made scheduled (``RULES``, then the rewrite); kernels identical
    for several layers kept once."""
    passes = [dl.ApplyDefaultSchedule(*RULES), parallelize_rest, deduplicate_prim_funcs]
    return tvm.transform.Sequential(passes, name="BieLlvmScheduleFused")


def schedule() -> tvm.transform.Pass:
    """:func:`fusion`, then :func:`schedule_fused`."""
    return tvm.transform.Sequential([fusion(), schedule_fused()], name="BieLlvmSchedule")


def lower() -> tvm.transform.Pass:
    """TVM's lowering for the VM, then the noalias marking the LLVM code generator needs."""
    return tvm.transform.Sequential([relax.get_pipeline("default"), mark_single_argument_noalias],
                                    name="BieLlvmLowering")


@relax.register_pipeline("bie_llvm")
def pipeline() -> tvm.transform.Pass:
    """The Relax pipeline of the LLVM build (``tvm.compile(mod, target, relax_pipeline="bie_llvm",
    tir_pipeline=TIR_PIPELINE)`` builds an encoded module): :func:`schedule`, then :func:`lower`. Its
    constants stay in the library; :func:`build` moves them out to the artefact's weights file."""
    return tvm.transform.Sequential([schedule(), lower()], name="bie_llvm")


def build(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[relax.VMExecutable, Weights, dict[str, str]]:
    """The pipeline's two halves, and between them the weights taken out of ``main``
    (:func:`.weights.split_weights`) and ``main`` specialized for unit dimensions
    (:func:`.unit_dims.specialize_unit_dims`; there, each kernel called with its epilogue and transposes of unit
    axes made views: :func:`.unit_epilogues.fuse_unit_epilogues`, :func:`.unit_views.unit_views`; the kernels reading
    their arguments in their producers' shapes: :func:`.unit_reshapes.absorb_unit_reshapes`), the kernels' weights
    marked streamed when they outgrow the cache
    (:func:`.serial_small_loops.mark_streamed_weights`): the executable (its kernels compiled one part per core,
    :func:`.parallel_compile.compile_in_parallel`), the weights it takes after the inputs,
    and its kernels' layers (:func:`.kernel_registry.kernel_layers`: fused kernels carry their matmul's)."""
    with target:
        fused = fusion()(mod)
        mod = schedule_fused()(fused)
    mod, weights = split_weights(mod)
    mod = mark_streamed_weights(mod, weights.nbytes)
    try:
        with target:  # the unit passes check that the kernels they make lower for it
            unit = unit_views(fuse_unit_epilogues(specialize_unit_dims(mod)))
            unit = absorb_unit_reshapes(fuse_gemm_epilogues(unit, fused))
        unit = relax.transform.DeadCodeElimination()(unit)
        return compile_in_parallel(unit, target, lower(), TIR_PIPELINE), weights, kernel_layers(unit)
    # a model whose dimensions cannot all be 1 (a reshape needing more rows, say); TVM raises builtin errors of
    # several kinds, and any other fault raises again from the plain build below
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[-1][:200]
        warnings.warn(f"main is not specialized for unit dimensions (one token, one sample): {reason}", BieWarning)
        return compile_in_parallel(mod, target, lower(), TIR_PIPELINE), weights, kernel_layers(mod)

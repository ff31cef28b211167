"""The TIR pipeline our CPU builds lower their PrimFuncs with, registered with TVM as ``TIR_PIPELINE``.

TVM's TIR lowering, then :func:`serial_small_loops` (on the lowered loops: vector and unrolled code counted as what
it executes; a loop kept in both forms defines its variables twice, which ConvertSSA renames) and
:func:`small_buffers_on_stack` (before the host lowering would make them workspace calls). Its own module so that
the build (:mod:`.cpu`) and the unit passes that check a kernel lowers before adding it (:func:`.unit_epilogues.lowers`)
both name it without one importing the other.
"""

from __future__ import annotations

import tvm

from .serial_small_loops import serial_when_small
from .stack_buffers import stack_buffers

TIR_PIPELINE = "bie_cpu"


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="SerialWhenSmall")
def serial_small_loops(func: tvm.tirx.PrimFunc, _mod, _ctx) -> tvm.tirx.PrimFunc:
    """:func:`.serial_small_loops.serial_when_small` on every PrimFunc of the lowered module."""
    return serial_when_small(func)


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="StackBuffers")
def small_buffers_on_stack(func: tvm.tirx.PrimFunc, _mod, _ctx) -> tvm.tirx.PrimFunc:
    """:func:`.stack_buffers.stack_buffers` on every PrimFunc of the lowered module."""
    return stack_buffers(func)


def _tir_pipeline():
    """The pipeline's (lowering, host finalization, device finalization) passes: see the module docstring."""
    lower, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir")
    passes = [lower, serial_small_loops, tvm.tirx.transform.ConvertSSA(), small_buffers_on_stack]
    return tvm.transform.Sequential(passes), finalize_host, finalize_device


tvm.tirx.register_tir_pipeline(TIR_PIPELINE, _tir_pipeline)

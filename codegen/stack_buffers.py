"""Small buffers of constant size allocated on the stack instead of the runtime's workspace pool.

TVM's host lowering (``LowerTVMBuiltin``) turns the allocations of the lowered TIR into
``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` calls. An allocation inside a parallel
loop's body runs once per task iteration: a depthwise conv's padded plane and accumulator tile on
a 7x7 plane are allocated and freed 960 times per call, and those calls cost about a third of its
time (a pool look-up and a thread-local access each). Marked ``disable_lower_builtin``, an
allocation stays an LLVM ``alloca``: stack memory, no call, and a register tile that LLVM can keep
in registers. Only buffers of at most ``STACK_BYTES`` are marked, so that nested allocations stay
far inside a worker thread's stack.
"""

from __future__ import annotations

import tvm_ffi
from tvm import tirx
from tvm.tirx import stmt as s

STACK_BYTES = 16 * 1024
# TVM's own limit (runtime::kMaxStackAlloca): an allocation of fewer bytes is an alloca even in a build without this
# pass (a kernel compiled alone, as the benchmarks' A/B tools do)
TVM_STACK_BYTES = 1024
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # tirx.transform.kDisableLowerTVMBuiltin


def _constant_bytes(buffer) -> int | None:
    size = buffer.dtype.bits * buffer.dtype.lanes // 8
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        size *= int(extent)
    return size


def stack_buffers(func: tirx.PrimFunc, limit: int = STACK_BYTES) -> tirx.PrimFunc:
    """``func`` with each allocation of a constant size up to ``limit`` bytes marked to stay on the stack."""

    def mark(node):
        if not isinstance(node, s.AllocBuffer) or DISABLE_LOWER_BUILTIN in node.annotations:
            return node
        size = _constant_bytes(node.buffer)
        if size is None or size > limit:
            return node
        return s.AllocBuffer(node.buffer, {**node.annotations, DISABLE_LOWER_BUILTIN: tirx.IntImm("bool", 1)}, node.span)

    body = tvm_ffi.structural_map(func.body, [(s.AllocBuffer, mark)], order="post")
    return func if body.same_as(func.body) else func.with_body(body)


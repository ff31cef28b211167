"""Side branches of a fused epilogue folded into their readers, so the epilogue is a chain.

The schedule rules expect an op followed by a chain of elementwise blocks, each read by the next.
Some epilogues branch: the NaN-preserving ReLU ``where(x <= 0, 0, x)`` (``passes/nan_semantics.py``)
reads ``x`` in the comparison block and again in the select. Every elementwise block whose readers are
all elementwise is inlined into them (recomputing a cheap elementwise value is free next to writing and
reading it back), which leaves the producer of the epilogue read only by the block that writes the
output. Blocks read by a reduction (a conv's padding, softmax's exponentials) stay.
"""

from __future__ import annotations

from tvm import s_tir, tirx


def _is_elementwise(block: tirx.SBlock) -> bool:
    return block.init is None and all(iv.iter_type == tirx.IterVar.DataPar for iv in block.iter_vars)


def linear_epilogue(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every elementwise block that only elementwise blocks read inlined into them."""
    sch = s_tir.Schedule(func)
    changed = False
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))):  # readers first: chains fold from the end
        readers = sch.get_consumers(block)
        if not _is_elementwise(sch.get(block)) or not readers or not all(_is_elementwise(sch.get(r)) for r in readers):
            continue
        try:
            sch.compute_inline(block)
            changed = True
        except s_tir.ScheduleError:  # e.g. it writes an output of the function too
            continue
    return sch.mod["main"] if changed else func


def linear_epilogues(mod, scheduled_attr: str):
    """Apply :func:`linear_epilogue` to every PrimFunc of ``mod`` not marked ``scheduled_attr`` (our kernels)."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not (func.attrs is not None and func.attrs.get(scheduled_attr, False)):
            mod[gv] = linear_epilogue(func)
    return mod

"""BitVert offload: on the ``bitvert`` target, bbs-encoded weights run on the simulated accelerator.

A planner step after the encoding plan and the activation calibration
(:func:`plan_offload`: a BitVert program per offloaded weight, its calibrated INT8
activation scale, and each layer's weight profile per accelerator for the manifest),
then a rewrite (:class:`OffloadToBitVert`): each offloaded matmul or conv becomes a
``call_dps_packed`` into the device (``codegen/bitvert.py``). It runs before
``EncodeWeights``, which leaves the calls it replaced alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import tvm

from bie_compiler.codecs import bbs
from bie_compiler.codegen import bitvert
from bie_compiler.progress import Reporter
from bie_compiler.runtime.bitvert.program import Program

from .plan import EncodingPlan
from .weight_uses import Match, as_rows, rewrite_weight_calls


@dataclass
class OffloadPlan:
    """The weights the device runs: name -> (layer index, Program), and their weight profiles by layer index."""

    programs: dict[str, tuple[int, Program]] = field(default_factory=dict)
    profiles: list[tuple[str, dict]] = field(default_factory=list)  # (name, weight profile per accelerator)


def offloadable(plan: EncodingPlan) -> list[str]:
    """The bbs weights of ``plan`` the device takes (none unless its target is bitvert)."""
    if not bitvert.is_bitvert(plan.target):
        return []
    # grouped convs stay on the host (decode + conv): the device's conv has no groups
    return [name for name, (codec, _) in plan.encoded.items() if codec == bbs.NAME and plan.uses[name].groups == 1]


def plan_offload(plan: EncodingPlan, activation_scales: Callable[[list[str]], dict[str, float]],
                 report: Reporter = Reporter()) -> OffloadPlan:
    """The programs of :func:`offloadable` weights; ``activation_scales(names) -> {name: scale}`` calibrates
    the INT8 scale of the activation each multiplies. Marks the offloaded layers' records."""
    names = offloadable(plan)
    offload = OffloadPlan()
    if not names:
        return offload
    scales = activation_scales(names)
    records = {r.name: r for r in plan.records}
    for index, name in enumerate(names):
        enc = plan.encoded[name][1]
        report("offload", f"building the BitVert program of {name}", index + 1, len(names))
        program = bitvert.program(enc, scales[name], name)
        offload.programs[name] = index, program
        offload.profiles.append((name, bitvert.layer_profiles(name, plan.uses[name].matrix(), enc, program)))
        records[name].details.update({"offloaded_to": "bitvert", "activation_scale": program.x_scale})
    return offload


@tvm.transform.module_pass(opt_level=0, name="OffloadToBitVert")
class OffloadToBitVert:
    """Rewrite the weight uses of ``offload``'s weights into calls of the simulated device."""

    def __init__(self, offload: OffloadPlan, names: dict):
        self.offload, self.names = offload, names

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        def rewrite(found: Match):
            if found.use.name not in self.offload.programs:
                return None
            index, program = self.offload.programs[found.use.name]
            if found.use.op == "conv2d":
                return bitvert.offload(found.x, program, index, found.use.conv, found.call.ty)
            return as_rows(found.x, program.n, lambda x2, out_ty: bitvert.offload(x2, program, index, out_ty=out_ty))

        return rewrite_weight_calls(mod, rewrite, self.names) if self.offload.programs else mod

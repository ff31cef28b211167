"""Relax passes: weight uses are planned (codec, config, encoding per weight), then rewritten.

``encoding_passes`` is the sequence the driver runs after planning.
"""

import tvm
from tvm import relax

from .bitvert_offload import OffloadPlan, OffloadToBitVert, plan_offload
from .encode_weights import EncodeWeights
from .nan_semantics import PropagateNaN
from .plan import EncodingPlan, plan_encoding
from .policy import EncodingPolicy


def encoding_passes(plan: EncodingPlan, offload: OffloadPlan | None = None) -> tvm.transform.Pass:
    """Offload (bitvert), encode, and drop the weight constants no call reads any more."""
    offload = offload or OffloadPlan()
    return tvm.transform.Sequential(
        [OffloadToBitVert(offload, plan.names), EncodeWeights(plan), relax.transform.DeadCodeElimination()],
        name="BieEncoding")


__all__ = ["EncodeWeights", "EncodingPlan", "EncodingPolicy", "OffloadPlan", "OffloadToBitVert", "PropagateNaN",
           "encoding_passes", "plan_encoding", "plan_offload"]

"""onnxruntime's own weight-only quantization, the reference point our codecs are compared with.

``MatMulNBits``: onnxruntime's quantizer turns each MatMul with a constant weight into a block-wise
round-to-nearest integer weight (symmetric, one float32 scale per block of K). It needs the ``onnx-ir``
package (the ``bench`` extra).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

NBITS_MISSING = "onnx-ir missing; install it with pip install -e .[bench]"


def matmul_nbits(model: onnx.ModelProto, bits: int = 4, block_size: int = 32, accuracy_level: int | None = None
                 ) -> tuple[onnx.ModelProto | None, str | None]:
    """The model with its MatMuls as ``MatMulNBits`` (RTN, symmetric): (model, None), or (None, why there is
    none). ``accuracy_level`` 4 lets onnxruntime compute with int8 activations (fast); None keeps fp32."""
    try:
        import onnx_ir  # noqa: F401  (MatMulNBitsQuantizer needs it)
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:
        return None, NBITS_MISSING
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the quantizer edits its model in place
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # the quantizer logs every node at INFO
    try:
        quantizer = MatMulNBitsQuantizer(copy, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level)
        quantizer.process()
    finally:
        logging.getLogger().setLevel(level)
    quantized = quantizer.model.model
    if not any(node.op_type == "MatMulNBits" for node in quantized.graph.node):
        return None, "no MatMul with a constant weight for MatMulNBits (it takes MatMul only, not Gemm or Conv)"
    return quantized, None


def nbits_bytes(quantized: onnx.ModelProto, bits: int, weights: dict[str, int]) -> int:
    """Bytes ``quantized`` stores the weights named in ``weights`` ({name: float32 bytes}) in: each quantized
    weight's packed integers, scales and zero points, each weight it left alone at its float32 size."""
    sizes = {i.name: numpy_helper.to_array(i).nbytes for i in quantized.graph.initializer}
    total = 0
    for name, dense in weights.items():
        stored = (f"{name}_Q{bits}", f"{name}_scales", f"{name}_zero_points")
        total += dense if name in sizes else sum(sizes.get(part, 0) for part in stored)
    return total


def fp16_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights rounded to float16 (and back to float32, the values an fp16 model stores)."""
    return {name: w.astype(np.float16).astype(np.float32) for name, w in weights.items()}

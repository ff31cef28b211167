"""onnxruntime's own weight-only quantization, the reference point our codecs are compared with.

``MatMulNBits``: onnxruntime's quantizer turns each MatMul with a constant weight into a block-wise
round-to-nearest integer weight (symmetric, one float32 scale per block of K; or asymmetric, with a packed zero
point per block; or HQQ's optimised scales and float zero points, which needs torch), optionally the Gather
tables too (4-bit round-to-nearest only, ``GatherBlockQuantized``). It needs the ``onnx-ir`` package (the
``bench`` extra).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

NBITS_MISSING = "onnx-ir missing; install it with pip install -e .[bench]"
# 4-bit integer tensors: onnx's numpy view holds one weight a byte, the initializer two
PACKED_4BIT = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


@dataclass(frozen=True)
class NbitsMode:
    """One of onnxruntime's weight-only quantization modes."""

    bits: int = 4  # 2, 4 or 8
    block: int = 32  # weights along K sharing a scale
    symmetric: bool = True  # False: a zero point per block too
    algorithm: str = "RTN"  # or "HQQ" (asymmetric, 4-bit, needs torch)
    gather: bool = False  # the Gather tables too (4-bit RTN only)

    @property
    def label(self) -> str:
        kind = self.algorithm if self.symmetric or self.algorithm != "RTN" else "RTN, asymmetric"
        tables = ", Gather tables too" if self.gather else ""
        return f"onnxruntime MatMulNBits {self.bits}-bit block {self.block} ({kind}{tables})"


def matmul_nbits(model: onnx.ModelProto, bits: int = 4, block_size: int = 32, accuracy_level: int | None = None,
                 mode: NbitsMode | None = None) -> tuple[onnx.ModelProto | None, str | None]:
    """The model with its MatMuls (and Gemms, as :func:`gemms_as_matmuls`) as ``MatMulNBits`` (RTN, symmetric,
    ``bits`` and ``block_size``, or as ``mode`` says): (model, None), or (None, why there is none).
    ``accuracy_level`` 4 lets onnxruntime compute with int8 activations (fast); None keeps fp32."""
    mode = mode or NbitsMode(bits, block_size)
    try:
        import onnx_ir  # noqa: F401  (MatMulNBitsQuantizer needs it)
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError:
        return None, NBITS_MISSING
    if mode.gather and (mode.bits != 4 or mode.algorithm != "RTN"):
        return None, "onnxruntime quantizes Gather tables with 4-bit round-to-nearest only"
    algo = None
    if mode.algorithm == "HQQ":
        try:
            import torch  # noqa: F401  (onnxruntime's HQQ runs in torch)
        except ImportError:
            return None, "onnxruntime's HQQ needs torch (pip install -e .[minilm])"
        algo = HQQWeightOnlyQuantConfig(block_size=mode.block, bits=mode.bits)
    copy = gemms_as_matmuls(model)  # a copy: the quantizer edits its model in place
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # the quantizer logs every node at INFO
    try:
        quantizer = MatMulNBitsQuantizer(copy, bits=mode.bits, block_size=mode.block, is_symmetric=mode.symmetric,
                                         accuracy_level=accuracy_level, algo_config=algo,
                                         op_types_to_quantize=("MatMul", "Gather") if mode.gather else None)
        quantizer.process()
    finally:
        logging.getLogger().setLevel(level)
    quantized = quantizer.model.model
    if not any(node.op_type == "MatMulNBits" for node in quantized.graph.node):
        return None, "no MatMul or Gemm with a constant weight for MatMulNBits (convs are not quantized)"
    return quantized, None


def gemms_as_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each Gemm of a constant weight (transA 0, alpha and beta 1) as MatMul + Add, the
    form MatMulNBits takes; a ``transB`` weight read by nothing else is stored transposed under its own name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {i.name: i for i in out.graph.initializer}
    reads = Counter(name for node in out.graph.node for name in node.input)
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if node.op_type == "Gemm" else None
        trans_b = attrs.get("transB", 0)
        if (weight not in initializers or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or (trans_b and reads[weight] != 1)):
            nodes.append(node)
            continue
        if trans_b:
            initializers[weight].CopyFrom(numpy_helper.from_array(
                np.ascontiguousarray(numpy_helper.to_array(initializers[weight]).T), weight))
        biased = len(node.input) > 2 and node.input[2]
        label = node.name or node.output[0]
        product = f"{node.output[0]}_matmul" if biased else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", node.input[:2], [product], name=f"{label}_matmul"))
        if biased:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], node.output, name=f"{label}_bias"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def nbits_bytes(quantized: onnx.ModelProto, bits: int, weights: dict[str, int]) -> int:
    """Bytes ``quantized`` stores the weights named in ``weights`` ({name: float32 bytes}) in: each quantized
    weight's packed integers, scales and zero points, each weight it left alone at its float32 size."""
    sizes = {i.name: (numpy_helper.to_array(i).size + 1) // 2 if i.data_type in PACKED_4BIT
             else numpy_helper.to_array(i).nbytes for i in quantized.graph.initializer}
    total = 0
    for name, dense in weights.items():
        stored = (f"{name}_Q{bits}", f"{name}_scales", f"{name}_zero_points")
        total += dense if name in sizes else sum(sizes.get(part, 0) for part in stored)
    return total


def fp16_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights rounded to float16 (and back to float32, the values an fp16 model stores)."""
    return {name: w.astype(np.float16).astype(np.float32) for name, w in weights.items()}

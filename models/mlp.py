"""`mlp`: a 3-layer perceptron, 256 -> 512 -> 256 -> 10, on input `x` [batch, 256]
giving `logits` [batch, 10].

It holds each linear-layer form the weight compressor must recognise: fc1 is
MatMul + Add with W [K, N] (90 % pruned), fc2 is Gemm transB=1 with W [N, K]
(70 % pruned), fc3 is Gemm transB=0 with W [K, N] (dense).
"""

import onnx

from .common import GraphBuilder


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    h = g.matmul_linear("x", "fc1", 256, 512, sparsity=0.9)
    h = g.op("Relu", [h], "fc1.relu")
    h = g.gemm_linear(h, "fc2", 512, 256, trans_b=True, sparsity=0.7)
    h = g.op("Relu", [h], "fc2.relu")
    g.gemm_linear(h, "fc3", 256, 10, trans_b=False, output="logits")
    return g.model("mlp", __doc__, {"x": ["batch", 256]}, {"logits": ["batch", 10]})

"""`cnn`: a small image classifier on `image` [batch, 3, 32, 32] giving `logits` [batch, 10]:
Conv 3->16 3x3 + Relu, Conv 16->32 3x3 stride 2 + Relu (75 % pruned), Conv 32->32 1x1 + Relu,
GlobalAveragePool, Flatten, Gemm transB=1 (W [10, 32]).
"""

import onnx

from .common import GraphBuilder


def _conv_relu(g: GraphBuilder, x: str, prefix: str, cin: int, cout: int, k: int, stride: int, sparsity: float = 0.0):
    """Conv (weight [cout, cin, k, k], 'same' padding) + bias + Relu."""
    w = g.weight(f"{prefix}.weight", (cout, cin, k, k), fan_in=cin * k * k, out_axis=0, sparsity=sparsity)
    h = g.op("Conv", [x, w, g.bias(f"{prefix}.bias", cout)], f"{prefix}.conv",
             kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride])
    return g.op("Relu", [h], f"{prefix}.relu")


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    h = _conv_relu(g, "image", "conv1", 3, 16, 3, stride=1)
    h = _conv_relu(g, h, "conv2", 16, 32, 3, stride=2, sparsity=0.75)
    h = _conv_relu(g, h, "conv3", 32, 32, 1, stride=1)
    h = g.op("GlobalAveragePool", [h], "pool")
    h = g.op("Flatten", [h], "flatten", axis=1)
    g.gemm_linear(h, "fc", 32, 10, trans_b=True, output="logits")
    return g.model("cnn", __doc__, {"image": ["batch", 3, 32, 32]}, {"logits": ["batch", 10]})

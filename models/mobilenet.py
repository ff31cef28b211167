"""`mobilenet`: a MobileNetV2-shaped image classifier on `image` [batch, 3, 224, 224] giving `logits`
[batch, 1000]: a 3x3 stride-2 stem, 17 inverted residual blocks (1x1 expansion, 3x3 depthwise,
1x1 projection; expansion 6 except the first), a 1x1 conv to 1280 channels, global average pool and
a Gemm classifier. Batch norms are folded into the convs' biases and ReLU6 is Clip(0, 6), as an
exported, optimized MobileNetV2 has them. Weights are trained-like random values: right for speed.
"""

import numpy as np
import onnx

from .common import GraphBuilder

# (expansion t, output channels c, repeats n, first stride s), MobileNetV2's table.
BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv(g: GraphBuilder, x: str, prefix: str, cin: int, cout: int, k: int, stride: int = 1,
          groups: int = 1, relu6: bool = True) -> str:
    w = g.weight(f"{prefix}.weight", (cout, cin // groups, k, k), fan_in=cin // groups * k * k, out_axis=0)
    h = g.op("Conv", [x, w, g.bias(f"{prefix}.bias", cout)], f"{prefix}.conv",
             kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=groups)
    if not relu6:
        return h
    return g.op("Clip", [h, g.const(f"{prefix}.min", np.float32(0)), g.const(f"{prefix}.max", np.float32(6))],
                f"{prefix}.relu6")


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    h, cin = _conv(g, "image", "features.0", 3, 32, 3, stride=2), 32
    index = 1
    for t, c, n, s in BLOCKS:
        for r in range(n):
            p, stride, hidden = f"features.{index}", s if r == 0 else 1, cin * t
            x = h
            if t != 1:
                h = _conv(g, h, f"{p}.expand", cin, hidden, 1)
            h = _conv(g, h, f"{p}.depthwise", hidden, hidden, 3, stride=stride, groups=hidden)
            h = _conv(g, h, f"{p}.project", hidden, c, 1, relu6=False)
            if stride == 1 and cin == c:
                h = g.op("Add", [x, h], f"{p}.residual")
            cin, index = c, index + 1
    h = _conv(g, h, f"features.{index}", cin, 1280, 1)
    h = g.op("GlobalAveragePool", [h], "pool")
    h = g.op("Flatten", [h], "flatten", axis=1)
    g.gemm_linear(h, "classifier", 1280, 1000, trans_b=True, output="logits")
    return g.model("mobilenet", __doc__, {"image": ["batch", 3, 224, 224]}, {"logits": ["batch", 1000]})

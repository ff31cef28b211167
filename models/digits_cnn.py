"""`digits_cnn`: a real trained convolutional classifier of scikit-learn's 8x8 digits, trained here in numpy in
seconds (no torch): `pixels` [batch, 64] (as `digits`) reshaped to one 8x8 channel, Conv 1->16 3x3 + Relu,
Conv 16->32 3x3 + Relu, Conv 32->32 3x3 stride 2 + Relu (4x4), Flatten, Gemm 512->10 (transB=1) to `logits`.
Trained on the images `digits` trains on (Adam, cross-entropy, full precision); the same 500 are held out.
"""

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from .common import GraphBuilder
from .digits import TRAIN, images

CONVS = [(1, 16, 1), (16, 32, 1), (32, 32, 2)]  # (in channels, out channels, stride); 3x3 kernels, padding 1
EPOCHS, BATCH, LEARNING_RATE = 12, 32, 3e-3


def _patches(x: np.ndarray, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """3x3 patches of ``x`` [B, C, H, W] padded by 1: [B * OH * OW, C * 9] in OIHW's (c, kh, kw) order."""
    b, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    cols = np.empty((b, oh, ow, c, 3, 3), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[..., i, j] = padded[:, :, i:i + stride * (oh - 1) + 1:stride,
                                     j:j + stride * (ow - 1) + 1:stride].transpose(0, 2, 3, 1)
    return cols.reshape(b * oh * ow, c * 9), (oh, ow)


def _patches_backward(d_cols: np.ndarray, shape: tuple, stride: int, out: tuple[int, int]) -> np.ndarray:
    """The gradient of :func:`_patches`: each patch's gradient added back where it was read from."""
    b, c, h, w = shape
    oh, ow = out
    d = d_cols.reshape(b, oh, ow, c, 3, 3)
    padded = np.zeros((b, c, h + 2, w + 2), d_cols.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += \
                d[..., i, j].transpose(0, 3, 1, 2)
    return padded[:, :, 1:-1, 1:-1]


def _forward(params: list, x: np.ndarray):
    """Logits and what the backward pass needs."""
    h, saved = x.reshape(-1, 1, 8, 8), []
    for (w, bias), (_, cout, stride) in zip(params[:-1], CONVS):
        cols, (oh, ow) = _patches(h, stride)
        y = np.maximum(cols @ w.reshape(cout, -1).T + bias, 0)
        saved.append((cols, h.shape, (oh, ow), y))
        h = y.reshape(len(x), oh, ow, cout).transpose(0, 3, 1, 2)
    flat = h.reshape(len(x), -1)
    w, bias = params[-1]
    return flat @ w.T + bias, saved, flat


def _gradients(params: list, x: np.ndarray, labels: np.ndarray) -> list:
    logits, saved, flat = _forward(params, x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(x)), labels] -= 1
    d_logits = p / len(x)
    grads = [(d_logits.T @ flat, d_logits.sum(0))]
    d_h = (d_logits @ params[-1][0]).reshape(len(x), *CONVS[-1][1:2], *saved[-1][2])
    for (w, _), (cin, cout, stride), (cols, shape, out, y) in reversed(list(zip(params[:-1], CONVS, saved))):
        d_y = d_h.transpose(0, 2, 3, 1).reshape(-1, cout) * (y > 0)
        grads.insert(0, ((d_y.T @ cols).reshape(w.shape), d_y.sum(0)))
        d_h = _patches_backward(d_y @ w.reshape(cout, -1), shape, stride, out)
    return grads


def train(seed: int = 0) -> list:
    """[(weight, bias)] of the convs (OIHW) and of the classifier ([10, 512]), trained with Adam."""
    x, y = images()
    x, y = x[:TRAIN], y[:TRAIN]
    rng = np.random.default_rng(seed)
    params = [(rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9)), np.zeros(cout))
              for cin, cout, _ in CONVS]
    params.append((rng.standard_normal((10, 512)) * np.sqrt(1 / 512), np.zeros(10)))
    params = [[a.astype(np.float32) for a in p] for p in params]
    moments = [[[np.zeros_like(a), np.zeros_like(a)] for a in p] for p in params]
    step = 0
    with threadpool_limits(1):  # small matrices: threads only contend; and one thread sums reproducibly
        for _ in range(EPOCHS):
            order = rng.permutation(len(x))
            for start in range(0, len(x), BATCH):
                batch = order[start:start + BATCH]
                step += 1
                for p, g, m in zip(params, _gradients(params, x[batch], y[batch]), moments):
                    for i in range(2):  # Adam, betas 0.9 / 0.999
                        m[i][0] = 0.9 * m[i][0] + 0.1 * g[i]
                        m[i][1] = 0.999 * m[i][1] + 0.001 * g[i] ** 2
                        update = (m[i][0] / (1 - 0.9**step)) / (np.sqrt(m[i][1] / (1 - 0.999**step)) + 1e-8)
                        p[i] = (p[i] - LEARNING_RATE * update).astype(np.float32)
    return params


def build(seed: int = 0) -> onnx.ModelProto:
    params = train(seed)
    g = GraphBuilder(seed)
    h = g.op("Reshape", ["pixels", g.const("image_shape", np.array([-1, 1, 8, 8], np.int64))], "image")
    for i, ((w, bias), (_, _, stride)) in enumerate(zip(params[:-1], CONVS), 1):
        h = g.op("Conv", [h, g.const(f"conv{i}.weight", w), g.const(f"conv{i}.bias", bias)], f"conv{i}.conv",
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride])
        h = g.op("Relu", [h], f"conv{i}.relu")
    h = g.op("Flatten", [h], "flatten", axis=1)
    w, bias = params[-1]
    g.op("Gemm", [h, g.const("fc.weight", w), g.const("fc.bias", bias)], "fc.gemm", "logits", transB=1)
    return g.model("digits_cnn", __doc__, {"pixels": ["batch", 64]}, {"logits": ["batch", 10]})

"""The simulated BitVert device as TVM packed functions that a compiled Relax program calls.

``bie.bitvert.matmul(x [M, K], layer, header, *program arrays, out [M, N])`` and
``bie.bitvert.conv2d(x NCHW, layer, conv, header, *program arrays, out NCHW)`` run one
offloaded layer through the bit-serial simulator (destination-passing style: the VM
allocates ``out``). The artefact stores only these names, so :func:`register` must
run before a VirtualMachine is built on a bitvert artefact. Every call appends
(layer index, M) to :data:`RUN_LOG`, from which the accelerator report is computed; while
:data:`CAPTURE` is a list, each call also appends its layer index, the float input it took
(a conv's NCHW), the rows it multiplied [M, K] (a conv's im2col rows) and the rows it returned [M, N]
(``check``'s per-layer parity).
"""

from __future__ import annotations

import numpy as np
import tvm

from .program import Program
from .simulator import run_layer

MATMUL = "bie.bitvert.matmul"
CONV2D = "bie.bitvert.conv2d"
RUN_LOG: list[tuple[int, int]] = []  # (layer index, outputs M) per offloaded call, in call order
CAPTURE: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] | None = None  # (layer, x, x rows, y rows)


def conv_header(strides, padding, dilation, kernel_shape) -> np.ndarray:
    """int64 [12]: strides (2), padding top/left/bottom/right (4), dilation (2), O, I, kh, kw."""
    return np.array([*strides, *padding, *dilation, *kernel_shape], np.int64)


def im2col(x: np.ndarray, conv: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """NCHW ``x`` -> rows [B*OH*OW, kh*kw*C] with C fastest (the codecs' conv layout), and (B, OH, OW)."""
    sh, sw, pt, pl, pb, pr, dh, dw, _, c, kh, kw = (int(v) for v in conv)
    b, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    taps = [xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]  # each [B, C, OH, OW]
    cols = np.stack(taps, axis=1)  # [B, kh*kw, C, OH, OW]
    return cols.transpose(0, 3, 4, 1, 2).reshape(b * oh * ow, kh * kw * c), (b, oh, ow)


def _matmul(x, layer, header, *rest):
    *arrays, out = rest
    xv = x.numpy()
    RUN_LOG.append((int(layer.numpy()[0]), int(xv.shape[0])))
    y = run_layer(Program.from_arrays(header.numpy(), *(a.numpy() for a in arrays)), xv)
    if CAPTURE is not None:
        CAPTURE.append((int(layer.numpy()[0]), xv, xv, y))
    out.copyfrom(y)


def _conv2d(x, layer, conv, header, *rest):
    *arrays, out = rest
    xv = x.numpy()
    rows, (b, oh, ow) = im2col(xv, conv.numpy())
    RUN_LOG.append((int(layer.numpy()[0]), int(rows.shape[0])))
    y = run_layer(Program.from_arrays(header.numpy(), *(a.numpy() for a in arrays)), rows)
    if CAPTURE is not None:
        CAPTURE.append((int(layer.numpy()[0]), xv, rows, y))
    out.copyfrom(np.ascontiguousarray(y.reshape(b, oh, ow, -1).transpose(0, 3, 1, 2)))


def register() -> None:
    """Make the device's packed functions callable by compiled programs (idempotent)."""
    tvm.register_global_func(MATMUL, _matmul, override=True)
    tvm.register_global_func(CONV2D, _conv2d, override=True)

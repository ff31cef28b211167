"""Target ``bitvert``: offloaded layers become BitVert programs run by the simulated device.

The host part is LLVM (``codegen/cpu.py``); the target is the host's LLVM target with
the key ``bitvert``. An offloaded matmul or conv becomes
``R.call_dps_packed("bie.bitvert.matmul" | "bie.bitvert.conv2d", x, layer, [conv,] *program)``,
its program (tiling, bit columns and metadata in PE order, chunks, unshuffle index,
scales and the calibrated activation scale) stored as constants of the artefact.
Each offloaded layer also gets its weight profile per accelerator (the performance
model's weight-dependent part) for the manifest, so ``run --report`` needs only M.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from bie_compiler.codecs import Encoded, bbs, bitwave, int8
from bie_compiler.runtime.bitvert import perf_model
from bie_compiler.runtime.bitvert.device import CONV2D, MATMUL, conv_header
from bie_compiler.runtime.bitvert.program import Program, build

TARGET_KEY = "bitvert"


def make_target(host: tvm.target.Target) -> tvm.target.Target:
    """The bitvert target: ``host`` (an LLVM target) marked with the bitvert key."""
    return tvm.target.Target({**{k: v for k, v in host.export().items() if k in ("kind", "mcpu")},
                              "keys": [TARGET_KEY, "cpu"]})


def is_bitvert(target: tvm.target.Target) -> bool:
    return TARGET_KEY in list(target.keys)


def program(enc: Encoded, x_scale: float, name: str) -> Program:
    """The BitVert program of a ``bbs`` encoding: the same pruned INT8 weights, scales and channel split.

    A pruned group stores ``w = kept * 2^shift + offset``; the program takes the
    zero point ``-offset``, so ``w - offset`` has the BBS column structure.
    """
    if enc.codec != bbs.NAME:
        raise ValueError(f"{name}: BitVert runs bbs encodings, not {enc.codec}")
    n, k = enc.shape
    position = enc.arrays["position"]
    count = int(enc.header["sensitive"])
    pruned_columns = int(enc.header["pruned_columns"])
    weights = bbs.decode_stored(enc)[position, :k]  # channel order
    sensitive = position < count
    _, offset = bbs.group_offsets(bbs.from_lanes(enc.arrays["meta"], n - count), pruned_columns,
                                  str(enc.header["method"]))  # [pruned stored rows, groups]
    zero_points = np.zeros((n, offset.shape[1]), np.int64)
    zero_points[~sensitive] = -offset[position[~sensitive] - count]
    return build(weights, enc.arrays["scales"][position], sensitive, pruned_columns, int(enc.header["group"]),
                 zero_points, x_scale, name)


def offload(x: relax.Expr, program: Program, layer: int, conv=None, out_ty=None) -> relax.Call:
    """The call that runs ``program`` on ``x`` ([M, K] for a matmul, NCHW for ``conv``, a ConvSpec)."""
    constants = [np.array([layer], np.int64)]
    if conv is not None:
        constants.append(conv_header(conv.strides, conv.padding, conv.dilation, conv.kernel_shape))
    constants += program.arrays()
    if out_ty is None:
        m = x.ty.shape.values[0]
        out_ty = relax.TensorType([m, program.n], "float32")
    return relax.call_dps_packed(MATMUL if conv is None else CONV2D, [x, *map(relax.const, constants)], out_ty)


def weight_profiles(name: str, weight: np.ndarray, program: Program, bitvert_bytes: int,
                    bitwave_weight: np.ndarray | None = None, bitwave_bytes: int | None = None) -> dict:
    """JSON-able weight profiles of one offloaded layer (float weight [N, K]) for every accelerator."""
    baseline = int8.quantize(weight)[0].astype(np.int8)  # the INT8 model the baselines run
    layer = perf_model.LayerWorkload(name, baseline, 0, program.kept_columns(), bitvert_bytes, bitwave_weight,
                                     bitwave_bytes)
    return {acc: prof.to_json() for acc, prof in perf_model.profiles(layer).items()}


def layer_profiles(name: str, weight: np.ndarray, enc: Encoded, program: Program) -> dict:
    """:func:`weight_profiles` of an offloaded bbs layer, BitWave running its own bit-flipped weights
    (its codec at the same pruned columns, so both store the same bits per pruned weight)."""
    config = bitwave.Config(pruned_columns=int(enc.header["pruned_columns"]))
    flipped = bitwave.prune(weight, config)[0]
    return weight_profiles(name, weight, program, enc.nbytes, flipped, bitwave.encode(weight, config).nbytes)

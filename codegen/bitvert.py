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

from bie_compiler.runtime.bitvert import perf_model
from bie_compiler.runtime.bitvert.device import CONV2D, MATMUL, conv_header
from bie_compiler.runtime.bitvert.program import Program

TARGET_KEY = "bitvert"


def make_target(host: tvm.target.Target) -> tvm.target.Target:
    """The bitvert target: ``host`` (an LLVM target) marked with the bitvert key."""
    return tvm.target.Target({**{k: v for k, v in host.export().items() if k in ("kind", "mcpu")},
                              "keys": [TARGET_KEY, "cpu"]})


def is_bitvert(target: tvm.target.Target) -> bool:
    return TARGET_KEY in list(target.keys)


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


def int8_baseline(weight: np.ndarray) -> np.ndarray:
    """The INT8 model the baselines run: symmetric per output channel, [-127, 127] (weight [N, K])."""
    peak = np.abs(weight).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)


def weight_profiles(name: str, weight: np.ndarray, program: Program, bitvert_bytes: int,
                    bitwave_weight: np.ndarray | None = None, bitwave_bytes: int | None = None) -> dict:
    """JSON-able weight profiles of one offloaded layer (float weight [N, K]) for every accelerator."""
    layer = perf_model.LayerWorkload(name, int8_baseline(weight), 0, program.kept_columns(), bitvert_bytes,
                                     bitwave_weight, bitwave_bytes)
    return {acc: prof.to_json() for acc, prof in perf_model.profiles(layer).items()}

"""The nwc synthesis network as a Relax function, built with the LLVM pipeline (:func:`.cpu.build`).

``main(latents [m, latent] float32, levels [m] int64) -> chunks [m, 16]`` computes what
:meth:`bie_compiler.codecs.nwc_network.Network.run` ("synthesis") computes in numpy: the same layers,
the quality embedding gathered per row (``take``). The network's parameters are constants of the
function, so the build lifts them into its weights, passed after the two inputs. This is the decoder
the issue asks to compile; it is not yet wired into artefacts (the latents still need the tANS decode,
which stays the numpy reference decoder here).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from bie_compiler.codecs import nwc_network
from .cpu import build
from .lift_constants import NUM_INPUT_ATTR


def synthesis_module(network: nwc_network.Network) -> tvm.IRModule:
    p = network.params
    const = relax.const
    m = tirx.Var("m", "int64")
    latents = relax.Var("latents", relax.TensorType([m, network.latent], "float32"))
    levels = relax.Var("levels", relax.TensorType([m], "int64"))
    bb = relax.BlockBuilder()
    op = relax.op
    with bb.function("main", [latents, levels], attrs={NUM_INPUT_ATTR: 2}):
        with bb.dataflow():
            h = bb.emit(op.add(op.matmul(latents, const(p["synthesis.in.w"])), const(p["synthesis.in.b"])))
            for b in range(int(network.config["blocks"])):
                inner = bb.emit(op.nn.relu(op.add(op.matmul(h, const(p[f"synthesis.block{b}.w1"])),
                                                  const(p[f"synthesis.block{b}.b1"]))))
                outer = op.add(op.matmul(inner, const(p[f"synthesis.block{b}.w2"])), const(p[f"synthesis.block{b}.b2"]))
                embedding = np.ascontiguousarray(p["synthesis.embedding"][:, b])  # [levels, width]
                h = bb.emit(op.multiply(op.add(h, outer), op.take(const(embedding), levels, axis=0, mode="clip")))
            out = bb.emit_output(op.add(op.matmul(h, const(p["synthesis.out.w"])), const(p["synthesis.out.b"])))
        bb.emit_func_output(out)
    return bb.get()


class Synthesis:
    """The compiled synthesis network of ``network`` for ``target``, callable on numpy arrays."""

    def __init__(self, network: nwc_network.Network, target: tvm.target.Target):
        executable, weights = build(synthesis_module(network), target)
        self._vm = relax.VirtualMachine(executable, tvm.cpu())
        self._weights = [tvm.runtime.tensor(a) for _, a in weights.tensors]

    def __call__(self, latents: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Chunks float32 [M, 16] of integer latents [M, latent] at levels [M]."""
        out = self._vm["main"](tvm.runtime.tensor(np.ascontiguousarray(latents, np.float32)),
                               tvm.runtime.tensor(np.ascontiguousarray(levels, np.int64)), *self._weights)
        return out.numpy()

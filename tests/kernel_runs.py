"""Helpers the tests share: build a PrimFunc alone and run it, a panel GEMM's decoder alone, and the relative-error
check."""

import numpy as np
import tvm

from bie_compiler.codegen.kernels import panel_gemm


def build(func, target):
    """``func`` compiled alone for ``target``: its packed function."""
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target).mod["main"]


def call(kernel, x, constants, out_shape) -> np.ndarray:
    """The built ``kernel(x, *constants, out)``; ``out`` as numpy."""
    out = tvm.runtime.empty(out_shape, "float32")
    kernel(tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in constants], out)
    return out.numpy()


def run(func, target, x, constants, out_shape) -> np.ndarray:
    """``func(x, *constants, out)`` built for ``target`` and run once."""
    return call(build(func, target), x, constants, out_shape)


def assert_close(got, want, tolerance: float = 1e-5, context=None) -> None:
    """``got`` within ``tolerance`` of ``want``, relative to the largest magnitude of ``want``."""
    error = np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert error < tolerance, (error, context)


def computed_constants(call, target) -> list[np.ndarray]:
    """The constants ``call``'s kernels read: its own, or those its at-load function computes from the stored
    arrays (``KernelCall.at_load``: ``call.constants`` only give their shapes), the buffers filled with garbage
    first."""
    if call.at_load is None:
        return call.constants
    out = [tvm.runtime.tensor(np.full(c.shape, 0x5A, c.dtype)) for c in call.constants]
    build(call.at_load.func, target)(*[tvm.runtime.tensor(a) for a in call.at_load.stored], *out)
    return [o.numpy() for o in out]


def decoded_panels(gemm, target, n: int) -> np.ndarray:
    """The weights the decoder that the panel GEMM ``gemm`` (a KernelCall) carries writes (``panel_gemm.decoder``),
    run alone for ``target``, as stored rows [n, K rounded up to its decode's group]; its decode's kind."""
    decoder = panel_gemm.carried_decoder(gemm.func)
    attrs = panel_gemm.DecoderAttrs.read(decoder)
    buffers = list(decoder.params)
    views = [gemm.constants[i].view(buffers[attrs.holders + v].dtype) for v, i in enumerate(attrs.views)]
    decoded, *scales = buffers[attrs.holders + len(views):]
    out = [tvm.runtime.empty([int(d) for d in b.shape], "float32") for b in (decoded, *scales)]
    build(decoder, target)(*[tvm.runtime.tensor(a) for a in [*gemm.constants, *views]], *out)
    panels = out[0].numpy()
    return panels.transpose(0, 2, 1).reshape(-1, panels.shape[1])[:n], attrs.decode

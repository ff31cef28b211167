"""Helpers the tests share: build a PrimFunc alone and run it, and the relative-error check."""

import numpy as np
import tvm


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

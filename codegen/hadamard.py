"""The activation side of a rotated weight (``codecs.rotation``): ``x' = x R^T``, a fast Walsh-Hadamard transform.

``f(x [m, K], signs uint8 [ceil(K / 8)], out [m, K])``: each row's signs flipped, then the normalised
Hadamard transform of each block of K (the powers of two of its binary expansion), O(K log K) per row.
Written as scheduled low-level TIR (rows in parallel), in two steps per block, as
``H_b = H_(b/16) (x) H_16``:

* the block as chunks of 16 consecutive inputs, each multiplied by ``H_16`` (16 broadcast FMAs
  per chunk into one 16-lane vector: the four butterfly stages of stride < 16 would each need
  in-register shuffles), the signs and ``1 / sqrt(b)`` applied on the way;
* the remaining stages as in-place butterflies between whole 16-lane vectors.

The signs are stored packed (:func:`bie_compiler.codecs.base.pack_bits`: input ``k`` in byte
``k % KB``, bit ``k // KB``), so the artefact keeps the bit per input its encoding counts; each call
first spreads them into a float ``+-1`` vector, a few vector operations.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as T

from bie_compiler.codecs import rotation
from bie_compiler.codecs.base import packed_width

from .kernel_registry import finish

KIND = "hadamard"
LANES = 16  # one AVX-512 vector of float32: the chunk H_16 acts on


def _one(dtype: str = "float32") -> tirx.PrimExpr:
    return tirx.const(1, dtype)


def _sign(bit: tirx.PrimExpr) -> tirx.PrimExpr:
    """``1 - 2 bit`` as float32: +1 for a clear bit, -1 for a set one."""
    return _one() - tirx.const(2, "float32") * tirx.Cast("float32", bit)


def _hadamard_entry(r: tirx.PrimExpr, t: int) -> tirx.PrimExpr:
    """``H_16[r, t]`` (Sylvester's order, unnormalised): the parity of ``popcount(r & t)`` as a sign."""
    v = r & t
    return _sign((v ^ (v >> 1) ^ (v >> 2) ^ (v >> 3)) & 1)


def kernel(k: int) -> tirx.PrimFunc:
    """The scheduled transform for rows of ``k`` inputs (any number of rows)."""
    kb = packed_width(k)
    with IRBuilder() as builder:
        with T.prim_func(private=True):
            T.func_name(f"{KIND}_{k}")
            T.func_attr({"tirx.noalias": True})
            x_handle, signs_handle, out_handle = T.arg("x", T.handle()), T.arg("signs", T.handle()), T.arg("out", T.handle())
            m = T.int64()
            x = T.match_buffer(x_handle, (m, k), "float32")
            signs = T.match_buffer(signs_handle, (kb,), "uint8")
            out = T.match_buffer(out_handle, (m, k), "float32")
            factor = T.alloc_buffer((8 * kb,), "float32")  # +-1 for input k at factor[k]
            with T.serial(0, 8) as bit:
                with T.vectorized(0, kb) as byte:
                    T.buffer_store(factor, _sign((signs[byte] >> tirx.Cast("uint8", bit)) & _one("uint8")),
                                   [bit * kb + byte])
            with T.parallel(0, m) as i:
                start = 0
                for b in rotation.blocks(k):
                    _block(x, factor, out, i, start, b)
                    start += b
    return finish(builder.get(), KIND)


def _block(x, factor, out, i, start: int, b: int) -> None:
    """Emit the transform of row ``i``'s block ``[start, start + b)`` into ``out``."""
    chunk = min(b, LANES)
    norm = tirx.const(1 / np.sqrt(b), "float32")
    with T.serial(0, b // chunk) as c:
        with T.vectorized(0, chunk) as r:
            total = tirx.const(0, "float32")
            for t in range(chunk):
                kk = start + c * chunk + t
                total = total + x[i, kk] * factor[kk] * _hadamard_entry(r, t)
            T.buffer_store(out, total * norm, [i, start + c * chunk + r])
    h = chunk
    while h < b:  # pairs of vectors (j, j + h) in each group of 2h
        with T.serial(0, b // (2 * h)) as g:
            with T.serial(0, h // chunk) as u:
                with T.vectorized(0, chunk) as lane:
                    j = start + g * (2 * h) + u * chunk + lane
                    low, high = T.Bind(out[i, j]), T.Bind(out[i, j + h])
                    T.buffer_store(out, low + high, [i, j])
                    T.buffer_store(out, low - high, [i, j + h])
        h *= 2

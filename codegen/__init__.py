"""Kernels and schedules: from an encoded weight to a scheduled PrimFunc that computes from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from bie_compiler.codecs import Encoded, bie_binary, bie_bitplane, bie_blocked
from bie_compiler.codecs.base import packed_width

from .kernels import bitplane, sparse_index

KERNEL_ATTR = "bie.kernel"  # marks our kernels in the IRModule; value: the kernel kind


@dataclass
class KernelCall:
    """A PrimFunc ``f(x [M, K], *constants, out [M, N])``, scheduled, and the constants it reads."""

    kind: str
    func: tirx.PrimFunc
    constants: list[np.ndarray]


def kernel_for(enc: Encoded, target: tvm.target.Target) -> KernelCall:
    """The kernel that computes ``x @ W.T`` from ``enc`` on ``target``."""
    if target.kind.name != "llvm":
        raise NotImplementedError(f"no {target.kind.name} kernels yet")
    layout = enc.header.get("layout")
    if enc.codec == bie_bitplane.NAME or layout == "bitmap":
        call = _bitplane_call(enc)
    elif layout == "index":
        call = _global_index_call(enc)
    elif enc.codec == bie_blocked.NAME:
        call = _blocked_index_call(enc)
    else:
        raise NotImplementedError(f"codec {enc.codec!r} has no kernel")
    # Opaque (op_pattern 8): FuseOps must not merge a kernel into a function our schedule does not know.
    call.func = call.func.with_attrs({KERNEL_ATTR: call.kind, "op_pattern": 8, "tirx.is_scheduled": True})
    return call


def _bitplane_call(enc: Encoded) -> KernelCall:
    n, k = enc.shape
    planes, signs, scales = (enc.arrays[a] for a in ("planes", "signs", "scales"))
    if enc.codec == bie_bitplane.NAME:
        top_bit = enc.header["bits"] - 2
        group = bie_bitplane.scale_group(k, enc.header["group_size"])
    else:  # bie-binary bitmap: one plane of significance 1, one scale per channel
        top_bit, group = 0, 8 * packed_width(k)
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    holders = [te.placeholder(a.shape, a.dtype.name, name) for name, a in zip(("planes", "signs", "scales"), (planes, signs, scales))]
    out = bitplane.compute(x, *holders, k=k, top_bit=top_bit, group=group)
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    bitplane.schedule_llvm(sch)
    return KernelCall("bitplane", sch.mod["main"], [planes, signs, scales])


def _nonempty(entries: np.ndarray) -> np.ndarray:
    # A layer with no non-zeros still needs a buffer to bind; the kernel never reads it.
    return entries if entries.size else np.zeros(1, entries.dtype)


def _global_index_call(enc: Encoded) -> KernelCall:
    n, k = enc.shape
    entries = _nonempty(enc.arrays["entries"])
    _, sign_bit = bie_binary.index_entry_dtype(k)
    func = sparse_index.global_index(n=n, k=k, nnz=entries.size, entry_dtype=entries.dtype.name, sign_bit=sign_bit)
    return KernelCall("global_index", func, [enc.arrays["indptr"], entries, enc.arrays["scales"]])


def _blocked_index_call(enc: Encoded) -> KernelCall:
    n, k = enc.shape
    entries, counts = _nonempty(enc.arrays["entries"]), enc.arrays["counts"]
    func = sparse_index.blocked_index(
        n=n, k=k, nnz=entries.size, block_size=int(enc.header["block_size"]),
        entry_dtype=entries.dtype.name, count_dtype=counts.dtype.name,
    )
    return KernelCall("blocked_index", func, [enc.arrays["indptr"], counts, entries, enc.arrays["scales"]])

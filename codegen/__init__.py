"""Kernels and schedules: from an encoded weight to a scheduled PrimFunc that computes from it.

``KERNELS`` maps (codec, op, target kind) to a builder ``(Encoded, ConvSpec | None)
-> KernelCall``. A matmul kernel is ``f(x [M, K], *constants, out [M, N])`` with a
symbolic M; a conv kernel is ``f(x NCHW, *constants, out NCHW)`` for the conv
described by its ConvSpec (weights in codec layout [O, kh * kw * I / groups], I fastest).
On the CPU, convs and matmuls above one row get a *decode kernel* instead
(``KernelCall.decodes``, :mod:`.kernels.decode`): the dense weight for the plain
op, decoded once per call, the multiplication left to the dense schedules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from bie_compiler.codecs import Encoded, bbs, bie_binary, bie_bitplane, bie_blocked, bitwave, tans
from bie_compiler.codecs import int8 as int8_codec
from bie_compiler.codecs.base import packed_width

from .weights import PRECISION_ATTR, TANS_ATTR
from .kernels import (bbs_cuda, bbs_decoded, bbs_lut, bitplane, decode, dense, int8, sparse_index, sparse_index_cuda,
                      tans_cuda, tans_matmul)

KERNEL_ATTR = "bie.kernel"  # marks our kernels in the IRModule; value: the kernel kind
LAYER_ATTR = "bie.layer"  # on our kernels in the IRModule: the name of the weight they compute from


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution, NCHW data and OIHW weights."""

    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    kernel_shape: tuple[int, int, int, int]  # O, I / groups, kh, kw
    groups: int = 1


SMALL_BATCH_ROWS = 1  # matmuls with at most this many rows use ``func``; larger ones ``large_batch``


@dataclass
class KernelCall:
    """A scheduled PrimFunc and the constants it reads after the activation.

    ``large_batch``, if set, is a kernel over the same constants for matmuls
    above SMALL_BATCH_ROWS rows; the pass dispatches on the row count.
    ``decodes``: ``func`` is a decode kernel ``f(x, *constants, W)`` (``x`` not
    read), ``W`` the weight of the plain op (matmul: [K, N]; conv: OIHW).
    """

    kind: str
    func: tirx.PrimFunc
    constants: list[np.ndarray]
    large_batch: "KernelCall | None" = None
    decodes: bool = False


def _into(enc: Encoded, conv: ConvSpec | None) -> tuple[decode.Layout, int]:
    """The layout a decode kernel writes and the rank of the activation it takes."""
    if conv is None:
        return decode.Layout.matmul(*enc.shape), 2
    return decode.Layout.conv2d(conv.kernel_shape), 4


def _with_decoder(small: KernelCall | None, decoder: tirx.PrimFunc, kind: str, constants, conv) -> KernelCall:
    """A conv: the decode kernel alone. A matmul: ``small`` for one row, the decode kernel above."""
    decoding = KernelCall(f"{kind}_decode", decoder, constants, decodes=True)
    if conv is not None:
        return decoding
    small.large_batch = decoding
    return small


def _bitplane_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    n, k = enc.shape
    planes, signs, scales = (enc.arrays[a] for a in ("planes", "signs", "scales"))
    if enc.codec == bie_bitplane.NAME:
        top_bit = enc.header["bits"] - 2
        group = bie_bitplane.scale_group(k, enc.header["group_size"])
    else:  # bie-binary bitmap: one plane of significance 1, one scale per channel
        top_bit, group = 0, 8 * packed_width(k)
    constants = [planes, signs, scales]
    if _on_gpu():  # the planes and signs as 32-bit words: a warp reads 128 bytes of each per step
        constants = [bitplane.as_words(planes), bitplane.as_words(signs), scales]

    def placeholders() -> list[te.Tensor]:
        return [te.placeholder(a.shape, a.dtype.name, name) for name, a in zip(("planes", "signs", "scales"), constants)]

    def scheduled(compute, schedule) -> tirx.PrimFunc:
        x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
        holders = placeholders()
        sch = s_tir.Schedule(te.create_prim_func([x, *holders, compute(x, *holders, k=k, top_bit=top_bit, group=group)]))
        sch.work_on("main")
        schedule(sch)
        return sch.mod["main"]

    # bie-bitplane's planes, most significant first, may be cut at load (progressive precision, see weights.py)
    planar = (lambda f: f.with_attr(PRECISION_ATTR, {"form": "planes", "magnitude_bits": planes.shape[0]})) \
        if enc.codec == bie_bitplane.NAME else (lambda f: f)
    if _on_gpu():  # one bit-serial kernel for every batch: rows are thread blocks
        return KernelCall("bitplane", planar(scheduled(bitplane.compute_words, bitplane.schedule_cuda)), constants)
    if enc.codec == bie_bitplane.NAME and enc.header["bits"] in (4, 8) and planes.shape[0] == enc.header["bits"] - 1 \
            and scales.shape[1] == 1:
        # Sign and every magnitude plane fill a 4- or 8-bit integer, as many bytes as the planes: the integer kernels.
        codes = bitplane.integer_codes(planes, signs, k, top_bit)
        integers = int8.Int8Weights.packed(codes, scales[:, 0], enc.header["bits"])
        coded = lambda f: f.with_attr(PRECISION_ATTR, {  # noqa: E731
            "form": "nibbles" if enc.header["bits"] == 4 else "codes", "magnitude_bits": enc.header["bits"] - 1})
        small = None if conv else KernelCall("bitplane_gemv", coded(int8.gemv(integers, n, k)), integers.constants)
        return _with_decoder(small, coded(int8.decoder(integers, *_into(enc, conv))), "bitplane", integers.constants,
                             conv)
    holders = placeholders()
    weight = bitplane.decoded_weight(*holders, top_bit=top_bit, group=group)
    decoder = planar(decode.elementwise(weight, holders, *_into(enc, conv)))
    small = None if conv else KernelCall("bitplane", planar(scheduled(bitplane.compute, bitplane.schedule_llvm)),
                                         constants)
    return _with_decoder(small, decoder, "bitplane", constants, conv)


def _nonempty(entries: np.ndarray) -> np.ndarray:
    # A layer with no non-zeros still needs a buffer to bind; the kernel never reads it.
    return entries if entries.size else np.zeros(1, entries.dtype)


def _on_gpu() -> bool:
    return tvm.target.Target.current().kind.name == "cuda"  # kernel_for builds within its target


def _index_kernels():
    """The index-loop kernel family for the current target: a warp per channel on the GPU, else a thread."""
    return sparse_index_cuda if _on_gpu() else sparse_index


def _binary_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    if enc.header["layout"] == "bitmap":
        return _bitplane_call(enc, conv)
    n, k = enc.shape
    entries = _nonempty(enc.arrays["entries"])
    _, sign_bit = bie_binary.index_entry_dtype(k)
    index = dict(n=n, k=k, nnz=entries.size, entry_dtype=entries.dtype.name, sign_bit=sign_bit)
    constants = [enc.arrays["indptr"], entries, enc.arrays["scales"]]
    small = None if conv else KernelCall("global_index", _index_kernels().global_index(**index), constants)
    if _on_gpu():
        return small
    into, x_ndim = _into(enc, conv)
    return _with_decoder(small, sparse_index.decode(**index, into=into, x_ndim=x_ndim), "global_index", constants, conv)


def _blocked_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    n, k = enc.shape
    entries, counts = _nonempty(enc.arrays["entries"]), enc.arrays["counts"]
    block_size = int(enc.header["block_size"])
    constants = [enc.arrays["indptr"], counts, entries, enc.arrays["scales"]]
    small = None if conv else KernelCall("blocked_index", _index_kernels().blocked_index(
        n=n, k=k, nnz=entries.size, block_size=block_size, entry_dtype=entries.dtype.name, count_dtype=counts.dtype.name,
    ), constants)
    if _on_gpu():
        return small
    into, x_ndim = _into(enc, conv)
    decoder = sparse_index.decode(n=n, k=k, nnz=entries.size, entry_dtype=entries.dtype.name,
                                  sign_bit=block_size.bit_length() - 1, into=into, x_ndim=x_ndim,
                                  block_size=block_size, count_dtype=counts.dtype.name)
    return _with_decoder(small, decoder, "blocked_index", constants, conv)


def tans_layout(enc: Encoded) -> dict:
    """The compile-time layout of a ``tans`` encoding, as the tANS kernels take it."""
    n, k = enc.shape
    h = enc.header
    return dict(n=n, k=k, levels=int(h["levels"]), table_log=int(h["table_log"]), states=int(h["states"]),
                rows_per_stream=int(h["rows_per_stream"]), num_words=int(enc.arrays["words"].size))


def tans_constants(enc: Encoded, byte_words: bool = True) -> list[np.ndarray]:
    """What the tANS kernels read: counts, offsets, the words, steps.

    The CPU kernels take the words as bytes (for unaligned 8-byte loads), the GPU kernel as the uint32 words.
    """
    a = enc.arrays
    return [a["counts"], a["offsets"], a["words"].view(np.uint8) if byte_words else a["words"], a["steps"]]


def _tans_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    # The kernels index their table by decoded states and trust the counts and offsets: check them first
    # (and the runtime checks them again when it loads them, by the layout each kernel carries).
    tans.tans_coder.validate(tans.streams(enc), int(enc.header["levels"]))
    layout = tans_layout(enc)
    checked = lambda func: func.with_attr(TANS_ATTR, layout)  # noqa: E731
    if _on_gpu():
        return KernelCall("tans", checked(tans_cuda.matmul(**layout)), tans_constants(enc, byte_words=False))
    constants = tans_constants(enc)
    small = None if conv else KernelCall("tans_matmul", checked(tans_matmul.matmul(**layout)), constants)
    into, x_ndim = _into(enc, conv)
    decoder = checked(tans_matmul.decode_weights(**layout, into=into, x_ndim=x_ndim))
    return _with_decoder(small, decoder, "tans", constants, conv)


def _bbs_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """Matmul: the LUT bit-serial GEMV for one row (AVX-512; else the decode-once GEMV); conv and more rows: decode.

    On the GPU: weights decoded in registers as they are multiplied, a thread block per unit of stored rows
    (matmul, see ``bbs_cuda``) or a thread per output element (conv), one kernel for every batch.
    """
    constants = bbs_decoded.constants(enc)
    if _on_gpu():
        if conv is not None:
            return KernelCall("bbs_conv2d", bbs_cuda.conv2d(enc, conv), constants)
        return KernelCall("bbs", bbs_cuda.matmul(enc), constants)
    holders = bbs_decoded.placeholders(enc)
    decoder = decode.elementwise(bbs_decoded.output_weight(enc, holders), holders, *_into(enc, conv))
    small = None
    if conv is None:
        if bbs_lut.supported(tvm.target.Target.current()):  # kernel_for builds within its target
            small = KernelCall("bbs_lut", bbs_lut.gemv(enc), constants)
        else:
            small = KernelCall("bbs_decoded", bbs_decoded.matmul(enc), constants)
    return _with_decoder(small, decoder, "bbs", constants, conv)


def _int8_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall:
    """``int8`` and ``bitwave``: the INT8 GEMV for one row, the decode kernel for convs and more rows."""
    weights = int8.Int8Weights.of(enc)
    small = None if conv else KernelCall("int8_gemv", int8.gemv(weights, *enc.shape), weights.constants)
    return _with_decoder(small, int8.decoder(weights, *_into(enc, conv)), "int8", weights.constants, conv)


KERNELS = {
    (bie_bitplane.NAME, "matmul", "llvm"): _bitplane_call,
    (bie_binary.NAME, "matmul", "llvm"): _binary_call,
    (bie_blocked.NAME, "matmul", "llvm"): _blocked_call,
    (tans.NAME, "matmul", "llvm"): _tans_call,
    (bbs.NAME, "matmul", "llvm"): _bbs_call,
    (int8_codec.NAME, "matmul", "llvm"): _int8_call,
    (bitwave.NAME, "matmul", "llvm"): _int8_call,
    # convs (any groups): decode kernels, the conv itself left to the dense schedules
    (bie_bitplane.NAME, "conv2d", "llvm"): _bitplane_call,
    (bie_binary.NAME, "conv2d", "llvm"): _binary_call,
    (bie_blocked.NAME, "conv2d", "llvm"): _blocked_call,
    (tans.NAME, "conv2d", "llvm"): _tans_call,
    (bbs.NAME, "conv2d", "llvm"): _bbs_call,
    (int8_codec.NAME, "conv2d", "llvm"): _int8_call,
    (bitwave.NAME, "conv2d", "llvm"): _int8_call,
    # CUDA: the same builders, which pick their GPU kernels inside ``with target``.
    (bie_bitplane.NAME, "matmul", "cuda"): _bitplane_call,
    (bie_binary.NAME, "matmul", "cuda"): _binary_call,
    (bie_blocked.NAME, "matmul", "cuda"): _blocked_call,
    (bbs.NAME, "matmul", "cuda"): _bbs_call,
    (bbs.NAME, "conv2d", "cuda"): _bbs_call,
    (tans.NAME, "matmul", "cuda"): _tans_call,
}


def has_kernel(codec: str, op: str, target: tvm.target.Target) -> bool:
    return (codec, op, target.kind.name) in KERNELS


def kernel_for(enc: Encoded, target: tvm.target.Target, conv: ConvSpec | None = None) -> KernelCall:
    """The kernel that computes ``x @ W.T`` (or the conv in ``conv``) from ``enc`` on ``target``."""
    op = "matmul" if conv is None else "conv2d"
    builder = KERNELS.get((enc.codec, op, target.kind.name))
    if builder is None:
        raise NotImplementedError(f"no {op} kernel for codec {enc.codec!r} on {target.kind.name}")
    with target:  # builders may ask Target.current() for CPU features
        call = builder(enc, conv)
    for variant in (call, call.large_batch):
        if variant is not None:
            variant.func = _finish(variant.func, variant.kind)
    return call


def has_dense_kernel(target: tvm.target.Target) -> bool:
    """Whether matmul weights left dense get :func:`dense_kernel` on ``target`` (the CPU; dlight's GPU rules serve)."""
    return target.kind.name == "llvm"


def dense_kernel(weight: np.ndarray, target: tvm.target.Target) -> KernelCall:
    """The kernels of a matmul whose weight stays dense (``weight`` [N, K]): one row, and several rows."""
    if not has_dense_kernel(target):
        raise NotImplementedError(f"no dense matmul kernel for {target.kind.name}")
    n, k = weight.shape
    packed = [dense.pack(weight)]
    gemm = KernelCall("dense_gemm", _finish(dense.gemm(n, k), "dense_gemm"), packed)
    return KernelCall("dense_gemv", _finish(dense.gemm(n, k, rows=1), "dense_gemv"), packed, gemm)


def _finish(func: tirx.PrimFunc, kind: str) -> tirx.PrimFunc:
    # Opaque (op_pattern 8): FuseOps must not merge a kernel into a function our schedule does not know.
    return func.with_attrs({KERNEL_ATTR: kind, "op_pattern": 8, "tirx.is_scheduled": True})

"""``bie-blocked``: ``bie-binary``'s ternary weights with positions local to blocks of K.

K is cut into blocks of ``block_size`` (a power of two). An entry is the offset
inside its block with the sign in the next bit, so blocks of 128 need one byte
per non-zero where global indices need two. Per output channel and block,
``counts`` (uint8 for blocks up to 128, else uint16) says how many entries
follow; ``indptr`` (uint32, N + 1) gives each channel's first entry, so
channels decode independently. Entries run in channel, block, offset order.
With calibration statistics the ternary weights come from error feedback, as in ``bie-binary``.

On the CPU a matmul runs either from these arrays on every call (``stream``) or from ``bie-binary``'s bitmap
(a non-zero plane and a sign plane, 2 bits a weight), written from them once when the artefact is loaded
(``load``): :func:`execution` chooses per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CodecError
from . import bie_binary, feedback
from .base import Encoded

NAME = "bie-blocked"
EXECUTIONS = ("auto", "load", "stream")  # how the CPU runs a matmul: see Config.blocked_execution


@dataclass(frozen=True)
class Config(bie_binary.Ternary):
    block_size: int = field(default=128, metadata={"help": "block length along K, a power of two (default 128)"})
    # the kernel, not the encoding: the stored bytes are the same either way
    blocked_execution: str = field(default="auto", metadata={"kernel": True, "help": (
        "CPU matmuls: load (the artefact keeps the blocked encoding; when it is loaded, it is decoded once into "
        "bie-binary's bitmap, 2 bits a weight, and bie-binary's bitmap kernels run), stream (the index kernels read "
        "the blocked encoding on every call: less memory below about a quarter of the weights kept) or auto "
        "(default: load where the bitmap is no larger than the blocked encoding, else stream); convs always decode "
        "the blocked encoding")})

    def __post_init__(self):
        super().__post_init__()
        if self.blocked_execution not in EXECUTIONS:
            raise CodecError(f"{NAME}: blocked_execution must be one of {', '.join(EXECUTIONS)}, "
                             f"got {self.blocked_execution!r}")
        b = self.block_size
        if b < 2 or b > 2**15 or b & (b - 1):
            raise CodecError(f"{NAME}: block_size must be a power of two in 2..32768, got {b}")


def block_dtypes(block_size: int) -> tuple[np.dtype, np.dtype]:
    """(entry dtype, count dtype) for a block size: the narrowest that hold offset + sign, and 0..block_size."""
    entry = np.dtype(np.uint8 if block_size <= 2**7 else np.uint16)
    count = np.dtype(np.uint8 if block_size < 2**8 else np.uint16)
    return entry, count


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    keep, negative, scales = bie_binary.ternarize(weight, config, calibration)
    n, k = keep.shape
    b = config.block_size
    sign_bit = b.bit_length() - 1
    entry_dtype, count_dtype = block_dtypes(b)
    blocks = -(-k // b)
    padded = np.zeros((n, blocks * b), bool)
    padded[:, :k] = keep
    counts = padded.reshape(n, blocks, b).sum(axis=2)
    rows, cols = np.nonzero(keep)
    entries = (cols % b) | (negative[rows, cols].astype(np.int64) << sign_bit)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.uint32)
    arrays = {
        "indptr": indptr,
        "counts": counts.astype(count_dtype),
        "entries": entries.astype(entry_dtype),
        "scales": scales,
    }
    global_index_bytes = bie_binary.index_layout_nbytes(len(rows), n, k)
    return Encoded(NAME, (n, k), arrays, {"block_size": b, "global_index_bytes": global_index_bytes})


def report(enc: Encoded) -> dict[str, int]:
    """Position bytes with block-local indices against global ones (``bie-binary``'s index layout)."""
    local = sum(enc.arrays[name].nbytes for name in ("indptr", "counts", "entries"))
    return {"index_bytes_blocked": local, "index_bytes_global": int(enc.header["global_index_bytes"])}


def execution(enc: Encoded, asked: str, op: str = "matmul") -> tuple[str, str]:
    """(``load`` or ``stream``, why) for a layer's CPU kernel: ``asked`` (``blocked_execution``), ``auto`` resolved
    by the position bytes: the bitmap's (``bie-binary``'s planes and signs) against the blocked encoding's (indptr,
    counts, entries); the scales are the same in both. Convs stream (their decode kernel reads the blocked arrays)."""
    if op != "matmul":
        return "stream", f"a {op}: its decode kernel reads the blocked encoding"
    n, k = enc.shape
    bitmap = 2 * n * -(-k // 8)
    blocked = sum(enc.arrays[name].nbytes for name in ("indptr", "counts", "entries"))
    sizes = f"bitmap {bitmap} B, blocked {blocked} B of positions"
    if asked != "auto":
        return asked, f"asked ({sizes})"
    if bitmap <= blocked:
        return "load", f"auto: the bitmap is no larger ({sizes})"
    return "stream", f"auto: the bitmap would be larger ({sizes})"


def kernel_choices(config: Config, enc: Encoded, op: str) -> dict[str, str]:
    """What a layer's CPU kernel runs for the kernel fields decided per layer, and why (the compile report's
    ``kernel.blocked_execution``)."""
    choice, why = execution(enc, config.blocked_execution, op)
    return {"blocked_execution": f"{choice}: {why}"}


def decode(enc: Encoded) -> np.ndarray:
    n, k = enc.shape
    b = int(enc.header["block_size"])
    sign_bit = b.bit_length() - 1
    counts = enc.arrays["counts"].astype(np.int64)
    rows = np.repeat(np.arange(n), counts.sum(axis=1))
    block_of_entry = np.repeat(np.tile(np.arange(counts.shape[1]), n), counts.ravel())
    entries = enc.arrays["entries"].astype(np.int64)
    cols = block_of_entry * b + (entries & (b - 1))
    values = np.where(entries >> sign_bit, -1.0, 1.0) * enc.arrays["scales"][rows]
    dense = np.zeros((n, k), np.float32)
    dense[rows, cols] = values
    return dense

"""``weights.bin``: the artefact's constants as data, outside the native library.

Layout: the magic ``BIEWGT01``, a little-endian uint64 header length, the header (UTF-8 JSON), then the
tensors, each starting on a 64-byte boundary. The header lists the tensors in the order the compiled
``main`` takes them after its inputs: ``{"tensors": [{"name", "dtype", "shape", "offset", "nbytes"}],
"tans": [{"counts", "offsets", "words", "table_log", "states", "alphabet", "crc32"}]}`` (tensor indices;
the tANS streams whose structure the runtime checks before any kernel reads them).

Everything is checked before use: offsets inside the file and in order, dtype x shape = nbytes, no
tensor overlapping another, and every tANS stream's counts, offsets, length and CRC. So an artefact's
data can be validated without executing any of its code.
"""

from __future__ import annotations

import io
import json
import struct
from typing import BinaryIO

import numpy as np

from bie_compiler.errors import ArtefactError

from .tans_streams import check_streams

MAGIC = b"BIEWGT01"
ALIGN = 64
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool")
_MAX_HEADER = 64 << 20


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write(file: BinaryIO, tensors: list[tuple[str, np.ndarray]], tans: list[dict] | None = None) -> None:
    """Write the file for ``tensors`` (name, array), in order, and the tANS stream descriptions to ``file``, one
    tensor after another (a large model's weights are not copied into one buffer)."""
    entries, offset = [], 0
    tensors = [(name, np.asarray(a, order="C")) for name, a in tensors]  # ascontiguousarray would make 0-d 1-d
    for name, a in tensors:
        entries.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                         "nbytes": int(a.nbytes)})
        offset = _aligned(offset + a.nbytes)
    header = json.dumps({"tensors": entries, "tans": tans or []}, sort_keys=True).encode()
    start = _aligned(len(MAGIC) + 8 + len(header))
    file.write(MAGIC + struct.pack("<Q", len(header)) + header)
    written = len(MAGIC) + 8 + len(header)
    for entry, (_, array) in zip(entries, tensors):
        file.write(bytes(start + entry["offset"] - written))  # zeros up to the tensor's aligned offset
        file.write(memoryview(array.reshape(-1)).cast("B"))
        written = start + entry["offset"] + entry["nbytes"]
    file.write(bytes(start + offset - written))


def pack(tensors: list[tuple[str, np.ndarray]], tans: list[dict] | None = None) -> bytes:
    """The file's bytes (:func:`write`)."""
    out = io.BytesIO()
    write(out, tensors, tans)
    return out.getvalue()


def unpack(data: bytes, label: str = "weights.bin", expected: dict | None = None) -> list[np.ndarray]:
    """The tensors of a weights file, in order, after every check; ArtefactError naming the first failure.

    ``expected``: the manifest's ``weights`` entry; the file must hold as many tensors, bytes and tANS
    streams (so a header that leaves its streams out does not skip their checks)."""
    if len(data) < len(MAGIC) + 8 or data[: len(MAGIC)] != MAGIC:
        raise ArtefactError(f"{label}: not a bie-compiler weights file")
    (length,) = struct.unpack("<Q", data[len(MAGIC): len(MAGIC) + 8])
    if length > min(_MAX_HEADER, len(data) - len(MAGIC) - 8):
        raise ArtefactError(f"{label}: header length {length} runs past the file")
    try:
        header = json.loads(data[len(MAGIC) + 8: len(MAGIC) + 8 + length].decode())
        entries, tans = header["tensors"], header["tans"]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as e:
        raise ArtefactError(f"{label}: unreadable header ({type(e).__name__})") from None
    start = _aligned(len(MAGIC) + 8 + length)
    body = memoryview(data)[start:]
    tensors, end = [], 0
    for i, e in enumerate(entries if isinstance(entries, list) else [None]):
        tensors.append(_tensor(e, body, end, f"{label}: tensor {i}"))
        end = e["offset"] + e["nbytes"]
    for i, stream in enumerate(tans if isinstance(tans, list) else [None]):
        problem = _tans(stream, tensors)
        if problem:
            raise ArtefactError(f"{label}: tANS stream {i}: {problem}")
    if expected is not None:
        found = {"tensors": len(tensors), "bytes": sum(t.nbytes for t in tensors), "tans_streams": len(tans)}
        for key, what in (("tensors", "tensor(s)"), ("bytes", "byte(s) of tensors"), ("tans_streams", "tANS stream(s)")):
            if found[key] != expected[key]:
                raise ArtefactError(f"{label}: {found[key]} {what}, the manifest says {expected[key]}")
    return tensors


def _tensor(entry, body: memoryview, previous_end: int, where: str) -> np.ndarray:
    fields = {"name": str, "dtype": str, "shape": list, "offset": int, "nbytes": int}
    if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in fields.items()):
        raise ArtefactError(f"{where}: malformed entry")
    if entry["dtype"] not in DTYPES or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                                              for d in entry["shape"]):
        raise ArtefactError(f"{where} ({entry['name']}): bad dtype or shape")
    count = int(np.prod(entry["shape"], dtype=np.int64)) if entry["shape"] else 1
    offset, nbytes = entry["offset"], entry["nbytes"]
    if count * np.dtype(entry["dtype"]).itemsize != nbytes:
        raise ArtefactError(f"{where} ({entry['name']}): {nbytes} bytes is not {entry['dtype']} x {entry['shape']}")
    if offset < previous_end or offset % ALIGN or offset + nbytes > len(body):
        raise ArtefactError(f"{where} ({entry['name']}): bytes {offset}..{offset + nbytes} out of order or past the file")
    return np.frombuffer(body[offset: offset + nbytes], dtype=entry["dtype"]).reshape(tuple(entry["shape"]))


def _tans(stream, tensors: list[np.ndarray]) -> str | None:
    keys = ("counts", "offsets", "words", "table_log", "states", "alphabet", "crc32", "rows", "rows_per_stream")
    if not isinstance(stream, dict) or any(not isinstance(stream.get(k), int) or isinstance(stream.get(k), bool)
                                           for k in keys):
        return "malformed description"
    if not all(0 <= stream[k] < len(tensors) for k in ("counts", "offsets", "words")):
        return "tensor index out of range"
    words = tensors[stream["words"]]
    if words.dtype == np.uint8:  # the CPU kernels read the words as bytes
        if words.size % 4:
            return "words are not whole uint32"
        words = words.view(np.uint32)
    return check_streams(tensors[stream["counts"]], tensors[stream["offsets"]], words, stream["table_log"],
                         stream["states"], stream["rows"], stream["rows_per_stream"], stream["alphabet"], stream["crc32"])

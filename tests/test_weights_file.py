"""weights.bin: constants as data, checked before use (offsets, sizes, tANS streams)."""

import json
import struct

import numpy as np
import pytest

from bie_compiler.codecs import make_config, tans
from bie_compiler.errors import ArtefactError
from bie_compiler.runtime import weights_file as wf


def tans_tensors():
    w = np.random.default_rng(0).standard_normal((40, 300)).astype(np.float32)
    enc = tans.encode(w, make_config("tans", {}))
    a, h = enc.arrays, enc.header
    tensors = [("counts", a["counts"]), ("offsets", a["offsets"]), ("words", a["words"].view(np.uint8)),
               ("steps", a["steps"])]
    stream = {"counts": 0, "offsets": 1, "words": 2, "table_log": h["table_log"], "states": h["states"],
              "alphabet": h["levels"], "crc32": h["crc32"], "rows": 40, "rows_per_stream": h["rows_per_stream"]}
    return tensors, stream


def test_round_trip_of_every_dtype_and_alignment():
    rng = np.random.default_rng(1)
    tensors = [(f"t{i}", rng.integers(0, 100, s).astype(d)) for i, (s, d) in
               enumerate([((3, 5), "float32"), ((7,), "uint8"), ((2, 2, 2), "int64"), ((0,), "uint32"), ((), "float32"),
                        ((1, 1, 4, 1), "bool")])]  # bool: a mask folded into a constant (MiniLM's attention mask)
    out = wf.unpack(wf.pack(tensors))
    for (_, a), b in zip(tensors, out):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_tans_streams_are_checked_at_load():
    tensors, stream = tans_tensors()
    assert len(wf.unpack(wf.pack(tensors, [stream]))) == 4
    bad_counts = [(n, a.copy()) for n, a in tensors]
    bad_counts[0][1][0] += 1  # counts no longer sum to 2^table_log (and the CRC no longer matches)
    with pytest.raises(ArtefactError, match="tANS stream 0: corrupted: checksum mismatch"):
        wf.unpack(wf.pack(bad_counts, [stream]))
    with pytest.raises(ArtefactError, match="tANS stream 0: table_log"):
        wf.unpack(wf.pack(tensors, [{**stream, "table_log": 40}]))
    with pytest.raises(ArtefactError, match="offsets: expected uint32"):
        wf.unpack(wf.pack(tensors, [{**stream, "rows": 4000}]))
    with pytest.raises(ArtefactError, match="tensor index out of range"):
        wf.unpack(wf.pack(tensors, [{**stream, "words": 9}]))


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["tensors"][0].update(nbytes=8), "is not float32"),
    (lambda h: h["tensors"][1].update(offset=0), "out of order"),
    (lambda h: h["tensors"][1].update(offset=1 << 40), "past the file"),
    (lambda h: h["tensors"][0].update(dtype="object"), "bad dtype"),
    (lambda h: h["tensors"][0].update(shape=[-1]), "bad dtype or shape"),
    (lambda h: h.pop("tans"), "unreadable header"),
    (lambda h: h["tensors"].append(7), "malformed entry"),
])
def test_malformed_headers_are_refused(edit, message):
    data = wf.pack([("a", np.ones((4, 4), np.float32)), ("b", np.ones(10, np.uint8))])
    (length,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16:16 + length])
    edit(header)
    body = json.dumps(header).encode()
    start = -(-(16 + length) // wf.ALIGN) * wf.ALIGN
    rebuilt = wf.MAGIC + struct.pack("<Q", len(body)) + body
    rebuilt = rebuilt.ljust(-(-len(rebuilt) // wf.ALIGN) * wf.ALIGN, b"\0") + data[start:]
    with pytest.raises(ArtefactError, match=message):
        wf.unpack(rebuilt)


@pytest.mark.parametrize("data", [b"", b"BIEWGT01", b"NOTMAGIC" + b"\0" * 8, wf.MAGIC + struct.pack("<Q", 2**60)])
def test_not_a_weights_file(data):
    with pytest.raises(ArtefactError):
        wf.unpack(data)

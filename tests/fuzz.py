"""Seeded mutation fuzzers for the readers of untrusted bytes: the tANS decoder, the artefact's manifest
reader and its weights-file reader.

Each iteration mutates a valid input at random and feeds it to the reader, which must either accept it
or raise the project's own error (CodecError, ArtefactError, OptionError): any other exception is a
finding, and so is a hang (the caller bounds the time). CI runs a few hundred iterations
(tests/test_fuzz.py); for thousands:

    .venv/bin/python tests/fuzz.py --iterations 5000 [--seed S] [--target tans|manifest|weights|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bie_compiler.codecs import tans_coder
from bie_compiler.errors import BieError


# --- tANS streams ---------------------------------------------------------------------------------------------------


def valid_streams(rng: np.random.Generator) -> tuple[tans_coder.TansStreams, int]:
    """A small, valid coded layer: Laplace-distributed symbols, random layout."""
    alphabet = int(rng.choice([3, 7, 15, 31]))
    n, k = int(rng.integers(1, 24)), int(rng.integers(1, 70))
    symbols = np.clip(np.rint(rng.laplace(alphabet // 2, 1.0, (n, k))), 0, alphabet - 1).astype(np.int64)
    coded = tans_coder.encode(symbols, alphabet, table_log=int(rng.integers(5, 12)), states=int(rng.integers(1, 6)),
                              rows_per_stream=int(rng.integers(1, 5)))
    return coded, alphabet


def _mutate_array(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    a = a.copy()
    kind = rng.integers(0, 5)
    if kind == 0 and a.size:  # flip a bit
        i = rng.integers(0, a.size)
        a.view(np.uint8)[rng.integers(0, a.itemsize) + i * a.itemsize] ^= np.uint8(1 << rng.integers(0, 8))
    elif kind == 1 and a.size:  # a random value
        a[rng.integers(0, a.size)] = rng.integers(0, np.iinfo(a.dtype).max, dtype=np.int64, endpoint=True)
    elif kind == 2:  # truncate
        a = a[: rng.integers(0, a.size + 1)]
    elif kind == 3:  # extend
        a = np.concatenate([a, rng.integers(0, 255, rng.integers(1, 4)).astype(a.dtype)])
    elif a.size:  # swap two entries
        i, j = rng.integers(0, a.size, 2)
        a[i], a[j] = a[j], a[i]
    return a


def mutate_streams(rng: np.random.Generator, coded: tans_coder.TansStreams) -> tans_coder.TansStreams:
    """One to three mutations of the arrays or layout; usually resealed (CRC recomputed) so the
    structural checks, not only the checksum, are exercised."""
    changes = {}
    for _ in range(rng.integers(1, 4)):
        field = str(rng.choice(["counts", "offsets", "words", "words", "layout"]))
        if field == "layout":
            key = str(rng.choice(["table_log", "states", "rows_per_stream"]))
            changes[key] = int(getattr(coded, key) + rng.integers(-3, 4))
        else:
            changes[field] = _mutate_array(rng, changes.get(field, getattr(coded, field)))
    mutated = dataclasses.replace(coded, **changes)
    if rng.random() < 0.8:
        mutated = dataclasses.replace(mutated, checksum=tans_coder.checksum(mutated.counts, mutated.offsets,
                                                                            mutated.words))
    return mutated


def fuzz_tans(iterations: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(iterations):
        coded, alphabet = valid_streams(rng)
        mutated = mutate_streams(rng, coded)
        try:
            symbols = tans_coder.decode(mutated, alphabet)
        except BieError:
            outcomes["refused"] += 1
            continue
        # Accepted: it must be a well-formed decoding (a mutation can still be a valid stream).
        assert symbols.shape == coded.shape and symbols.min() >= 0 and symbols.max() < alphabet
        outcomes["accepted"] += 1
    return outcomes


# --- artefact manifests ---------------------------------------------------------------------------------------------


def _random_value(rng: np.random.Generator):
    return [None, True, -1, 0, 2**63, 1e308, float("nan"), "", "../../x", "a" * 5000, [], {}, [1, [2]], {"k": "v"},
            "x\x00y"][rng.integers(0, 15)]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def mutate_json(rng: np.random.Generator, manifest: dict) -> dict:
    """A structural mutation of a JSON object (a manifest, a weights header): a field removed, replaced by a
    random value, or a new field added."""
    manifest = json.loads(json.dumps(manifest))
    paths = [p for p in _paths(manifest) if p and p[0] not in ("checksum",)]
    path = paths[rng.integers(0, len(paths))]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    kind = rng.integers(0, 3)
    if kind == 0:
        del parent[path[-1]]
    elif kind == 1:
        parent[path[-1]] = _random_value(rng)
    elif isinstance(parent, dict):
        parent[f"extra{rng.integers(0, 9)}"] = _random_value(rng)
    else:
        parent.append(_random_value(rng))
    return manifest


def fuzz_manifest(iterations: int, seed: int, artefact: Path) -> dict:
    """Mutated copies of ``artefact``'s manifest, resealed (checksum recomputed) or raw bytes flipped, read
    by ``read_manifest`` and, when accepted, printed by ``inspect``."""
    import contextlib
    import io

    from bie_compiler import cli
    from bie_compiler.runtime import artefact as art

    rng = np.random.default_rng(seed)
    original = json.loads((artefact / art.MANIFEST).read_text())
    outcomes = {"accepted": 0, "refused": 0}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(shutil.copytree(artefact, Path(tmp) / "art"))
        for _ in range(iterations):
            if rng.random() < 0.75:
                manifest = mutate_json(rng, original)
                manifest["checksum"] = art._checksum(manifest)
                data = json.dumps(manifest).encode()
            else:
                data = bytearray((artefact / art.MANIFEST).read_bytes())
                for _ in range(rng.integers(1, 4)):
                    data[rng.integers(0, len(data))] = rng.integers(0, 256)
            (copy / art.MANIFEST).write_bytes(bytes(data))
            try:
                art.read_manifest(copy)
            except BieError:
                outcomes["refused"] += 1
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli.main(["inspect", str(copy)]) == 0
            outcomes["accepted"] += 1
    return outcomes


def fuzz_weights(iterations: int, seed: int, artefact: Path) -> dict:
    """Mutated copies of ``artefact``'s weights.bin (header fields removed, replaced or added; body bytes
    flipped; the file truncated), read by the runtime's reader against the manifest's counts."""
    import struct

    from bie_compiler.runtime import artefact as art
    from bie_compiler.runtime import weights_file as wf

    rng = np.random.default_rng(seed)
    expected = json.loads((artefact / art.MANIFEST).read_text())["weights"]
    data = (artefact / art.WEIGHTS).read_bytes()
    (length,) = struct.unpack("<Q", data[8:16])
    header, body = json.loads(data[16:16 + length]), data[wf._aligned(16 + length):]
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(iterations):
        kind = rng.integers(0, 3)
        if kind == 0:
            text = json.dumps(mutate_json(rng, header)).encode()
            mutated = wf.MAGIC + struct.pack("<Q", len(text)) + text
            mutated += bytes(wf._aligned(len(mutated)) - len(mutated)) + body
        elif kind == 1:
            mutated = bytearray(data)
            for _ in range(rng.integers(1, 4)):
                mutated[rng.integers(0, len(mutated))] = rng.integers(0, 256)
            mutated = bytes(mutated)
        else:
            mutated = data[: rng.integers(0, len(data))]
        try:
            tensors = wf.unpack(mutated, "weights.bin", expected)
        except BieError:
            outcomes["refused"] += 1
            continue
        assert len(tensors) == expected["tensors"] and sum(t.nbytes for t in tensors) == expected["bytes"]
        outcomes["accepted"] += 1
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=["tans", "manifest", "weights", "all"], default="all")
    parser.add_argument("--artefact", type=Path,
                        help="artefact whose manifest and weights to mutate (default: compile mlp.onnx with tans)")
    args = parser.parse_args()
    if args.target in ("tans", "all"):
        started = time.perf_counter()
        print("tans:", fuzz_tans(args.iterations, args.seed), f"{time.perf_counter() - started:.1f} s")
    if args.target in ("manifest", "weights", "all"):
        artefact = args.artefact
        with tempfile.TemporaryDirectory() as tmp:
            if artefact is None:
                from bie_compiler import compile_model
                from bie_compiler.models import write_all

                model = write_all(tmp, ["mlp"])[0]
                artefact = compile_model(model, Path(tmp) / "art", "tans", progress=None)
            for name, fuzz in (("manifest", fuzz_manifest), ("weights", fuzz_weights)):
                if args.target in (name, "all"):
                    started = time.perf_counter()
                    print(f"{name}:", fuzz(args.iterations, args.seed, artefact), f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())

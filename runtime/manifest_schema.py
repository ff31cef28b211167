"""The manifest's schema: every field, its type and its range, checked before any of it is used.

A spec is a Python value read as a type: ``str``, ``int`` (non-negative), ``bool``, ``float`` (finite
number), a tuple of alternatives, ``Pattern(regex)``, ``Choice(...)``, ``[spec]`` (a list of spec),
``{key: spec}`` (an object with exactly these keys; a key ending in ``?`` may be absent),
``MapOf(spec)`` (an object with any string keys), ``Pair(a, b)`` (a two-element list) or ``JSON`` (free
JSON scalars, lists and objects of bounded depth, for codec options and details).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_MAX_DEPTH = 6  # free JSON (codec options, details) nests no deeper than this


@dataclass(frozen=True)
class Pattern:
    regex: str


@dataclass(frozen=True)
class Choice:
    values: tuple


@dataclass(frozen=True)
class MapOf:
    value: object


@dataclass(frozen=True)
class Pair:
    first: object
    second: object


JSON = object()
NONE = type(None)
SHA256 = Pattern(r"[0-9a-f]{64}")
NAME = Pattern(r"[^\x00]{1,4096}")  # a tensor, layer or file name as text: no NUL, bounded
DTYPE = Choice(("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                "int64", "uint64", "bool"))
TENSOR = {"name": NAME, "dtype": DTYPE, "shape": [(int, NAME)]}
INPUT = {**TENSOR, "range?": Pair(int, int)}  # an index input: the values [low, high) it may take
LAYER = {
    "name": NAME, "op": Choice(("matmul", "conv2d", "gather")), "shape": [int], "codec": NAME, "bytes_dense": int,
    "bytes_encoded": int, "fallback_reason": (str, NONE), "transposed": bool, "config": (MapOf(JSON), NONE),
    "encoded_sha256": (SHA256, NONE), "details": MapOf(JSON), "bits_per_weight": float,
}
OTHER_WEIGHT = {**LAYER, "op": NAME}  # a weight no matmul or conv reads: the ONNX op that does
TOTALS = {"layers": int, "encoded_layers": int, "weights": int, "bytes_dense": int, "bytes_source": int, "bytes_encoded": int,
          "bits_per_weight": float, "compression": float}
MANIFEST = {
    "format": str, "format_version": int, "checksum": SHA256, "bie_compiler_version": str, "tvm_version": str,
    "source_model": {"path": (str, NONE), "sha256": SHA256, "data_files?": [{"name": NAME, "sha256": SHA256}]},
    "codec": {"name": NAME, "options": MapOf(JSON), "min_weights": int, "skip": [str], "overrides": [Pair(str, MapOf(JSON))]},
    "target": {"kind": Choice(("llvm", "cuda", "bitvert")), "mcpu": Pattern(r"[A-Za-z0-9_.+-]{1,64}"),
               "arch?": Pattern(r"sm_[1-9][0-9]{1,2}[af]?")},
    "inputs": [INPUT], "outputs": [TENSOR], "layers": [LAYER], "totals": TOTALS,
    "other_weights": [OTHER_WEIGHT], "model_totals": TOTALS,
    "fixed_shapes": {"input_shapes": MapOf([int]), "dims": MapOf(int)},
    "kernel_layers": MapOf(NAME),
    "files": MapOf({"sha256": SHA256, "bytes": int}),
    "weights": {"tensors": int, "bytes": int, "tans_streams": int,
                "progressive": [{"tensor": int, "form": Choice(("planes", "codes", "nibbles", "lut_planes", "int8_nibbles")), "magnitude_bits": int}],
                "at_load?": Choice(("main_transform_params",))},  # computes main's weights from these, at load
    "device_code?": {"source": NAME, "layer_kernels": MapOf([Pattern(r"\w{1,512}")])},
    "calibration?": {"path": str, "sha256": SHA256, "samples": int, "damping": float, "act_order": bool},
    "bitvert?": {"calibration": (str, NONE), "layers": [Pair(NAME, MapOf(MapOf((float, str))))]},
    "preprocess?": Choice(("onnxruntime-basic",)),  # compile --preprocess: the graph optimizations run before import
}


def _free_json(value, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, (str, bool, NONE)) or (isinstance(value, (int, float)) and math.isfinite(value)):
        return True
    if isinstance(value, list):
        return all(_free_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _free_json(v, depth + 1) for k, v in value.items())
    return False


def _check(value, spec, where: str) -> str | None:
    """None if ``value`` fits ``spec``, else what is wrong and where."""
    if isinstance(spec, tuple):
        problems = [_check(value, s, where) for s in spec]
        return None if None in problems else problems[0]
    if spec is JSON:
        return None if _free_json(value, 0) else f"{where}: not plain JSON (or nested too deeply)"
    if spec is NONE:
        return None if value is None else f"{where}: expected null"
    if spec is bool:
        return None if isinstance(value, bool) else f"{where}: expected true or false"
    if spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else f"{where}: expected a non-negative integer, got {value!r:.40}"
    if spec is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"{where}: expected a finite number, got {value!r:.40}"
    if spec is str:
        return None if isinstance(value, str) and "\x00" not in value else f"{where}: expected text"
    if isinstance(spec, Pattern):
        ok = isinstance(value, str) and re.fullmatch(spec.regex, value) is not None
        return None if ok else f"{where}: unexpected value {value!r:.60}"
    if isinstance(spec, Choice):
        return None if value in spec.values else f"{where}: {value!r:.40} is not one of {', '.join(spec.values)}"
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where}: expected a list"
        return next((p for i, v in enumerate(value) if (p := _check(v, spec[0], f"{where}[{i}]"))), None)
    if isinstance(spec, Pair):
        if not isinstance(value, list) or len(value) != 2:
            return f"{where}: expected a pair"
        return _check(value[0], spec.first, f"{where}[0]") or _check(value[1], spec.second, f"{where}[1]")
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            return f"{where}: expected an object"
        return next((p for k, v in value.items() if (p := _check(v, spec.value, f"{where}.{k}"))), None)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where}: expected an object"
        keys = {k.rstrip("?"): k.endswith("?") for k in spec}
        unknown = sorted(set(value) - set(keys))
        missing = sorted(k for k, optional in keys.items() if not optional and k not in value)
        if unknown or missing:
            return f"{where}: " + "; ".join(filter(None, [unknown and f"unknown field(s) {', '.join(unknown)}",
                                                          missing and f"missing field(s) {', '.join(missing)}"]))
        return next((p for k, s in spec.items() if k.rstrip("?") in value
                     and (p := _check(value[k.rstrip("?")], s, f"{where}.{k.rstrip('?')}"))), None)
    raise TypeError(f"bad spec {spec!r}")  # a bug in this module, not in the manifest


def validate_manifest(manifest: dict, allowed_files: tuple[str, ...], required_files: int = 1) -> str | None:
    """None if ``manifest`` fits the schema and lists only ``allowed_files``, the first ``required_files``
    of them (the library, the weights) among them."""
    problem = _check(manifest, MANIFEST, "manifest")
    if problem:
        return problem
    if ("arch" in manifest["target"]) != (manifest["target"]["kind"] == "cuda"):
        return "target.arch: given for a cuda target, and only there"
    files = manifest["files"]
    strays = sorted(set(files) - set(allowed_files))
    if strays:
        return f"files: unexpected file name(s) {', '.join(repr(s) for s in strays[:3])}"
    missing = [name for name in allowed_files[:required_files] if name not in files]
    if missing:
        return f"files: {missing[0]} is not listed"
    if "device_code" in manifest and manifest["device_code"]["source"] not in files:
        return "device_code.source: not one of the artefact's files"
    return None

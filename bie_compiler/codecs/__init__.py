"""The codec registry: every weight codec by its CLI name.

A codec module defines ``NAME``, a frozen ``Config`` dataclass (its options,
validated on construction; each field's ``metadata["help"]`` makes it a CLI option,
see :func:`option_fields`, unless ``metadata["set_by_plan"]``), ``encode(weight [N, K], config) -> Encoded`` and
``decode(Encoded) -> float32 [N, K]``, the reference decoder. A codec that
rounds with error feedback takes ``encode(weight, config, calibration)``
(a :class:`feedback.Calibration`; see :func:`takes_calibration`). A codec that decides over the whole
model defines ``plan(matrices, configs, calibrations) -> configs`` (per-layer configs, e.g. a bits budget
split over layers by the sensitivities the calibrations hold).

Every Config has ``rotate`` (:mod:`.rotation`): the registry's :func:`encode`, :func:`decode` and :func:`plan`
apply it around the codec, which only ever sees the rotated weight. Call those, not the module's own.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..errors import OptionError
from . import bbs, bie_binary, bie_bitplane, bie_blocked, bitwave, feedback, int8, nwc, rotation, tans
from .base import Encoded
from .parallel import SERIAL, Workers
from .stored import LazyMapping, loaded

CODECS: dict[str, ModuleType] = {
    m.NAME: m for m in (bie_binary, bie_bitplane, bie_blocked, tans, int8, bbs, bitwave, nwc)
}


def get_codec(name: str) -> ModuleType:
    try:
        return CODECS[name]
    except KeyError:
        raise OptionError(f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}") from None


def takes_calibration(codec: str) -> bool:
    """Whether the codec rounds with error feedback when given calibration statistics."""
    return "calibration" in inspect.signature(get_codec(codec).encode).parameters


def splits_budget(config) -> bool:
    """Whether ``config`` asks its codec's ``plan`` hook to split a bits budget over layers (which then weighs
    each layer by its measured sensitivity, when the calibration holds one)."""
    return bool(getattr(config, "bits_per_weight", 0))


def encode(codec: str, matrix, config, calibration: feedback.Calibration | None = None) -> Encoded:
    """Encode [N, K] with ``codec``: with error feedback when ``calibration`` is given and the codec takes it;
    rotated first when ``config.rotate``."""
    module = get_codec(codec)

    def plain(matrix, calibration):
        if calibration is not None and takes_calibration(codec):
            return module.encode(matrix, config, calibration)
        return module.encode(matrix, config)

    return rotation.encode(plain, matrix, calibration) if config.rotate else plain(matrix, calibration)


def decode(enc: Encoded):
    """The reference decoding, float32 [N, K], rotated back when the encoding is rotated."""
    inner, negated = rotation.unrotated(enc)
    decoded = get_codec(inner.codec).decode(inner)
    return decoded if negated is None else rotation.restore(decoded, negated).astype(decoded.dtype)


def plan(codec: str, matrices, configs: dict, calibrations: dict, workers: Workers = SERIAL) -> dict:
    """Per-layer configs from the codec's whole-model ``plan`` hook (the configs as they are without one), which
    measures the rotated weights of the layers that rotate (and their rotated statistics), in ``workers``.
    ``matrices`` may name stored weights (:class:`.stored.StoredMatrix`): a rotated one is read and rotated here,
    the others by the worker measuring them."""
    module = get_codec(codec)
    if not hasattr(module, "plan"):
        return configs
    rotated = {name for name, config in configs.items() if config.rotate}
    if rotated:
        source = matrices

        def matrix(name: str):
            if name not in rotated:
                return source[name]
            weight = loaded(source[name])  # read once: it may come from a file
            return rotation.rotate(weight, rotation.signs(weight.shape[1])).astype(np.float32)

        matrices = LazyMapping(list(source), matrix)
        calibrations = {name: rotation.rotated_calibration(c) if name in rotated else c
                        for name, c in calibrations.items()}
    return module.plan(matrices, configs, calibrations, workers)


def for_op(config, op: str):
    """``config`` for a weight used by ``op``: only a matmul's activations are rotated (a conv's are patches, a
    table's are indices), so the others encode unrotated."""
    return dataclasses.replace(config, rotate=False) if config.rotate and op != "matmul" else config


def feedback_report(codec: str, matrix, config, calibration: feedback.Calibration | None, enc: Encoded) -> dict:
    """What calibration did to a layer: its relative output error on the calibration data, with and
    without feedback, or why it was encoded without."""
    if calibration is None:
        why = "no feedback hook" if not takes_calibration(codec) else "no calibration input reached it"
        return {"feedback": f"none ({why}): data-free rounding"}
    rtn = decode(encode(codec, matrix, config))
    return {"feedback": "gptq",
            "feedback.output_error": feedback.output_error(matrix, decode(enc), calibration.xtx),
            "feedback.rtn_output_error": feedback.output_error(matrix, rtn, calibration.xtx)}


def no_saving(codec: str, enc: Encoded, dense_bytes: int) -> str | None:
    """Why a layer stays dense although encoded: its encoding is no smaller than its float32 weight (e.g. a
    depthwise conv's K = 9 in bbs, whose groups pad K); None when it saves."""
    if enc.nbytes < dense_bytes:
        return None
    return f"{codec} encoding is no smaller than dense ({enc.bits_per_weight:.1f} bits/weight at K = {enc.shape[1]})"


def make_config(codec: str, options: dict) -> object:
    """Build a codec's Config from options; None values mean 'use the default'."""
    config_cls = get_codec(codec).Config
    known = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise OptionError(
            f"codec {codec!r} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(config_cls)
    return config_cls(**{k: checked_option(codec, k, v, _plain(hints[k])) for k, v in given.items()})


def _plain(hint) -> type:
    """``int`` for ``int | None`` (an option left to a preset), else the hint itself."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


_MAX_INT_OPTION = 2**31 - 1  # no option needs more; larger values only overflow array sizes downstream


def checked_option(codec: str, name: str, value, kind: type):
    """``value`` as option ``name`` of type ``kind`` (int, float or str), or OptionError naming both.

    The one type check behind the CLI flags, ``--override`` and the Python API (``kind`` bool: a switch): no bools for numbers,
    no fractions for integers, no NaN or infinity, no numbers beyond any sensible size.
    """
    what = f"codec {codec!r} option {name}={value!r}"
    if kind is bool:  # a switch: True or False, or 1 or 0 as --override writes it
        if value not in (0, 1) or isinstance(value, float):
            raise OptionError(f"{what}: expected true or false (1 or 0)")
        return bool(value)
    if kind is str:
        if not isinstance(value, str):
            raise OptionError(f"{what}: expected text")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"{what}: expected {'an integer' if kind is int else 'a number'}")
    if not math.isfinite(value):
        raise OptionError(f"{what}: expected a finite number")
    if kind is int:
        if isinstance(value, float):
            raise OptionError(f"{what}: expected an integer")
        if abs(value) > _MAX_INT_OPTION:
            raise OptionError(f"{what}: out of range (at most {_MAX_INT_OPTION})")
        return value
    return float(value)


@dataclass(frozen=True)
class OptionField:
    """A codec option as the CLI offers it: one flag per field name, shared by the codecs that have it."""

    name: str  # the Config field
    kind: type  # int, float, str or bool (a switch)
    help: str  # "codec[/other]: text"
    codecs: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _owners(names: list[str]) -> str:
    """``bie-binary/blocked``: the codecs' names, the later ones without the first's leading words they share."""
    first = names[0].split("-")
    rest = []
    for name in names[1:]:
        words = name.split("-")
        shared = next((i for i, (a, b) in enumerate(zip(first, words)) if a != b), min(len(first), len(words)))
        rest.append("-".join(words[shared:]))
    return "/".join([names[0], *rest])


def option_fields() -> list[OptionField]:
    """Every codec option a user sets, once per field name, in registry and field order.

    Codecs sharing a field name must agree on its type and help text (a ValueError names the conflict)."""
    found: dict[str, list] = {}  # name -> [kind, help, codecs]
    for codec, module in CODECS.items():
        hints = typing.get_type_hints(module.Config)
        for f in dataclasses.fields(module.Config):
            if f.metadata.get("set_by_plan"):
                continue
            if "help" not in f.metadata:
                raise ValueError(f"codec {codec!r}: Config field {f.name} has no metadata help (the CLI needs it)")
            kind, text = _plain(hints[f.name]), f.metadata["help"]
            entry = found.setdefault(f.name, [kind, text, []])
            if entry[:2] != [kind, text]:
                raise ValueError(f"codec {codec!r}: Config field {f.name} differs from {entry[2]}'s in type or help")
            entry[2].append(codec)
    return [OptionField(name, kind, f"{_owners(owners)}: {text}", tuple(owners))
            for name, (kind, text, owners) in found.items()]


def config_dict(config: object) -> dict:
    return dataclasses.asdict(config)


def kernel_options(config: object) -> dict:
    """The fields of a codec config that choose its kernel rather than its encoding (``metadata["kernel"]``): the
    kernel builder takes them as keyword arguments (``codegen.kernel_for``)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("kernel")}


def kernel_fallbacks(config: object) -> dict[str, str]:
    """{kernel field: what the kernel does instead, and why} for the kernel options this layer's config asks for and
    its kernel cannot honour (a Config's ``kernel_fallbacks``; none for the codecs without one)."""
    return dict(getattr(config, "kernel_fallbacks", {}))


def kernel_choices(codec: str, config: object, enc: Encoded, op: str) -> dict[str, str]:
    """{kernel field: what this layer's kernel runs, and why} for the kernel options a codec resolves per layer from
    its encoding (a codec module's ``kernel_choices``, e.g. ``bie-blocked``'s ``auto``; none for the others)."""
    module = get_codec(codec)
    return module.kernel_choices(config, enc, op) if hasattr(module, "kernel_choices") else {}


__all__ = ["CODECS", "Encoded", "OptionField", "config_dict", "decode", "encode", "for_op", "kernel_choices", "kernel_fallbacks", "kernel_options", "feedback_report", "get_codec", "make_config", "no_saving", "option_fields", "plan", "splits_budget", "takes_calibration"]

"""The codec registry: every weight codec by its CLI name.

A codec module defines ``NAME``, a frozen ``Config`` dataclass (its options,
validated on construction), ``encode(weight [N, K], config) -> Encoded`` and
``decode(Encoded) -> float32 [N, K]``, the reference decoder.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

from ..errors import OptionError
from . import bbs, bie_binary, bie_bitplane, bie_blocked, bitwave, int8, tans
from .base import Encoded

CODECS: dict[str, ModuleType] = {
    m.NAME: m for m in (bie_binary, bie_bitplane, bie_blocked, tans, int8, bbs, bitwave)
}


def get_codec(name: str) -> ModuleType:
    try:
        return CODECS[name]
    except KeyError:
        raise OptionError(f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}") from None


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
    return config_cls(**given)


def config_dict(config: object) -> dict:
    return dataclasses.asdict(config)


__all__ = ["CODECS", "Encoded", "config_dict", "get_codec", "make_config"]

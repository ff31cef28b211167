"""Which codec, with which options, each weight gets; or why it stays dense."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from bie_compiler import codecs
from bie_compiler.errors import OptionError


def apply_override(codec: str, options: dict, override: dict) -> tuple[str, dict]:
    """An override's options replace the defaults; naming another codec starts from its defaults."""
    override = dict(override)
    new_codec = override.pop("codec", codec)
    base = options if new_codec == codec else {}
    return new_codec, {**base, **override}


@dataclass(frozen=True)
class EncodingPolicy:
    """Per-layer decisions. Names are ONNX initializer names; patterns use shell wildcards and match a weight's
    name or one of its ``aliases`` (the names of the nodes that read it: exporters name weights ``val_N``)."""

    codec: str
    options: dict = field(default_factory=dict)  # codec options for every layer
    min_weights: int = 1024  # smaller weights stay dense: their encoding overhead outweighs the saving
    skip: tuple[str, ...] = ()  # patterns of weights kept dense
    overrides: tuple[tuple[str, dict], ...] = ()  # (pattern, options); later matches win; may set "codec"
    aliases: dict = field(default_factory=dict)  # weight name -> other names it answers to

    def __post_init__(self):
        # Fail before any work on a bad codec or option, the overrides' included.
        if isinstance(self.min_weights, bool) or not isinstance(self.min_weights, int) or self.min_weights < 0:
            raise OptionError(f"--min-weights must be a non-negative integer, got {self.min_weights!r}")
        codecs.make_config(self.codec, self.options)
        for _, override in self.overrides:
            codecs.make_config(*apply_override(self.codec, self.options, override))

    def unmatched(self, names: list[str]) -> list[str]:
        """The ``--skip``/``--override`` patterns (as the user wrote the option) that match none of ``names``."""
        options = [(f"--skip {p!r}", p) for p in self.skip] + [(f"--override {p!r}", p) for p, _ in self.overrides]
        return [option for option, p in options if not any(self._matches(n, p) for n in names)]

    def _matches(self, name: str, pattern: str) -> bool:
        return fnmatchcase(name, pattern) or any(fnmatchcase(a, pattern) for a in self.aliases.get(name, ()))

    def choose(self, name: str, num_weights: int) -> tuple[str | None, object]:
        """(codec, config) for a weight, or (None, reason) if it stays dense."""
        if any(self._matches(name, p) for p in self.skip):
            return None, "in the skip list"
        if num_weights < self.min_weights:
            return None, f"{num_weights} weights < min_weights {self.min_weights}"
        codec, options = self.codec, self.options
        for pattern, override in self.overrides:
            if self._matches(name, pattern):
                codec, options = apply_override(codec, options, override)
        return codec, codecs.make_config(codec, options)

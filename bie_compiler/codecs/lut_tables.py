"""The ``lut_tables`` kernel field of the codecs whose CPU batch-1 GEMV looks up partial sums of activations
(``bie-bitplane``, ``bbs``): exact float32 subset sums, or T-MAC's int8 tables quantized per group of 32
activations and looked up with byte shuffles (an error within a stated bound, fewer instructions per weight).

A kernel field (``metadata["kernel"]``): the stored bytes are the same either way, only the kernel's layout of
them (built at compile time) changes, and ``codecs.option_fields`` merges the field of every codec that has it
into one CLI option, ``--lut-tables`` (which needs the same help text in each).
"""

from __future__ import annotations

from dataclasses import Field, field

from ..errors import CodecError

TABLES = ("fp32", "int8")
HELP = ("CPU batch-1 look-up tables: fp32 (exact float32 subset sums; default) or int8 (quantized per group of "
        "32 activations, looked up with byte shuffles: fewer instructions, an error within a stated bound); "
        "the stored weights are the same")


def option() -> Field:
    """The ``lut_tables`` field of a codec's Config (each Config needs a field object of its own)."""
    return field(default="fp32", metadata={"kernel": True, "help": HELP})


def check(codec: str, tables: str) -> None:
    if tables not in TABLES:
        raise CodecError(f"{codec}: lut_tables must be one of {', '.join(TABLES)}, got {tables!r}")

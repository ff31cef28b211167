"""The ``lut_tables`` kernel field of the codecs whose CPU batch-1 GEMV looks up partial sums of activations
(``bie-bitplane``, ``bbs``, ``tans`` with ``--tans-execution load``): exact float32 subset sums, or T-MAC's int8
tables quantized per group of 32 activations and looked up with byte shuffles (an error within a stated bound,
fewer instructions per weight), or ``auto`` (the default): int8 wherever the layer's codes fit their layout and the
CPU has their instructions.

A kernel field (``metadata["kernel"]``): the stored bytes are the same either way, only the kernel's layout of
them (built at compile time) changes, and ``codecs.option_fields`` merges the field of every codec that has it
into one CLI option, ``--lut-tables`` (which needs the same help text in each).
"""

from __future__ import annotations

from dataclasses import Field, field

from ..errors import CodecError

TABLES = ("auto", "fp32", "int8")
HELP = ("CPU batch-1 look-up tables: auto (default: int8 for bie-bitplane at 2 to 4 planes, sign included, bbs "
        "at 4 kept columns and tans up to 15 levels, on a CPU with AVX-512 VNNI; fp32 else), fp32 (exact float32 "
        "subset sums) or int8 (quantized per group of 32 activations, looked up with byte shuffles: fewer "
        "instructions, an error within a stated bound; up to 4 planes or kept columns); the stored weights are the "
        "same")
INT8_KIND_SUFFIX = "_int8"  # the kind (and symbol) of a GEMV with int8 tables ends with this (check and the report)


def option() -> Field:
    """The ``lut_tables`` field of a codec's Config (each Config needs a field object of its own)."""
    return field(default="auto", metadata={"kernel": True, "help": HELP})


def check(codec: str, tables: str) -> None:
    if tables not in TABLES:
        raise CodecError(f"{codec}: lut_tables must be one of {', '.join(TABLES)}, got {tables!r}")


def chosen(asked: str, fits: bool, int8_cpu: bool) -> str:
    """The tables a layer's batch-1 GEMV gets: ``asked`` (``lut_tables``) for a layer whose codes fit the int8
    tables' layout or not (each codec's ``int8_tables_fit``: a channel's planes or kept columns in the bytes that
    vpmaddubsw or vpdpbusd sums), on a CPU with (``int8_cpu``) or without their byte shuffles and dot products.
    ``auto`` and ``int8`` differ only where the int8 tables cannot run: there an ``int8`` is the codec's recorded
    fallback (``Config.kernel_fallbacks``), an ``auto`` is not."""
    return "int8" if asked != "fp32" and fits and int8_cpu else "fp32"

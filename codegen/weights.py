"""The build's data: every tensor constant of ``main`` lifted out of the code (``LiftConstants``),
named after the function that reads it, with the tANS streams among them described so that the
runtime can check them before any kernel reads them (``runtime/weights_file.py`` stores both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from bie_compiler.codecs.tans_coder import checksum
from .kernel_registry import AT_LOAD_ATTR
from .lift_constants import LIFTED_ATTR, NUM_INPUT_ATTR, LiftConstants, lifted_constants

TANS_ATTR = "bie.tans_layout"  # on tANS kernels: the layout their streams must have (see tans_stream)
TANS_ARGS = (1, 2, 3)  # counts, offsets, words: the tANS kernels' arguments after x (kernels.tans_matmul.constants),
# or first of all in the functions run at load (AT_LOAD_ATTR), which take no x
# On bie-bitplane kernels: how their argument after x holds each weight's magnitude bits, so that the runtime
# can keep only the top P of them (progressive precision): {"form": "planes" (bit planes [P, N, packed K], most
# significant first) | "codes" (int8 two's complement) | "nibbles" (4-bit two's complement, two per byte)
# | "lut_planes" (two's complement planes of the look-up-table kernel, kernels/bitplane_lut.py)
# | "int8_nibbles" (offset-binary planes of its int8 tables, bitplane_lut.int8_nibbles),
# "magnitude_bits": the bits (planes) stored}.
PRECISION_ATTR = "bie.progressive"
PRECISION_ARG = 1


@dataclass
class Weights:
    """The lifted constants in ``main``'s order, (name, array), the tANS stream descriptions, and the
    tensors holding bie-bitplane magnitudes (``{"tensor", "form", "magnitude_bits"}``, see PRECISION_ATTR);
    ``at_load``: main's weights are computed from these by the function of that name, once at load."""

    tensors: list[tuple[str, np.ndarray]] = field(default_factory=list)
    tans: list[dict] = field(default_factory=list)
    progressive: list[dict] = field(default_factory=list)
    at_load: str | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, a in self.tensors)


def _call_sites(mod: tvm.IRModule, num_input: int) -> list[tuple[relax.GlobalVar | relax.ExternFunc, tuple]]:
    """Every call of a PrimFunc or packed function reached from ``main``, through the Relax functions
    ``main`` passes weights to: (callee, per argument the index of the lifted weight it is, or None)."""
    sites, seen = [], set()

    def walk(func: relax.Function, env: dict) -> None:
        def visit(e):
            if not isinstance(e, relax.Call):
                return
            if isinstance(e.op, tvm.ir.Op) and e.op.name in ("relax.call_tir", "relax.call_dps_packed"):
                sites.append((e.args[0], tuple(env.get(a) if isinstance(a, relax.Var) else None
                                               for a in e.args[1].fields)))
            elif isinstance(e.op, relax.GlobalVar) and isinstance(mod[e.op], relax.Function):
                inner = mod[e.op]
                mapped = {p: env[a] for p, a in zip(inner.params, e.args) if isinstance(a, relax.Var) and a in env}
                key = (e.op.name_hint, tuple(sorted(mapped.values())))
                if key not in seen:  # a function called twice with the same weights is walked once
                    seen.add(key)
                    walk(inner, mapped)

        relax.analysis.post_order_visit(func.body, visit)

    main = mod["main"]
    walk(main, {p: i for i, p in enumerate(list(main.params)[num_input:])})
    return sites


def tans_stream(layout: dict, counts: int, offsets: int, words: int, arrays: list[np.ndarray]) -> dict:
    """The description ``runtime/weights_file`` checks a stream by (tensor indices and the kernel's layout)."""
    word_array = arrays[words] if arrays[words].dtype == np.uint32 else arrays[words].view(np.uint32)
    return {"counts": counts, "offsets": offsets, "words": words, "table_log": int(layout["table_log"]),
            "states": int(layout["states"]), "alphabet": int(layout["levels"]), "rows": int(layout["n"]),
            "rows_per_stream": int(layout["rows_per_stream"]),
            "crc32": checksum(arrays[counts], arrays[offsets], word_array)}


AT_LOAD_FUNCTION = "main_transform_params"  # LiftTransformParams' name: f(*weights) -> main's weights


def split_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, Weights]:
    """``main`` with its tensor constants as trailing parameters, and those constants as :class:`Weights`; with
    kernels whose constants are computed at load, ``main`` takes those instead and AT_LOAD_FUNCTION computes them."""
    mod = LiftConstants()(mod)
    if LIFTED_ATTR not in (mod.attrs or {}):
        return mod, Weights()  # no main: a library of functions, its constants stay in the code
    arrays = [np.from_dlpack(c.value) for c in lifted_constants(mod)]  # views: the weights are not copied
    mod = mod.without_attr(LIFTED_ATTR)
    readers: dict[int, str] = {}
    streams: dict[tuple[int, int, int], dict] = {}
    progressive: dict[int, dict] = {}
    at_load = False
    for callee, args in _call_sites(mod, int(mod["main"].attrs[NUM_INPUT_ATTR])):
        name = callee.name_hint if isinstance(callee, relax.GlobalVar) else str(callee.global_symbol)
        for position, index in enumerate(args):
            if index is not None:
                readers.setdefault(index, f"{name}.arg{position}")
        func = mod[callee] if isinstance(callee, relax.GlobalVar) else None
        attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None else {}
        at_load = at_load or AT_LOAD_ATTR in attrs
        if TANS_ATTR in attrs:
            triple = tuple(args[i - 1 if AT_LOAD_ATTR in attrs else i] for i in TANS_ARGS)
            if None in triple:
                raise ValueError(f"{name}: a tANS kernel whose streams are not weights of the model")
            streams.setdefault(triple, tans_stream(dict(attrs[TANS_ATTR]), *triple, arrays))
        if PRECISION_ATTR in attrs and args[PRECISION_ARG] is not None:
            form = dict(attrs[PRECISION_ATTR])
            progressive[args[PRECISION_ARG]] = {"tensor": args[PRECISION_ARG], "form": str(form["form"]),
                                                "magnitude_bits": int(form["magnitude_bits"])}
    weights = Weights([(f"w{i}:{readers.get(i, 'unread')}", a) for i, a in enumerate(arrays)], list(streams.values()),
                      [progressive[i] for i in sorted(progressive)])
    if at_load:  # main's calls of the functions computing constants at load, and what reads only weights, move out
        mod = relax.transform.LiftTransformParams()(mod)
        weights.at_load = AT_LOAD_FUNCTION
    return mod, weights

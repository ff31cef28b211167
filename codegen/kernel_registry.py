"""The kernel registry: which builder computes a layer from each codec's encoding, per op and target.

A kernel module under :mod:`.kernels` registers its builders where it defines them::

    @register(int8.NAME, ops=("matmul", "conv2d"), target="llvm")
    def int8_call(enc: Encoded, conv: ConvSpec | None) -> KernelCall: ...

and :mod:`.kernels` imports every module in its folder, so a new kernel module needs no edit
anywhere else. A matmul kernel is ``f(x [M, K], *constants, out [M, N])`` with a symbolic M; a gather
kernel ``f(ids [M], *constants, out [M, K])`` reads rows of a table [N, K] (an embedding) from its encoding; a
conv kernel is ``f(x NCHW, *constants, out NCHW)`` for the conv described by its ConvSpec
(weights in codec layout [O, kh * kw * I / groups], I fastest). On the CPU, matmuls above one row
get a second matmul kernel (``KernelCall.large_batch``; :mod:`.kernels.panel_gemm`: each panel of
the weight decoded once per call into a small buffer for the dense GEMM's micro-kernel), or, for
some codecs, and convs, a *decode kernel* (``KernelCall.decodes``, :mod:`.kernels.decode`): the
dense weight for the plain op, decoded once per call, the multiplication left to the dense schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm import tirx

from bie_compiler.codecs import Encoded

KERNEL_ATTR = "bie.kernel"  # marks our kernels in the IRModule; value: the kernel kind
AT_LOAD_ATTR = "bie.at_load"  # on the PrimFuncs computing constants at load (KernelCall.at_load)
LAYER_ATTR = "bie.layer"  # on our kernels in the IRModule: the name of the weight they compute from
SMALL_BATCH_ROWS = 1  # matmuls with at most this many rows use ``func``; larger ones ``large_batch``
ROW_DISPATCH_ATTR = "bie.row_dispatch"  # on the Relax functions choosing a matmul's ``func`` or ``large_batch`` by its rows
OPS = ("matmul", "conv2d", "gather")


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution, NCHW data and OIHW weights."""

    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    kernel_shape: tuple[int, int, int, int]  # O, I / groups, kh, kw
    groups: int = 1


@dataclass
class AtLoad:
    """Constants computed once, when the artefact is loaded: ``func(*stored, *constants)`` (a PrimFunc writing every
    constant of its KernelCall) from ``stored``, the arrays the artefact keeps instead."""

    func: tirx.PrimFunc
    stored: list


@dataclass
class KernelCall:
    """A scheduled PrimFunc and the constants it reads after the activation.

    ``large_batch``, if set, is a kernel over the same constants for matmuls
    above SMALL_BATCH_ROWS rows; the pass dispatches on the row count.
    ``decodes``: ``func`` is a decode kernel ``f(x, *constants, W)`` (``x`` not
    read), ``W`` the weight of the plain op (matmul: [K, N]; conv: OIHW).
    ``at_load``: the constants are not stored but computed at load (``constants`` gives their shapes).
    """

    kind: str
    func: tirx.PrimFunc
    constants: list
    large_batch: "KernelCall | None" = None
    decodes: bool = False
    at_load: AtLoad | None = None


Builder = Callable[..., KernelCall]  # (enc: Encoded, conv: ConvSpec | None, **kernel options) -> KernelCall
KERNELS: dict[tuple[str, str, str], Builder] = {}  # (codec, op, target kind) -> builder


def register(codec: str, ops: tuple[str, ...], target: str) -> Callable[[Builder], Builder]:
    """Register the decorated builder for ``codec``'s layers of each op in ``ops`` on ``target`` (a kind)."""
    def add(builder: Builder) -> Builder:
        for op in ops:
            if op not in OPS:
                raise ValueError(f"{builder.__qualname__}: unknown op {op!r}; ops are {', '.join(OPS)}")
            key = (codec, op, target)
            if key in KERNELS:
                raise ValueError(f"two kernels for {key}: {KERNELS[key].__qualname__} and {builder.__qualname__}")
            KERNELS[key] = builder
        return builder
    return add


def has_kernel(codec: str, op: str, target: tvm.target.Target) -> bool:
    return (codec, op, target.kind.name) in KERNELS


def kernel_for(enc: Encoded, target: tvm.target.Target, conv: ConvSpec | None = None, op: str | None = None,
               **options) -> KernelCall:
    """The kernel that computes ``x @ W.T`` (or the conv in ``conv``, or the rows ``op="gather"`` takes) from
    ``enc`` on ``target``; ``options``: the codec's kernel options (``codecs.kernel_options``), passed to its builder."""
    op = op or ("matmul" if conv is None else "conv2d")
    builder = KERNELS.get((enc.codec, op, target.kind.name))
    if builder is None:
        raise NotImplementedError(f"no {op} kernel for codec {enc.codec!r} on {target.kind.name}")
    with target:  # builders may ask Target.current() for CPU features
        call = builder(enc, conv, **options)
    for variant in (call, call.large_batch):
        if variant is not None:
            variant.func = finish(variant.func, variant.kind)
    if call.at_load is not None:
        call.at_load.func = finish(call.at_load.func, f"{call.kind}_at_load").with_attr(AT_LOAD_ATTR, True)
    return call


def kernel_kind(func) -> str | None:
    """The kind (``KERNEL_ATTR``) of one of our kernels, else None."""
    attrs = func.attrs if isinstance(func, tirx.PrimFunc) and func.attrs is not None else {}
    return str(attrs[KERNEL_ATTR]) if KERNEL_ATTR in attrs else None


def is_per_call_kernel(func) -> bool:
    """Whether ``func`` is one of our kernels run on every call (``f(x, *constants, out)``), not at load."""
    return kernel_kind(func) is not None and AT_LOAD_ATTR not in func.attrs


def finish(func: tirx.PrimFunc, kind: str) -> tirx.PrimFunc:
    # Opaque (op_pattern 8): FuseOps must not merge a kernel into a function our schedule does not know.
    return func.with_attrs({KERNEL_ATTR: kind, "op_pattern": 8, "tirx.is_scheduled": True})


def kernel_layers(mod: tvm.IRModule) -> dict[str, str]:
    """Each of our kernels' names in ``mod`` -> the weights it computes from (``LAYER_ATTR``: "a, b" for a kernel
    that identical layers share); what ``bench --per-layer`` names its rows by."""
    return {gv.name_hint: str(f.attrs[LAYER_ATTR]) for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and LAYER_ATTR in f.attrs}

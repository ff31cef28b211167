"""Kernels built once per layout: builders whose PrimFunc depends on an encoding's layout, not on its values.

A kernel reads its encoding's arrays as parameters, so most builders make the same PrimFunc for every layer of one
shape and header (``bbs``'s sensitive row count, kept columns, method). A model repeats few layouts (the
MiniLM-shaped encoder's 36 ``bbs`` matmuls have 6), and a builder that parses TVMScript or schedules a kernel pays
for every layer: :func:`per_layout` pays once per layout. Identical kernels are compiled once anyway
(:mod:`.dedup`); this saves the building of them.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from typing import Callable, Hashable

import tvm
from tvm import tirx

from bie_compiler.codecs.base import Encoded

KEPT = 256  # functions a Recent keeps (the least recently used forgotten): a few MB of PrimFuncs at most


class Recent:
    """The ``KEPT`` most recently stored or found functions, by key: what a process's compiles build again."""

    def __init__(self):
        self._funcs: OrderedDict[Hashable, tirx.PrimFunc] = OrderedDict()

    def get(self, key: Hashable) -> tirx.PrimFunc | None:
        if key not in self._funcs:
            return None
        self._funcs.move_to_end(key)
        return self._funcs[key]

    def put(self, key: Hashable, func: tirx.PrimFunc) -> tirx.PrimFunc:
        self._funcs[key] = func
        self._funcs.move_to_end(key)
        if len(self._funcs) > KEPT:
            self._funcs.popitem(last=False)
        return func


def layout_key(enc: Encoded) -> tuple:
    """What a layout-determined kernel may read of ``enc``: its codec, shape and header (its arrays' values are the
    kernel's parameters; their shapes follow from these)."""
    return enc.codec, tuple(enc.shape), json.dumps(enc.header, sort_keys=True)


def target_key() -> tuple[str, str]:
    """The current target (and its host), which builders may ask for CPU features."""
    target = tvm.target.Target.current(allow_none=True)
    return str(target), str(target.host) if target is not None and target.host is not None else ""


def per_layout(build: Callable[..., tirx.PrimFunc]) -> Callable[..., tirx.PrimFunc]:
    """``build(enc, *options, **options)`` made once per :func:`layout_key` of ``enc``, options and current target
    (:func:`target_key`), and returned again for another encoding of that layout: for builders whose PrimFunc
    depends on nothing else (not on the arrays' values). ``.__wrapped__`` builds without the memo."""
    built = Recent()

    @functools.wraps(build)
    def memoized(enc: Encoded, *args, **kwargs) -> tirx.PrimFunc:
        key = (layout_key(enc), args, tuple(sorted(kwargs.items())), target_key())
        func = built.get(key)
        return func if func is not None else built.put(key, build(enc, *args, **kwargs))

    return memoized

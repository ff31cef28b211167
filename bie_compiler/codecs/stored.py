"""Weights that stay in their file until a codec needs them (ONNX external data).

A task names a :class:`StoredMatrix` instead of holding the matrix: whoever encodes it reads it, a
worker process included, so the compiling process neither holds every weight nor pickles any.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .layout import codec_matrix


@dataclass(frozen=True)
class StoredWeight:
    """A weight's raw little-endian values in a file: ``shape`` elements of ``dtype`` from byte ``offset``."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    def array(self) -> np.ndarray:
        """The values, read from the file (a fresh array: the file's pages are not mapped into the process)."""
        count = math.prod(self.shape)
        a = np.fromfile(self.path, np.dtype(self.dtype).newbyteorder("<"), count, offset=self.offset)
        if a.size != count:
            raise ValueError(f"{self.path}: {count} values from byte {self.offset} run past the end of the file")
        return a.astype(np.dtype(self.dtype), copy=False).reshape(self.shape)


@dataclass(frozen=True)
class StoredMatrix:
    """A stored weight as codecs take it ([N, K], :func:`~.layout.codec_matrix`), read when :meth:`load` is called."""

    weight: StoredWeight
    op: str
    transposed: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.weight.shape)

    def load(self) -> np.ndarray:
        return codec_matrix(self.weight.array(), self.op, self.transposed)


def loaded(matrix: np.ndarray | StoredMatrix) -> np.ndarray:
    """The matrix of a task: itself, or a stored one read now."""
    return matrix.load() if isinstance(matrix, StoredMatrix) else matrix


class LazyMapping(Mapping):
    """Values by name, each made only when read (and not kept): a model's matrices one at a time. ``sizes``
    (name -> weights), when given, lets :mod:`.parallel` hand out the largest first without making them."""

    def __init__(self, names: Iterable[str], make: Callable[[str], object], sizes: Mapping[str, int] | None = None):
        self._names, self._make, self.sizes = list(names), make, sizes

    def __getitem__(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        return self._make(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

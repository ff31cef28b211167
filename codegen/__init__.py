"""Kernels and schedules: from an encoded weight to a scheduled PrimFunc that computes from it.

The registry (:mod:`.kernel_registry`) maps (codec, op, target kind) to a builder; the
builders live beside their kernels in :mod:`.kernels`, whose import registers them all.
Schedule rules for the ops around the kernels are in :mod:`.schedules`, the builds and
the registered Relax pipelines in :mod:`.cpu` and :mod:`.cuda`.
"""

from .kernel_registry import (KERNEL_ATTR, KERNELS, LAYER_ATTR, ROW_DISPATCH_ATTR, SMALL_BATCH_ROWS, ConvSpec, KernelCall,
                              has_kernel, kernel_for, kernel_layers)
from . import kernels  # noqa: F401  (registers every kernel module's builders)
from .kernels.dense import dense_kernel, has_dense_kernel

__all__ = ["KERNEL_ATTR", "KERNELS", "LAYER_ATTR", "ROW_DISPATCH_ATTR", "SMALL_BATCH_ROWS", "ConvSpec", "KernelCall", "dense_kernel",
           "has_dense_kernel", "has_kernel", "kernel_for", "kernel_layers"]

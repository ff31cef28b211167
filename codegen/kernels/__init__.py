"""Kernel definitions, one module per family, each with its schedules and the builders it registers
(:func:`..kernel_registry.register`). Every module of this folder is imported here, so a kernel module
registers its builders by existing."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

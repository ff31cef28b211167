"""Keep TVM from importing PyTorch.

``tvm_ffi`` and ``tvm`` import ``torch`` eagerly whenever it is installed, only to exchange tensors with it;
nothing here passes them torch tensors. Where the optional extras put torch in the environment (the zoo's
MiniLM export, NWC training), that import costs seconds at every start of the CLI and of every benchmark
worker. This finder refuses ``torch`` to importers inside ``tvm`` and ``tvm_ffi`` only: code that wants
torch (the zoo exporter) still imports it, before or after TVM.
"""

from __future__ import annotations

import sys

_TVM_PACKAGES = ("tvm", "tvm_ffi")


def _importer_module() -> str:
    """The ``__name__`` of the module whose import statement is running (importlib's own frames skipped)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


class TorchHiddenFromTvm:
    """A meta-path finder: ``import torch`` from within TVM fails as if torch were not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "torch":
            return None
        importer = _importer_module()
        if importer.split(".", 1)[0] in _TVM_PACKAGES:
            raise ModuleNotFoundError("torch is hidden from TVM by bie_compiler", name="torch")
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` unless torch is loaded already (then TVM gets it anyway)."""
    if "torch" in sys.modules or any(isinstance(f, TorchHiddenFromTvm) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TorchHiddenFromTvm())

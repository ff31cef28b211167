"""bie-compiler: ONNX models compiled to artefacts whose weights are bit-level encodings."""

import os

# TVM's thread pool reads this once; without it TVM may use a single thread on small VMs.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

__version__ = "0.1.0"

from .driver import compile_model  # noqa: E402
from .errors import BieError  # noqa: E402


def load(artefact_dir):
    """Load a compiled artefact; returns a Runner (``runner({"x": array}) -> {"y": array}``)."""
    from bie_compiler.runtime.runner import Runner

    return Runner(artefact_dir)


__all__ = ["BieError", "__version__", "compile_model", "load"]

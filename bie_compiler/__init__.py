"""bie-compiler: ONNX models compiled to artefacts whose weights are bit-level encodings."""

import os

# TVM's thread pool reads this once; without it TVM may use a single thread on small VMs.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

from . import tvm_without_torch  # noqa: E402

tvm_without_torch.install()

__version__ = "0.1.0"

from .errors import BieError  # noqa: E402


def compile_model(*args, **kwargs):
    """Compile an ONNX model into an artefact folder (see :func:`bie_compiler.driver.compile_model`)."""
    from .driver import compile_model as compile_

    return compile_(*args, **kwargs)


def load(artefact_dir, expect_sha256=None, check_finite=False, planes=None):
    """Load a compiled artefact; returns a Runner (``runner({"x": array}) -> {"y": array}``).

    An artefact is native code: ``expect_sha256`` (the manifest's sha256 that ``compile`` printed) makes
    sure it is the one you compiled before any of its code runs. ``check_finite`` refuses NaN or Inf
    inputs and non-finite outputs of finite inputs (where the encoded kernels differ from onnxruntime).
    ``planes`` keeps only the top P magnitude planes of every ``bie-bitplane`` layer (progressive precision).
    """
    from bie_compiler.runtime.runner import Runner

    return Runner(artefact_dir, expect_sha256, check_finite, planes)


__all__ = ["BieError", "__version__", "compile_model", "load"]

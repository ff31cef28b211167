"""The GPU benchmark's stacked encodings (benchmarks/gpu/tiling.py) are valid encodings of the tiled weights."""

import sys
from pathlib import Path

import numpy as np
import pytest

from bie_compiler.codecs import CODECS, make_config, tans
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.kernels import tans_cuda, tans_matmul
from bie_compiler.codegen.target import make_target
from kernel_runs import assert_close, build, call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import tiling  # noqa: E402

CASES = [("bie-bitplane", {"bits": 4}), ("bie-binary", {"layout": "bitmap"}),
         ("bie-binary", {"layout": "index", "density": 0.1}), ("bie-blocked", {"density": 0.2}),
         ("bbs", {"preset": "moderate"}), ("bbs", {"preset": "conservative"})]


def block(n, k, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(5, (n, k)) * (rng.random((n, k)) > 0.5)).astype(np.float32)


@pytest.mark.parametrize("codec,options", CASES, ids=[f"{c}-{o}" for c, o in CASES])
def test_stacked_encoding_decodes_to_the_tiled_block(codec, options):
    module = CODECS[codec]
    enc = module.encode(block(64, 96), make_config(codec, options))
    stacked = tiling.stack(tiling.stack_k(enc, 2) if codec == "bbs" else enc, 3)
    assert np.array_equal(module.decode(stacked), np.tile(module.decode(enc), (3, 2 if codec == "bbs" else 1)))


def test_stacked_tans_streams_give_the_tiled_outputs_in_the_gpu_kernel():
    """Copies of the streams start on word boundaries (the reference decoder rejects the gap, the kernels skip it)."""
    enc = tans.encode(block(64, 1024), tans.Config(levels=15))
    stacked = tiling.stack(enc, 3)
    kernel_for(stacked, make_target("cuda"))  # the structural checks and the checksum pass
    kernel = build(tans_cuda.matmul(**tans_matmul.stream_layout(stacked), gpu=False), make_target())
    for rows in (1, 3):
        x = np.random.default_rng(rows).standard_normal((rows, 1024)).astype(np.float32)
        got = call(kernel, x, tans_matmul.constants(stacked, byte_words=False), (rows, 192))
        assert_close(got, np.tile(x @ tans.decode(enc).astype(np.float64).T, (1, 3)))

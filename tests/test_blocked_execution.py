"""``bie-blocked --blocked-execution``: ``load`` writes ``bie-binary``'s bitmap kernels' constants from the blocked
encoding at load (exactly those ``bie-binary`` builds from its bitmap encoding of the same ternary weights) and runs
those kernels; ``stream`` the blocked index kernels; ``auto`` the first where the bitmap is no larger."""

import numpy as np
import pytest

import bie_compiler
from bie_compiler.codecs import bie_binary, bie_blocked, kernel_options
from bie_compiler.codegen import ConvSpec, kernel_for
from bie_compiler.codegen.kernels import bitplane
from bie_compiler.codegen.target import make_target
from bie_compiler.parity import check_artefact, make_inputs
from check_results import assert_parity
from kernel_runs import assert_close, computed_constants, run

NO_AVX512 = "haswell"  # a CPU without the look-up instruction: the bitmap's packed planes and the bit-serial kernels

SHAPES = [  # (N, K, block_size, density): K not a multiple of 128 nor of 32, N not of 16 or 32, ragged last blocks
    (37, 97, 16, 0.0),
    (48, 300, 128, 0.0),
    (33, 257, 256, 0.6),
    (20, 200, 64, 0.1),
]


def ternary_pair(n: int, k: int, block_size: int, density: float):
    """The blocked encoding and ``bie-binary``'s bitmap encoding of the same weights, channel 3 all zero."""
    w = (np.random.default_rng(n * k).standard_t(4, (n, k)) * 0.05).astype(np.float32)
    w[3] = 0
    blocked = bie_blocked.encode(w, bie_blocked.Config(block_size=block_size, density=density))
    bitmap = bie_binary.encode(w, bie_binary.Config(layout="bitmap", density=density))
    assert np.array_equal(bie_blocked.decode(blocked), bie_binary.decode(bitmap))
    return blocked, bitmap


@pytest.mark.parametrize("mcpu", [None, NO_AVX512])
@pytest.mark.parametrize("n,k,block_size,density", SHAPES)
def test_load_writes_the_bitmap_kernels_constants(n, k, block_size, density, mcpu):
    target = make_target(mcpu=mcpu)
    blocked, bitmap = ternary_pair(n, k, block_size, density)
    load = kernel_for(blocked, target, blocked_execution="load")
    with target:
        binary = bitplane.llvm_call(bitmap, None, lut_tables="fp32")
    assert load.at_load is not None and load.kind == binary.kind
    assert load.large_batch.kind == binary.large_batch.kind
    written = computed_constants(load, target)  # the outputs filled with garbage first
    assert len(written) == len(binary.constants)
    for got, want in zip(written, binary.constants):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    dense = bie_blocked.decode(blocked)
    for rows in (1, 8):
        x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
        kernel = load if rows == 1 else load.large_batch
        if kernel.decodes:  # without AVX-512, above one row: the decode kernel of W [K, N], then a dense matmul
            assert_close(run(kernel.func, target, x, written, (k, n)), dense.T, 1e-7, mcpu)
        else:
            assert_close(run(kernel.func, target, x, written, (rows, n)), x @ dense.T, 1e-5, (rows, mcpu))


def test_auto_loads_where_the_bitmap_is_no_larger():
    w = (np.random.default_rng(0).standard_t(4, (64, 384)) * 0.05).astype(np.float32)
    default, sparse = (bie_blocked.encode(w, bie_blocked.Config(density=d)) for d in (0.0, 0.1))
    assert bie_blocked.execution(default, "auto")[0] == "load"  # ~58 % kept: ~4.7 bits a weight against 2
    assert bie_blocked.execution(sparse, "auto")[0] == "stream"  # 10 %: a byte a non-zero, ~0.9 bits a weight
    assert bie_blocked.execution(default, "stream")[0] == "stream"
    assert bie_blocked.execution(sparse, "load")[0] == "load"
    assert bie_blocked.execution(default, "load", "conv2d")[0] == "stream"
    assert kernel_options(bie_blocked.Config()) == {"blocked_execution": "auto"}


def test_each_execution_builds_its_kernels(target):
    """Auto's choice reaches the kernels: the bitmap's look-up-table GEMV (AVX-512) or bit-serial kernel and the
    constants written at load, or the blocked index loop and panel over the stored arrays; a conv decodes."""
    w = (np.random.default_rng(1).standard_t(4, (40, 200)) * 0.05).astype(np.float32)
    default, sparse = (bie_blocked.encode(w, bie_blocked.Config(density=d)) for d in (0.0, 0.1))
    cases = [(default, "auto", True), (sparse, "auto", False), (default, "stream", False), (sparse, "load", True)]
    for enc, asked, loads in cases:
        call = kernel_for(enc, target, blocked_execution=asked)
        assert (call.at_load is not None) == loads, asked
        assert call.kind.startswith("bitplane") if loads else call.kind == "blocked_index"
    conv = ConvSpec((1, 1), (0, 0, 0, 0), (1, 1), (40, 8, 5, 5))
    assert kernel_for(default, target, conv, blocked_execution="load").at_load is None


@pytest.fixture(scope="module")
def executions(model_dir, tmp_path_factory):
    """The mlp with each execution (auto at the default density and at 0.1)."""
    root = tmp_path_factory.mktemp("blocked-execution")
    settings = {"load": {"blocked_execution": "load"}, "stream": {"blocked_execution": "stream"},
                "auto": {}, "auto-sparse": {"density": 0.1}}
    return {name: bie_compiler.compile_model(model_dir["mlp"], root / name, "bie-blocked", options, min_weights=0,
                                             progress=None) for name, options in settings.items()}


def test_load_and_stream_match_onnxruntime_and_store_the_same_bytes(executions):
    load, stream = (bie_compiler.load(executions[e]) for e in ("load", "stream"))
    for key in ("bytes", "tensors"):
        assert load.manifest["weights"][key] == stream.manifest["weights"][key], key
    assert load.manifest["weights"]["at_load"] == "main_transform_params"
    assert "at_load" not in stream.manifest["weights"]
    for batch in (1, 8):
        inputs = make_inputs(load.inputs, batch=batch, seed=batch)
        for runner in (load, stream):
            assert_parity(check_artefact(runner, inputs=inputs), 1e-4)
        got, want = (list(r(inputs).values())[0] for r in (load, stream))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", ["load", "stream", "auto", "auto-sparse"])
def test_the_report_says_which_ran_and_why(executions, name):
    """Per layer: the execution asked, or auto's by the position bytes (the mlp's fc1 is sparse by construction: it
    streams at the default density, fc2 and fc3 load); at load, the artefact's at-load function."""
    manifest = bie_compiler.load(executions[name]).manifest
    chosen = []
    for layer in manifest["layers"]:
        n, k = layer["shape"]
        smaller = 2 * n * -(-k // 8) <= layer["details"]["index_bytes_blocked"]
        expected = name if name in ("load", "stream") else "load: auto" if smaller else "stream: auto"
        assert layer["details"]["kernel.blocked_execution"].startswith(expected), layer
        chosen.append(expected.split(":")[0])
    assert ("at_load" in manifest["weights"]) == ("load" in chosen)
    assert {"auto": ["stream", "load", "load"], "auto-sparse": ["stream"] * 3}.get(name, [name] * 3) == chosen


@pytest.mark.parametrize("name", ["load", "auto"])
def test_the_printed_report_notes_the_layers_decoded_at_load(executions, name, capsys):
    from bie_compiler.cli import _print_report

    manifest = bie_compiler.load(executions[name]).manifest
    _print_report(manifest)
    notes = [line for line in capsys.readouterr().out.splitlines() if "B global" in line]
    assert [line.endswith("; runs from a bitmap decoded at load") for line in notes] == \
        [layer["details"]["kernel.blocked_execution"].startswith("load") for layer in manifest["layers"]]
    assert len(notes) == 3 and any(line.endswith("at load") for line in notes)

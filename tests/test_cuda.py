"""The CUDA target without a GPU: kernels and whole models become device code, nvcc accepts it, and
loading says clearly that a GPU is needed. With a GPU (tests marked ``gpu``), parity against onnxruntime."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T
from tvm.support import nvcc

import bie_compiler
from bie_compiler.codecs import CODECS, bbs, bie_binary, bie_bitplane, make_config, tans
from bie_compiler.codegen import KERNELS, ConvSpec, cuda, has_kernel, kernel_for
from bie_compiler.codegen.kernels import bbs_cuda, bitplane, bitplane_cuda, sparse_index_cuda, tans_cuda, tans_matmul
from bie_compiler.codegen.kernels.warp_layout import ROWS_PER_TILE
from bie_compiler.codegen.weights import PRECISION_ATTR
from bie_compiler.codegen.target import make_target
from bie_compiler.errors import ArtefactError
from bie_compiler.parity import check_artefact, make_inputs
from bie_compiler.runtime.artefact import DEVICE_SOURCE
from bie_compiler.runtime.progressive_precision import keep_top_planes
from kernel_runs import assert_close, run

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`

ARCH = "sm_90"
# Codecs with CUDA kernels, each layout once; the other codecs must fall back to dense with a reason.
KERNEL_CASES = {
    "bitplane": ("bie-bitplane", {"bits": 4}),
    "bitplane-grouped": ("bie-bitplane", {"bits": 3, "group_size": 64}),
    "bitplane-grouped-48": ("bie-bitplane", {"bits": 3, "group_size": 48}),  # the bit-serial kernel
    "binary-bitmap": ("bie-binary", {"layout": "bitmap"}),
    "binary-index": ("bie-binary", {"layout": "index", "density": 0.1}),
    "blocked": ("bie-blocked", {"density": 0.2}),
    "bbs-moderate": ("bbs", {"preset": "moderate"}),
    "bbs-conservative": ("bbs", {"preset": "conservative"}),
    "tans": ("tans", {"levels": 15}),
}
TABLE_CASES = ["bitplane", "bitplane-grouped", "binary-bitmap"]  # look-up tables: batch 1, tiles, each + slices' sum
SHUFFLE_SUM_CASES = ["bitplane-grouped-48"]
SHARED_SUM_CASES = ["binary-index", "blocked", "tans"]  # tans: the matmul over the decoded weights
BBS_CASES = ["bbs-moderate", "bbs-conservative"]  # per batch path, the warps' sums meet in two shared-memory steps
FALLBACK_CODECS = [c for c in CODECS if not has_kernel(c, "matmul", make_target("cuda"))]
MODELS = ["mlp", "transformer", "cnn"]
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH: the CUDA source cannot be compiled")
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA device here (tvm.cuda(0) does not exist)")


@pytest.fixture(scope="module")
def target():
    return make_target("cuda", arch=ARCH)


@pytest.fixture(scope="module")
def kernel_source(target):
    """Each codec's CUDA kernel on awkward shapes (N not a multiple of the channels per block, K of 32), compiled."""
    funcs = {}
    for case, (codec, options) in KERNEL_CASES.items():
        enc = CODECS[codec].encode(weight(37, 300, 0), make_config(codec, options))
        call = kernel_for(enc, target)
        assert call.large_batch is None  # one kernel for every batch on the GPU
        name = case.replace("-", "_")
        funcs[name] = call.func.with_attr("global_symbol", name)
    mod = tvm.IRModule(funcs)
    cuda.check_thread_bindings(mod)
    return list(funcs), cuda.device_source(tvm.compile(mod, target))


def ptx(source: str) -> str:
    with tvm.target.Target({"kind": "cuda", "arch": ARCH}):  # compile_cuda takes the arch from the current target
        return nvcc.compile_cuda(source, target_format="ptx", arch=ARCH, compiler="nvcc").decode()


def weight(n, k, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, (n, k)) * (rng.random((n, k)) > 0.5)).astype(np.float32)


def test_cuda_target_records_arch_and_host():
    target = make_target("cuda", mcpu="x86-64-v3", arch="sm_80")
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == "sm_80"
    assert target.host.kind.name == "llvm" and str(target.host.attrs["mcpu"]) == "x86-64-v3"
    assert str(make_target("cuda").attrs["arch"]) == "sm_90"


def test_every_cuda_kernel_is_device_code(kernel_source):
    names, source = kernel_source
    # one device kernel each; tans three: the fused decode-GEMV (batch 1), else the decode and the matmul over it;
    # bbs three: batch 1, tiles of rows, the output unshuffle; bit-plane tables four (batch 1, tiles, each's sum);
    # index kernels two (batch 1, tiles of rows)
    expected = [f"{name}_kernel" for name in names] + ["tans_kernel_1", "tans_kernel_2"]
    expected += ["binary_index_kernel_1", "blocked_kernel_1"]
    expected += [f"{case.replace('-', '_')}_kernel_{i}" for case in BBS_CASES for i in (1, 2)]
    expected += [f"{case.replace('-', '_')}_kernel_{i}" for case in TABLE_CASES for i in (1, 2, 3)]
    assert sorted(cuda.global_functions(source)) == sorted(expected)
    bodies = kernel_bodies(source)

    def of(case):  # the device kernels of one case
        return [text for name, text in bodies.items() if name.startswith(f"{case.replace('-', '_')}_kernel")]

    for case in SHUFFLE_SUM_CASES:  # bit-plane kernels: each thread's sum reduced across its warp
        assert all("__shfl_down_sync(" in text for text in of(case)), case
    for case in SHARED_SUM_CASES + BBS_CASES:  # index kernels, the tans matmul, bbs: partial sums in shared memory
        assert any("__syncthreads()" in text for text in of(case)), case
    for case in TABLE_CASES:  # the subset sums' tables in dynamic shared memory (up to 66 KiB), behind a barrier
        assert sum("extern __shared__" in text and "__syncthreads()" in text for text in of(case)) == 2, case
    assert any("extern __shared__" in text for text in of("tans"))  # the tans decode table (up to 128 KiB)


def kernel_bodies(source: str) -> dict[str, str]:
    """Each ``__global__`` function of a CUDA source: its name -> its text up to the next one."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\(",
                                                          source)]
    ends = [start for start, _ in starts[1:]] + [len(source)]
    return {name: source[start:end] for (start, name), end in zip(starts, ends)}


@needs_nvcc
def test_cuda_kernels_compile_with_nvcc(kernel_source):
    names, source = kernel_source
    text = ptx(source)
    assert all(f".entry {name}_kernel(" in text for name in names)


def test_every_codec_with_a_cuda_kernel_has_a_case_here():
    assert {c for c, op, t in KERNELS if t == "cuda"} == {c for c, _ in KERNEL_CASES.values()}


@pytest.mark.parametrize("codec,options", [KERNEL_CASES["binary-index"], KERNEL_CASES["blocked"],
                                           ("bie-blocked", {"block_size": 512, "density": 0.5})])
@pytest.mark.parametrize("n,k", [(1, 1), (37, 300), (9, 1024)])
def test_warp_index_kernels_emulated_on_the_cpu(codec, options, n, k):
    """The GPU index kernels' loop nest, with its thread loops serial, against the reference decoder."""
    module = CODECS[codec]
    enc = module.encode(weight(n, k, n * k), make_config(codec, options))
    entries = enc.arrays["entries"] if enc.arrays["entries"].size else np.zeros(1, enc.arrays["entries"].dtype)
    if codec == "bie-binary":
        func = sparse_index_cuda.global_index(n=n, k=k, nnz=entries.size, entry_dtype=entries.dtype.name,
                                              sign_bit=bie_binary.index_entry_dtype(k)[1], gpu=False)
        constants = [enc.arrays["indptr"], entries, enc.arrays["scales"]]
    else:
        counts = enc.arrays["counts"]
        func = sparse_index_cuda.blocked_index(n=n, k=k, nnz=entries.size, block_size=int(enc.header["block_size"]),
                                               entry_dtype=entries.dtype.name, count_dtype=counts.dtype.name, gpu=False)
        constants = [enc.arrays["indptr"], counts, entries, enc.arrays["scales"]]
    for batch in (1, 3, 2 * ROWS_PER_TILE + 1):  # one row, a tile not full, two tiles
        x = np.random.default_rng(batch).standard_normal((batch, k)).astype(np.float32)
        assert_close(run_on_the_cpu(func, x, constants, (batch, n)), x @ module.decode(enc).astype(np.float64).T)


def run_on_the_cpu(func, x, constants, out_shape):
    """Build a kernel emulated on the CPU (``gpu=False``) and run it."""
    return run(func, make_target(), x, constants, out_shape)


BITPLANE_CASES = [("bie-bitplane", {"bits": 4}), ("bie-bitplane", {"bits": 3, "group_size": 64}),
                  ("bie-bitplane", {"bits": 8}), ("bie-binary", {"layout": "bitmap"})]


@pytest.mark.parametrize("codec,options", BITPLANE_CASES, ids=[f"{c}-{o}" for c, o in BITPLANE_CASES])
@pytest.mark.parametrize("n,k", [(3, 300), (37, 256), (4, 1), (4, 7), (4, 129), (33, 2200)])
def test_bitplane_tables_emulated_on_the_cpu(codec, options, n, k):
    """The GPU bit-plane kernel's loop nest (subset-sum tables) with its thread loops serial, against the reference
    decoder: batch 1, a tile of rows not full, two tiles; K short, not whole words, over several slices; channels
    not a multiple of a block's."""
    enc = CODECS[codec].encode(weight(n, k, n + k), make_config(codec, options))
    call = kernel_for(enc, make_target("cuda"))
    planes = int(enc.header["bits"]) if codec == "bie-bitplane" else 2  # sign + magnitudes, two's complement
    assert call.constants[0].shape == (planes, n, -(-k // 32)) and call.constants[0].dtype == np.uint32
    func = bitplane_cuda.matmul(bitplane_cuda_layout(enc, call), gpu=False)
    decoded = CODECS[codec].decode(enc).astype(np.float64)
    for batch in (1, 3, 2 * bitplane_cuda.ROWS_PER_TILE + 1):
        x = np.random.default_rng(batch).standard_normal((batch, k)).astype(np.float32)
        assert_close(run_on_the_cpu(func, x, call.constants, (batch, n)), x @ decoded.T)


@pytest.mark.parametrize("tuning", [bitplane_cuda.Tuning(channels_per_warp=16),
                                    bitplane_cuda.Tuning(words_per_lane=4, words_at_once=32)])
def test_bitplane_tables_other_tunings_emulated_on_the_cpu(tuning):
    """The tunings benchmarks/gpu times: 16 channels a warp (reduced in two steps), slices of 128 words."""
    n, k = 37, 5000
    enc = bie_bitplane.encode(weight(n, k, 3), make_config("bie-bitplane", {"bits": 4}))
    call = kernel_for(enc, make_target("cuda"))
    func = bitplane_cuda.matmul(bitplane_cuda_layout(enc, call), gpu=False, tuning=tuning)
    for batch in (1, 2 * bitplane_cuda.ROWS_PER_TILE + 1):
        x = np.random.default_rng(batch).standard_normal((batch, k)).astype(np.float32)
        assert_close(run_on_the_cpu(func, x, call.constants, (batch, n)),
                     x @ bie_bitplane.decode(enc).astype(np.float64).T)


def test_bitplane_tables_wide_warps_only_on_deep_grids_of_four_planes_or_more():
    """16 channels a warp where measured faster: 4 planes on the two large layers; not 2 planes, not 4096x4096."""
    def tuning(n, k, magnitude_planes):
        return bitplane_cuda.tuning_for(bitplane_cuda.Layout(n, k, magnitude_planes, 0, 0, 1))

    assert tuning(8192, 28672, 3) == tuning(28672, 8192, 3) == bitplane_cuda.WIDE_WARPS
    assert tuning(8192, 28672, 1) == tuning(4096, 4096, 3) == tuning(1536, 384, 7) == bitplane_cuda.Tuning()


def bitplane_cuda_layout(enc, call):
    n, k = enc.shape
    group = 0 if call.constants[1].shape[1] == 1 else int(enc.header["group_size"])
    return bitplane_cuda.Layout(n, k, call.constants[0].shape[0] - 1, 0, group, call.constants[1].shape[1])


@pytest.mark.parametrize("kept", [1, 2])
def test_bitplane_tables_planes_cut_at_load(kept):
    """The tables kernel over its planes cut at load (keep_top_planes) computes the encoding compiled with
    ``planes=kept``."""
    n, k = 21, 300
    full = bie_bitplane.encode(weight(n, k, 5), make_config("bie-bitplane", {"bits": 4}))
    cut = bie_bitplane.encode(weight(n, k, 5), make_config("bie-bitplane", {"bits": 4, "planes": kept}))
    call = kernel_for(full, make_target("cuda"))
    form = dict(call.func.attrs[PRECISION_ATTR])
    entry = {"tensor": 0, "form": str(form["form"]), "magnitude_bits": int(form["magnitude_bits"])}
    (at_load,) = keep_top_planes([call.constants[0]], [entry], kept, Path("artefact"))
    func = bitplane_cuda.matmul(bitplane_cuda_layout(full, call), gpu=False)
    x = np.random.default_rng(kept).standard_normal((2, k)).astype(np.float32)
    assert_close(run_on_the_cpu(func, x, [at_load, call.constants[1]], (2, n)),
                 x @ bie_bitplane.decode(cut).astype(np.float64).T)


@pytest.mark.parametrize("n,k", [(3, 300), (4, 129)])
def test_bitplane_bit_serial_compute_emulated_on_the_cpu(n, k):
    """Scales grouped by other than whole words: the bit-serial kernel's TE compute (32-bit words, branch-free
    decode), unscheduled on the CPU; its rows of 16-byte vectors are whole words."""
    enc = bie_bitplane.encode(weight(n, k, n + k), make_config("bie-bitplane", {"bits": 3, "group_size": 48}))
    call = kernel_for(enc, make_target("cuda"))
    assert call.constants[1].shape == (n, -(-k // 128) * 4) and call.constants[1].dtype == np.uint32  # the signs
    planes = bitplane.BitPlanes(enc, words=True)
    assert all(np.array_equal(a, b) for a, b in zip(planes.constants, call.constants))
    x_holder = tvm.te.placeholder((tvm.te.var("m", "int64"), k), "float32", "x")
    holders = planes.holders()
    out = bitplane.compute_words(x_holder, *holders, k=k, top_bit=planes.top_bit, group=planes.group)
    prim = tvm.te.create_prim_func([x_holder, *holders, out])
    x = np.random.default_rng(k).standard_normal((2, k)).astype(np.float32)
    assert_close(run_on_the_cpu(prim, x, call.constants, (2, n)), x @ bie_bitplane.decode(enc).astype(np.float64).T)


BBS_CONFIGS = [
    {"preset": "moderate"},
    {"preset": "conservative"},
    {"preset": "moderate", "sensitive_fraction": 0.0},  # pruned rows only: 37 = 2 blocks of 16 + 5 lanes
    {"pruned_columns": 6, "method": "avg", "sensitive_fraction": 1.0},  # sensitive rows only
]


@pytest.mark.parametrize("options", BBS_CONFIGS, ids=[str(o) for o in BBS_CONFIGS])
@pytest.mark.parametrize("n,k", [(37, 300), (21, 576)])
def test_bbs_matmul_emulated_on_the_cpu(options, n, k):
    """The GPU bbs matmul's loop nest with its thread loops serial, against the reference decoder: batch 1, a tile
    of rows not full, two tiles; K padded, and K of whole groups (vector loads of x) over more groups than warps."""
    enc = bbs.encode(weight(n, k, n + k), make_config("bbs", options))
    decoded = bbs.decode(enc).astype(np.float64)
    func = bbs_cuda.matmul(enc, gpu=False)
    stored = kernel_for(enc, make_target(), lut_tables="fp32").constants  # the words as stored (int8 tables move them)
    for batch in (1, 3, 2 * bbs_cuda.ROWS_PER_TILE + 1):
        x = np.random.default_rng(batch).standard_normal((batch, k)).astype(np.float32)
        assert_close(run_on_the_cpu(func, x, stored, (batch, n)), x @ decoded.T)


def conv_nchw(x, w, stride, pad):
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("bihwrs,oirs->bohw", windows, w)


@pytest.mark.parametrize("o,i,kernel,stride,pad", [(16, 3, 3, 1, 1), (20, 36, 3, 2, 1)])
def test_bbs_conv_emulated_on_the_cpu(o, i, kernel, stride, pad):
    """The GPU bbs conv (decode inlined, one thread per output) with its thread loops serial, against the decoder."""
    rng = np.random.default_rng(o + i)
    matrix = rng.standard_normal((o, kernel * kernel * i)).astype(np.float32)  # codec layout: (kh, kw, in)
    enc = bbs.encode(matrix, bbs.Config("moderate", sensitive_fraction=0.3))
    decoded = bbs.decode(enc).reshape(o, kernel, kernel, i).transpose(0, 3, 1, 2).astype(np.float64)
    func = bbs_cuda.conv2d(enc, ConvSpec((stride, stride), (pad,) * 4, (1, 1), (o, i, kernel, kernel)), gpu=False)
    x = rng.standard_normal((2, i, 9, 7)).astype(np.float32)
    ref = conv_nchw(x, decoded, stride, pad)
    stored = kernel_for(enc, make_target(), lut_tables="fp32").constants  # the words as stored (int8 tables move them)
    assert_close(run_on_the_cpu(func, x, stored, ref.shape), ref)


TANS_CASES = [  # (N, K, Config): a short last stream, K not a multiple of the states or of 32, several stream blocks
    (1, 1, tans.Config(levels=3)),
    (37, 300, tans.Config(levels=15, stream_symbols=1000)),
    (70, 33, tans.Config(levels=255, states=3, table_log=8, stream_symbols=33)),  # 70 streams: 3 thread blocks
    (50, 129, tans.Config(levels=31, states=1, table_log=12, stream_symbols=300)),
]


@pytest.mark.parametrize("n,k,config", TANS_CASES)
def test_tans_matmul_emulated_on_the_cpu(n, k, config):
    """The GPU tANS kernel's loop nest (fused GEMV at batch 1, decode + matmul above), serial, against the decoder."""
    rng = np.random.default_rng(n + k)
    enc = tans.encode(weight(n, k, n * k), config)
    decoded = tans.decode(enc).astype(np.float64)
    func = tans_cuda.matmul(**tans_matmul.stream_layout(enc), gpu=False)
    for batch in (1, 3, 2 * ROWS_PER_TILE + 1):  # the fused GEMV; a tile of rows not full, two tiles
        x = rng.standard_normal((batch, k)).astype(np.float32)
        assert_close(run_on_the_cpu(func, x, tans_matmul.constants(enc, byte_words=False), (batch, n)), x @ decoded.T)


def test_unbound_kernel_is_refused_not_compiled_for_the_host(target):
    @T.prim_func(private=True)
    def host_loop(a: T.Buffer((8,), "float32"), b: T.Buffer((8,), "float32")):
        for i in range(8):
            b[i] = a[i] * T.float32(2)

    # Marked scheduled, so dlight leaves it alone: TVM would compile it to host code without a word.
    mod = tvm.IRModule({"host_loop": host_loop.with_attrs({"global_symbol": "host_loop", "tirx.is_scheduled": True})})
    with pytest.raises(cuda.DeviceCodeError, match="host_loop"):
        cuda.check_thread_bindings(mod)


@pytest.fixture(scope="module")
def artefacts(model_dir, tmp_path_factory):
    """Every (model, codec case) built for cuda, plus every codec without CUDA kernels (min_weights=0)."""
    root = tmp_path_factory.mktemp("cuda")
    cases = {**KERNEL_CASES, **{codec: (codec, {}) for codec in FALLBACK_CODECS}}
    return {
        (model, case): bie_compiler.compile_model(model_dir[model], root / f"{model}-{case}", codec, options,
                                                  target="cuda", arch=ARCH, min_weights=0, progress=None)
        for model in MODELS for case, (codec, options) in cases.items()
    }


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize("case", list(KERNEL_CASES))
@pytest.mark.parametrize("model", MODELS)
def test_every_encoded_layer_became_a_gpu_kernel(artefacts, model, case):
    m = manifest(artefacts[model, case])
    assert m["target"]["kind"] == "cuda" and m["target"]["arch"] == ARCH
    source = (artefacts[model, case] / DEVICE_SOURCE).read_text()
    kernels = set(cuda.global_functions(source))
    encoded = [layer["name"] for layer in m["layers"] if layer["fallback_reason"] is None]
    assert encoded and all(layer["codec"] == KERNEL_CASES[case][0] for layer in m["layers"] if layer["name"] in encoded)
    assert sorted(m["device_code"]["layer_kernels"]) == sorted(encoded)
    for layer in encoded:
        names = m["device_code"]["layer_kernels"][layer]
        assert names and set(names) <= kernels, (layer, names)
    if model == "cnn":
        convs = {layer["name"] for layer in m["layers"] if layer["op"] == "conv2d"}
        ours = {name for names in m["device_code"]["layer_kernels"].values() for name in names}
        dense_convs = [name for name in kernels - ours if "conv2d" in name]
        if has_kernel(KERNEL_CASES[case][0], "conv2d", make_target("cuda")):  # the convs compute from the encoding
            assert len(convs) == 3 and convs <= set(encoded) and not dense_convs
        else:  # the convs stay dense, and run on the GPU too
            assert len(dense_convs) == 3


@needs_nvcc
@pytest.mark.parametrize("case", ["bitplane", "binary-index", "blocked", "bbs-moderate", "tans"])
@pytest.mark.parametrize("model", MODELS)
def test_device_code_compiles_with_nvcc(artefacts, model, case):
    text = ptx((artefacts[model, case] / DEVICE_SOURCE).read_text())
    m = manifest(artefacts[model, case])
    assert all(f".entry {name}(" in text for names in m["device_code"]["layer_kernels"].values() for name in names)


@pytest.mark.parametrize("codec", FALLBACK_CODECS)
def test_codecs_without_cuda_kernels_stay_dense_with_the_reason(artefacts, codec):
    for model in MODELS:
        m = manifest(artefacts[model, codec])
        assert m["device_code"]["layer_kernels"] == {}
        for layer in m["layers"]:
            assert layer["codec"] == "dense"
            assert layer["fallback_reason"] == f"{codec} has no {layer['op']} kernel for cuda yet", layer


@pytest.mark.skipif(tvm.cuda(0).exist, reason="a CUDA device is present: the artefact loads")
def test_load_without_a_gpu_says_so(artefacts):
    path = artefacts["mlp", "bitplane"]
    with pytest.raises(ArtefactError, match=r"compiled for CUDA \(sm_90\) but this machine has no CUDA device"):
        bie_compiler.load(path)
    from bie_compiler.cli import main

    assert main(["check", str(path)]) == 2  # a clear error, exit 2
    assert main(["inspect", str(path)]) == 0  # inspect needs no device


@gpu
@needs_gpu
@pytest.mark.parametrize("case", list(KERNEL_CASES))
@pytest.mark.parametrize("model", MODELS)
def test_gpu_parity_with_decoded_weights_model(artefacts, model, case):
    runner = bie_compiler.load(artefacts[model, case])
    assert runner.device.device_type == tvm.cuda(0).device_type
    for batch in (1, 8):
        result = check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch))
        assert result["decoded_max_rel_err"] < 1e-4, result
        assert result["passed"]

"""The panel GEMM (matmuls above one row, ``codegen/kernels/panel_gemm.py``) of every codec that has one, against the
codec's reference decoder and a float64 matmul: one row, a register tile of rows, many rows with a ragged last tile;
N not a multiple of the 32-channel panel (nor of 16), K odd."""

import re

import numpy as np
import pytest
import tvm
import tvm.script
import tvm_ffi
from tvm import te, tirx
from tvm.ir.expr import TensorLoad

from bie_compiler.codecs import CODECS, kernel_options, make_config
from bie_compiler.codegen import gemm_epilogues, kernel_for, serial_small_loops
from bie_compiler.codegen.kernels import lut, panel_gemm, sparse_index
from bie_compiler.codegen.target import make_target
from bie_compiler.codegen.tir_pipeline import TIR_PIPELINE
from kernel_runs import assert_close, build, call, computed_constants

CASES = [
    ("int8", {}),
    ("bitwave", {"pruned_columns": 4}),
    ("bie-bitplane", {"bits": 4}),  # look-up-table words with AVX-512, else two 4-bit codes per byte
    ("bie-bitplane", {"bits": 3}),  # look-up-table words (no AVX-512: the bit-serial kernel, which decodes)
    ("bie-bitplane", {"bits": 5, "group_size": 64}),  # grouped scales: applied in the decode
    ("bbs", {"preset": "moderate"}),  # panels of sensitive rows and of pruned rows
    ("bbs", {"preset": "conservative", "sensitive_fraction": 0.0}),
    ("bbs", {"pruned_columns": 3, "method": "zps", "sensitive_fraction": 1.0}),  # every row sensitive: a last panel
    # of sensitive rows past the last one
    ("tans", {"levels": 15}),  # decoded at load into the look-up-table words (or the 4-bit codes)
    # bie-blocked streamed: index lists, a panel's own statements; K = 97, 129: a ragged last block
    ("bie-blocked", {"block_size": 64, "blocked_execution": "stream"}),
    ("bie-blocked", {"blocked_execution": "stream"}),  # blocks of 128: four mask words of 32 rows a block
    ("bie-blocked", {"block_size": 16, "blocked_execution": "stream"}),  # one mask word, part of it
    ("bie-blocked", {"block_size": 256, "blocked_execution": "stream"}),  # two-byte entries: stored entry by entry
    ("bie-blocked", {"blocked_execution": "load"}),  # bie-binary's bitmap panel, over the words written at load
    ("bie-binary", {"layout": "index"}),  # global indices: 128 rows of K at a time through the masks
    ("bie-binary", {"layout": "index", "density": 0.05}),  # channels without entries in a window
]
SHAPES = [(10, 97), (37, 97), (250, 129)]  # (N, K): less than a panel (computed over the padded panel); one ragged
# panel; 8 panels, the last ragged


@pytest.mark.parametrize("codec,options", CASES, ids=[f"{c}-{o}" for c, o in CASES])
@pytest.mark.parametrize("n,k", SHAPES)
def test_panel_gemm_matches_reference_decoder(codec, options, n, k, target, monkeypatch):
    monkeypatch.setattr(sparse_index, "sparse_rows", lambda *_: False)  # the index layouts' panels at any density
    rng = np.random.default_rng(n + k)
    w = (rng.standard_t(4, (n, k)) * (rng.random((n, k)) > 0.2)).astype(np.float32)
    config = make_config(codec, options)
    enc = CODECS[codec].encode(w, config)
    kernels = kernel_for(enc, target, **kernel_options(config))
    large = kernels.large_batch
    if large.decodes:
        assert codec == "bie-bitplane" and not lut.supported(target)  # the bit-serial form decodes
        return
    assert large.kind.endswith("_gemm") and large.func.attrs["tirx.is_scheduled"]
    assert large.constants is kernels.constants  # the one-row kernel's constants, nothing more stored
    # without it LLVM reloads a group's words and metadata for every weight of the group (bbs 512x256 at 8 rows
    # 2x slower), and TVM gives no function of the library noalias arguments (codegen/cpu.py)
    assert large.func.attrs["tirx.noalias"]
    kernel = build(large.func, target)
    constants = computed_constants(kernels, target)
    decoded = CODECS[codec].decode(enc).astype(np.float64)
    for rows in (1, 8, 128, 133):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert_close(call(kernel, x, constants, (rows, n)), x @ decoded.T, context=rows)


def test_without_avx512_the_integer_codes_run_the_panel_gemm():
    """bie-bitplane 4-bit on a CPU without the look-up instruction: two signed nibbles per byte, both decoded."""
    target = make_target(mcpu="x86-64-v3")
    rng = np.random.default_rng(0)
    enc = CODECS["bie-bitplane"].encode(rng.standard_normal((40, 77)).astype(np.float32),
                                        make_config("bie-bitplane", {"bits": 4}))
    kernels = kernel_for(enc, target)
    assert kernels.large_batch.kind == "bitplane_gemm"
    x = rng.standard_normal((9, 77)).astype(np.float32)
    got = call(build(kernels.large_batch.func, target), x, kernels.constants, (9, 40))
    assert_close(got, x @ CODECS["bie-bitplane"].decode(enc).T.astype(np.float64))


def test_each_panel_is_decoded_inside_the_parallel_loop_in_vectors(target):
    """Above one tile of rows: one decode per panel per call (not per tile of rows), vectors along the panel's
    channels, no dense weight."""
    enc = CODECS["int8"].encode(np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32),
                                make_config("int8", {}))
    script = kernel_for(enc, target).large_batch.func.without_attr(panel_gemm.DECODER_ATTR).script()
    assert script.count("if m <= T.int64(8):") == 1
    many = script[_past_the_tile_in_registers(script):]
    parallel, decode, rows = (many.index(s) for s in ("T.parallel(2)", 'T.sblock("decoded")', "T.serial("))
    assert parallel < decode < rows and "T.vectorized(16)" in many


@pytest.mark.parametrize("codec,options,mcpu", [("int8", {}, None), ("bie-bitplane", {"bits": 4}, None),
                                                ("bbs", {"preset": "moderate"}, None), ("bitwave", {}, None),
                                                ("bie-bitplane", {"bits": 4}, "cascadelake")])
def test_one_tile_of_rows_multiplies_the_weights_from_registers(codec, options, mcpu):
    """Up to one tile of rows (8) the decoded weights go to the FMAs without a decoded buffer (a weight's decode
    inlined, a run's stores multiplied into the tile) into a tile-sized accumulator; every row count up to 8 (the
    tile's rows past the last multiplied, not written back) and past it (the whole-panel branch), K not whole
    groups of the run decodes (97: the last group's weights past K not multiplied), match the reference decoder.
    cascadelake: no GFNI/VBMI, the bit planes decoded weight by weight."""
    target = make_target(mcpu=mcpu) if mcpu else make_target()
    n, k = 70, 97
    rng = np.random.default_rng(7)
    w = rng.standard_t(4, (n, k)).astype(np.float32)
    config = make_config(codec, options)
    enc = CODECS[codec].encode(w, config)
    kernels = kernel_for(enc, target, **kernel_options(config))
    func = kernels.large_batch.func.without_attr(panel_gemm.DECODER_ATTR)
    script = func.script()
    few = script[script.index("if m <= T.int64(8):"):_past_the_tile_in_registers(script)]
    assert "decoded" not in few and "panel_gemm_local" in few
    assert re.search(r'T.sblock_alloc_buffer\(\(8, (16|32)\), scope="local"\)', script)  # the accumulator: a tile
    kernel = build(kernels.large_batch.func, target)
    decoded = CODECS[codec].decode(enc).astype(np.float64)
    for rows in (1, 3, 7, 8, 9):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert_close(call(kernel, x, computed_constants(kernels, target), (rows, n)), x @ decoded.T, context=rows)


def _past_the_tile_in_registers(script: str) -> int:
    """Where a panel GEMM's TVMScript reaches its branch past the tile over the weights in registers (if m <= 8:
    ..., else: this)."""
    return script.index("\n    else:\n", script.index("if m <= T.int64(8):"))


def _words_and_view():
    words = te.placeholder((64, 32), "uint8", "words")
    return words, panel_gemm.word_view(words, "uint32")


def test_what_the_schedule_reads_of_a_decoder_survives_its_carried_script():
    """A GEMM kernel carries its decoder as TVMScript (gemm_epilogues parses it again): the decode's kind, group,
    unroll, views and the stored rows' positions read back from the parsed decoder as they were written."""
    words, view = _words_and_view()
    position = te.placeholder((40,), "int32", "position")
    by_weight = panel_gemm.ByWeight(lambda p, kk, c: view[p * 32 + c, kk // 4], group=8, unroll=4,
                                    views=[(view, words)])
    by_panels = panel_gemm.ByPanels(lambda holders, decoded, p: tirx.Evaluate(0))
    zeros = tirx.Broadcast(tirx.const(0, "float32"), panel_gemm.VECTOR)
    by_runs = panel_gemm.ByRuns(lambda holders, first, g: [panel_gemm.RunStore(kk, zeros) for kk in range(16)], 16)
    for decode, position_of, want in [
            (by_weight, position, panel_gemm.DecoderAttrs(2, 40, 0, [1], "weight", 8, 4)),
            (by_runs, None, panel_gemm.DecoderAttrs(2, 40, -1, [], "runs", 16, 1)),  # the group: the tile's chunks
            (by_panels, None, panel_gemm.DecoderAttrs(2, 40, -1, [], "panels", 0, 1))]:
        func = panel_gemm.decoder(decode, [position, words], 40, 32, position=position_of)
        assert panel_gemm.DecoderAttrs.read(tvm.script.from_source(func.script())) == want


def test_a_decode_states_only_valid_combinations():
    """An unroll needs a group (it unrolls weights of one group's word); a view or position reads a holder."""
    words, view = _words_and_view()
    with pytest.raises(ValueError, match="no group"):
        panel_gemm.ByWeight(lambda p, kk, c: view[p * 32 + c, kk // 4], unroll=4)
    other = te.placeholder((64, 32), "uint8", "other")
    with pytest.raises(ValueError, match="words is not one of"):
        panel_gemm.decoder(panel_gemm.ByWeight(lambda p, kk, c: view[p * 32 + c, kk // 4], views=[(view, words)]),
                           [other], 40, 32)


@pytest.mark.parametrize("codec,options", [("bie-blocked", {"block_size": 128, "blocked_execution": "stream"}),
                                           ("bie-blocked", {"block_size": 256, "blocked_execution": "stream"}),
                                           ("bie-binary", {"layout": "index"})])
def test_index_panels_with_fewer_entries_than_a_load(codec, options, target, monkeypatch):
    """Fewer non-zeros than the entries the mask decode loads a step: every load is of the array's last entries."""
    monkeypatch.setattr(sparse_index, "sparse_rows", lambda *_: False)
    w = np.zeros((37, 97), np.float32)
    w[[0, 3, 3, 20, 36], [5, 0, 96, 64, 31]] = [1.5, -2.0, 0.5, -1.0, 3.0]
    config = make_config(codec, options)
    enc = CODECS[codec].encode(w, config)
    assert 0 < enc.arrays["entries"].size < 8
    kernels = kernel_for(enc, target, **kernel_options(config))
    assert kernels.large_batch.kind.endswith("_gemm")
    x = np.random.default_rng(0).standard_normal((9, 97)).astype(np.float32)
    got = call(build(kernels.large_batch.func, target), x, kernels.constants, (9, 37))
    assert_close(got, x @ CODECS[codec].decode(enc).T.astype(np.float64))


SPARSE_ROWS = [("bie-blocked", {"blocked_execution": "stream"}),  # blocks of 128, K = 97, 300: one, three ragged
               ("bie-blocked", {"block_size": 256, "blocked_execution": "stream"}),  # two-byte entries
               ("bie-binary", {"layout": "index"})]


@pytest.mark.parametrize("codec,options", SPARSE_ROWS, ids=[f"{c}-{o}" for c, o in SPARSE_ROWS])
@pytest.mark.parametrize("n,k", [(37, 97), (50, 300)])
@pytest.mark.parametrize("density", [0.05, 0.15, 0.35, 0.55])
def test_sparse_index_layouts_run_the_index_loop_at_every_batch(codec, options, n, k, density, target):
    """At most ROWS_DENSITY non-zeros per weight (SHORT_ROWS_DENSITY on these short K: 0.55 is denser than the
    codecs' default), the index layouts' matmuls above one row run the one-row kernel,
    the index loop (1 row a scalar, up to 8 a ymm, 16 a zmm of an entry's rows of x) instead of decoding panels:
    one row, rows in one tile of 8, of 16, two, a ragged last tile; channels without entries (density 0.05 on K = 97
    leaves some with none); blocks whose count is not a multiple of the 4 sums (their last entries added against
    zero)."""
    rng = np.random.default_rng(n + k)
    w = rng.standard_t(4, (n, k)).astype(np.float32)
    config = make_config(codec, {**options, "density": density})
    enc = CODECS[codec].encode(w, config)
    assert enc.arrays["entries"].size <= sparse_index.SHORT_ROWS_DENSITY * n * k and k <= sparse_index.SHORT_K
    counts = enc.arrays["counts"] if "counts" in enc.arrays else np.diff(enc.arrays["indptr"])
    assert (counts % sparse_index.CHAINS != 0).any()
    kernels = kernel_for(enc, target, **kernel_options(config))
    assert kernels.kind.endswith("_index") and kernels.large_batch is None and not kernels.decodes
    assert gemm_epilogues.gemm_of(kernels.func, k) is None  # no GEMM: its epilogue is not fused into it
    kernel = build(kernels.func, target)
    decoded = CODECS[codec].decode(enc).astype(np.float64)
    for rows in (1, 2, 8, 9, 16, 17, 64):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        assert_close(call(kernel, x, kernels.constants, (rows, n)), x @ decoded.T, context=rows)


@pytest.mark.parametrize("k", [2100, 33000])
def test_global_index_loop_where_xt_outgrows_the_entry(k, target):
    """``bie-binary``'s global indices find their row of ``xt`` by rotating the entry (x and -x alternate), its start
    by one more bit per doubling of the tile's width where that fits the entry's bits: K = 2100 fits at 8 rows a tile
    (two-byte entries) but not at 16 (rotated by one, then multiplied); K = 33000 has four-byte entries (one row:
    the kernel the pass calls above one row decodes, so the index loop is called here at every batch)."""
    n = 20
    w = np.random.default_rng(k).standard_t(4, (n, k)).astype(np.float32)
    enc = CODECS["bie-binary"].encode(w, make_config("bie-binary", {"layout": "index", "density": 0.1}))
    layout, constants = sparse_index.global_layout(enc)
    assert layout["entry_dtype"] == ("uint16" if k < 2**15 else "uint32")
    loop = sparse_index.global_loop_call(layout, constants, batched=True)
    kernel = build(loop.func, target)
    decoded = CODECS["bie-binary"].decode(enc).astype(np.float64)
    for rows in (1, 8, 16, 17):
        x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
        assert_close(call(kernel, x, computed_constants(loop, target), (rows, n)), x @ decoded.T, context=rows)


CHUNKED = [("bie-blocked", {"blocked_execution": "stream"}),  # blocks of 128: two a chunk at 8 rows, 16
           ("bie-blocked", {"block_size": 64, "blocked_execution": "stream"}),  # four a chunk, the last chunk ragged
           ("bie-blocked", {"block_size": 256, "blocked_execution": "stream"}),  # two-byte entries, one a chunk
           ("bie-binary", {"layout": "index"})]  # counts of 128 positions written at load, two a chunk


@pytest.mark.parametrize("codec,options", CHUNKED, ids=[f"{c}-{o}" for c, o in CHUNKED])
@pytest.mark.parametrize("density", [0.03, 0.5])
def test_index_loop_walks_long_k_in_chunks(codec, options, density, target):
    """Where a tile's xt is over WHOLE_XT bytes (K = 1100: 140 KB at 16 rows, 70 KB at 8) the index loop above one
    row walks K in chunks of CHUNK_K positions, each channel's cursor and sums carried from chunk to chunk: every
    batch (one row: unchunked; one tile of 8, of 16, two groups of channels; several tiles) against the reference
    decoder, N not a multiple of the groups' 16 channels, channels with no entries in a chunk (density 0.03), and
    bie-binary's counts as written at load (each channel's entries per COUNT_SPAN positions of K)."""
    n, k = 50, 1100
    assert sparse_index.CHUNK_K < k and 2 * k * sparse_index.NARROW * 4 > sparse_index.WHOLE_XT
    w = np.random.default_rng(k).standard_t(4, (n, k)).astype(np.float32)
    enc = CODECS[codec].encode(w, make_config(codec, {**options, "density": density}))
    if codec == "bie-binary":
        layout, constants = sparse_index.global_layout(enc)
        loop = sparse_index.global_loop_call(layout, constants, batched=True)
        constants = computed_constants(loop, target)
        positions = enc.arrays["entries"] & 0x7FFF
        channels = np.repeat(np.arange(n), np.diff(enc.arrays["indptr"]))
        want = np.zeros((n, -(-k // sparse_index.COUNT_SPAN)), np.int64)
        np.add.at(want, (channels, positions // sparse_index.COUNT_SPAN), 1)
        np.testing.assert_array_equal(constants[1], want)
        func = loop.func
    else:
        layout, constants = sparse_index.blocked_layout(enc)
        func = sparse_index.index_loop(**layout, sign_bit=layout["block_size"].bit_length() - 1)
    kernel = build(func, target)
    decoded = CODECS[codec].decode(enc).astype(np.float64)
    for rows in (1, 2, 8, 9, 16, 17, 40):
        x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
        assert_close(call(kernel, x, constants, (rows, n)), x @ decoded.T, context=rows)


def test_global_counts_are_written_at_load_not_stored(tmp_path):
    """An artefact whose bie-binary index layer walks K in chunks (K = 600) stores what the encoding holds (indptr,
    entries, scales: the counts are written at load, by its at-load function) and computes its decoded weights at one
    row, one tile of 8 and of 16, and several tiles."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import bie_compiler
    from bie_compiler.codecs import bie_binary
    from bie_compiler.parity import check_artefact, make_inputs
    from check_results import assert_parity

    n, k, density = 40, 600, 0.3
    assert sparse_index.counted_chunks(k)
    w = (np.random.default_rng(k).standard_t(4, (k, n)) * 0.05).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mm.onnx")
    folder = bie_compiler.compile_model(tmp_path / "mm.onnx", tmp_path / "out", "bie-binary",
                                        {"layout": "index", "density": density}, min_weights=0, progress=None)
    runner = bie_compiler.load(folder)
    assert runner.manifest["weights"]["at_load"] == "main_transform_params"
    nonzeros = round(density * n * k)
    assert runner.manifest["weights"]["bytes"] == bie_binary.index_layout_nbytes(nonzeros, n, k) + 4 * n
    for batch in (1, 8, 16, 40):
        assert_parity(check_artefact(runner, inputs=make_inputs(runner.inputs, batch=batch, seed=batch)), 1e-4)


@pytest.mark.parametrize("codec,k,density,index", [
    ("bie-blocked", 600, 0.5, True), ("bie-blocked", 600, 0.6, False), ("bie-blocked", 300, 0.55, True),
    ("bie-binary", 600, 0.55, True), ("bie-binary", 600, 0.65, False), ("bie-binary", 300, 0.65, False)])
def test_the_index_loop_runs_above_one_row_by_density_and_k(codec, k, density, index, target):
    """Above one row the index layouts run the index loop up to ROWS_DENSITY non-zeros per weight, up to
    SHORT_ROWS_DENSITY where K is at most SHORT_K, and global indices (bie-binary's) up to GLOBAL_ROWS_DENSITY at any
    K; denser, the panel GEMM."""
    w = np.random.default_rng(k).standard_t(4, (40, k)).astype(np.float32)
    options = {"layout": "index"} if codec == "bie-binary" else {"blocked_execution": "stream"}
    config = make_config(codec, {"density": density, **options})
    kernels = kernel_for(CODECS[codec].encode(w, config), target, **kernel_options(config))
    assert (kernels.large_batch is None) == index


def test_index_loop_hands_nothing_to_its_tasks_above_one_row(target, monkeypatch):
    """Above one row no parallel loop of the index loop reads scratch the calling thread wrote: SerialWhenSmall weighs
    such a hand-off against the loop's work (channels in parallel over one xt written before them ran on one thread at
    8-16 rows). At one tile each group of channels transposes its own copy of xt, above it each tile its own rows; only
    one row's channel loop is handed its xt (2 K words)."""
    handoffs = []

    def recorded(loop, func_body, *args):
        words = handoff(loop, func_body, *args)
        handoffs.append((loop, func_body, words))
        return words

    handoff = serial_small_loops.handoff
    monkeypatch.setattr(serial_small_loops, "handoff", recorded)
    w = np.random.default_rng(0).standard_t(4, (64, 300)).astype(np.float32)
    config = make_config("bie-blocked", {"density": 0.2, "blocked_execution": "stream"})
    kernels = kernel_for(CODECS["bie-blocked"].encode(w, config), target, **kernel_options(config))
    tvm.compile(tvm.IRModule({"main": kernels.func.with_attr("global_symbol", "main")}), target,
                tir_pipeline=TIR_PIPELINE)
    one_row = [loop for _, body, _ in handoffs[:1] for loop in _loops(_one_row_branch(body))]
    walks = [(loop, words) for loop, _, words in handoffs if _reads(loop, "entries")]  # (not the stores into out)
    handed = [loop for loop, words in walks if not (isinstance(words, tirx.IntImm) and words.value == 0)]
    assert handed and all(any(loop.same_as(other) for other in one_row) for loop in handed)
    assert len(walks) - len(handed) >= 3  # a tile loop and a loop of groups for 8 rows a tile and for 16


def _one_row_branch(body):
    """The statement ``body`` runs where x has one row (``if m == 1``)."""
    found = []

    def collect(node):
        condition = node.condition
        if (isinstance(condition, tirx.EQ) and isinstance(condition.b, tirx.IntImm) and condition.b.value == 1
                and getattr(condition.a, "name", "") == "m"):
            found.append(node.then_case)
        return node

    tvm_ffi.structural_map(body, [(tirx.stmt.IfThenElse, collect)], order="post")
    assert len(found) == 1
    return found[0]


def _loops(stmt) -> list:
    found = []
    tvm_ffi.structural_map(stmt, [(tirx.stmt.For, lambda node: found.append(node) or node)], order="post")
    return found


def _reads(stmt, name: str) -> bool:
    """Whether ``stmt`` loads from a buffer named ``name`` (or a view of it, ``name_1``...)."""
    found = []

    def collect(node):
        if node.source.name.split("_")[0] == name:
            found.append(node)
        return node

    tvm_ffi.structural_map(stmt, [(TensorLoad, collect)], order="post")
    return bool(found)

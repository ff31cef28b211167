"""What the GEMV benchmarks share: timing, bandwidth references, cache size, onnxruntime sessions and models.

Threads: ``main`` sets ``TVM_NUM_THREADS`` and the runtime's pool settings
(``runtime/threads.py``: unpinned workers that poll briefly when idle, then sleep)
before TVM is imported (TVM reads them once, when its pool starts), so kernels
run as in a loaded artefact; onnxruntime sessions here never spin while idle:
with as many threads as cores, its spinning pool would hold the cores through
the other side's calls.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bie_compiler import ort_reference
from bie_compiler.bench import last_level_cache_bytes
from bie_compiler.runtime.threads import configure_thread_pool

BANDWIDTH_ARRAY_BYTES = 512 * 2**20
# a round has the cores' full compute when the compute probe runs at least this share of its best: its rate spreads
# over 0.8-1 of the best from round to round, and falls to about 0.5 when the host takes a core
FULL_COMPUTE = 0.75


def main(parse_args, run, report) -> None:
    """A CPU benchmark's entry point: threads set before TVM loads, then ``report(run(args))``, then ``--json``."""
    args = parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before tvm is imported
    configure_thread_pool()
    res = run(args)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


WARMUP_SECONDS = 1.0  # measured: a fresh process runs its first ~20 passes of a streamed GEMV about 2x slower


def median_seconds(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the time of one call, each timed as a loop of ``calls`` calls."""
    warm_until = time.perf_counter() + WARMUP_SECONDS  # thread pools started, lazy allocations done, clocks up
    fn()
    while time.perf_counter() < warm_until:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def interleaved_medians(fns: list, calls: int, rounds: int) -> list[float]:
    """Each of ``fns``' median time of one call over ``rounds`` rounds, each round a loop of ``calls`` calls of every
    function in turn (:func:`interleaved_passes`), after calling them in turn for ``WARMUP_SECONDS``."""
    warm_until = time.perf_counter() + WARMUP_SECONDS
    while time.perf_counter() < warm_until:
        for fn in fns:
            fn()
    methods = [{"pass": lambda fn=fn: [fn() for _ in range(calls)], "layers": calls} for fn in fns]
    interleaved_passes(methods, rounds)
    return [statistics.median(m["seconds"]) for m in methods]


def interleaved_passes(methods: list[dict], rounds: int, clock=time.perf_counter) -> None:
    """Time ``rounds`` rounds of one ``pass`` of every method in turn, the order reversed every other round (a fixed
    order favours one side on a loaded machine), after a warm-up pass of each (thread pools started, pages touched).
    Sets each method's ``seconds`` (per layer: a pass over its ``layers`` copies divided by them, one per round, by
    ``clock``) and ``ms`` (their median)."""
    for method in methods:
        method["pass"]()
    for method in methods:
        method["seconds"] = []
    for r in range(rounds):
        for method in (methods if r % 2 == 0 else reversed(methods)):
            start = clock()
            method["pass"]()
            method["seconds"].append((clock() - start) / method["layers"])
    for method in methods:
        method["ms"] = 1e3 * statistics.median(method["seconds"])


def streaming_sums() -> list[dict]:
    """The TVM kernels that only stream memory, as methods for :func:`interleaved_passes` (``reference``: True): the
    float32 sum over ``BANDWIDTH_ARRAY_BYTES`` parallel over 64 chunks (``TVM_NUM_THREADS`` threads, set by
    :func:`main`), each chunk read as one stream (the hardware
    prefetchers alone) or as 4 streams each prefetched ``lut.AHEAD_BYTES`` ahead (as the LUT kernels read), on one
    array. Which of the two reads faster varies from run to run, and neither always reaches onnxruntime's fp32
    GEMV's rate: :func:`bandwidth_fractions` takes the fastest reference of each round."""
    import tvm

    from bie_compiler.codegen.kernels import lut

    data = tvm.runtime.tensor(np.ones(BANDWIDTH_ARRAY_BYTES // 4, np.float32))
    return [{"name": f"TVM sum, {label}", "pass": pass_of, "layers": 1, "bytes": BANDWIDTH_ARRAY_BYTES,
             "reference": True}
            for label, pass_of in (("1 stream a chunk", streaming_sum(data, 1, 0)),
                                   ("4 prefetched streams a chunk", streaming_sum(data, 4, lut.AHEAD_BYTES)))]


def streaming_sum(data, streams: int, ahead_bytes: int):
    """A pass of a TVM float32 sum of ``data`` (1-D), parallel over 64 chunks, each chunk read as ``streams``
    contiguous parts side by side, each part prefetched into L2 ``ahead_bytes`` ahead of its reads (0: none), with
    two vector accumulators per part (one would wait on the add latency)."""
    import tvm
    from tvm.script import tirx as T

    from bie_compiler.codegen.kernels import lut
    from bie_compiler.codegen.target import make_target

    chunks, unroll, lanes = 64, 2, lut.LANES
    words = data.shape[0]
    part = words // chunks // streams
    ahead = ahead_bytes // 4
    assert lanes * 4 == lut.LINE_BYTES  # a vector is a cache line: one prefetch each

    @T.prim_func
    def total(x: T.Buffer((words,), "float32"), out: T.Buffer((chunks, lanes), "float32")):
        T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
        acc = T.decl_buffer((chunks, streams * unroll, lanes), "float32")  # once per call, not per parallel task
        for c in T.parallel(chunks):
            for a in T.unroll(streams * unroll):
                acc[c, a, T.Ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
            for v in range(part // lanes // unroll):
                for s in T.unroll(streams):
                    start: T.let = (c * streams + s) * part + v * unroll * lanes
                    for u in T.unroll(unroll):
                        if ahead > 0:
                            lut.prefetch(x[T.min(start + u * lanes + ahead, words - 1)])
                        acc[c, s * unroll + u, T.Ramp(0, 1, lanes)] = acc[c, s * unroll + u, T.Ramp(0, 1, lanes)] + x[
                            T.Ramp(start + u * lanes, 1, lanes)]
            out[c, T.Ramp(0, 1, lanes)] = lut.tree([acc[c, a, T.Ramp(0, 1, lanes)] for a in range(streams * unroll)])

    fn = tvm.compile(total, make_target()).mod["main"]
    out = tvm.runtime.empty((chunks, lanes), "float32")
    return lambda: fn(data, out)


def compute_probe() -> dict:
    """A method for :func:`interleaved_passes` (``probe``: True) that only computes: on every thread, chains of
    ``vpdpbusd`` over bytes held in registers, about a millisecond a pass with the cores to ourselves. This machine's
    host at times takes about one of the two cores' compute for seconds (the probe then runs at half its rate), and
    a kernel near its compute limit then misses the bandwidth while the memory streams run on; the probe's rate in
    each round tells those rounds apart (:func:`bandwidth_fractions`). Its ``bytes``: the dot products' input bytes."""
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    from bie_compiler.codegen.kernels import lut
    from bie_compiler.codegen.target import make_target

    chunks, repeats, chains, width = 64, 8000, 8, lut.LANES * 4  # 8 independent chains: vpdpbusd's latency hidden

    @T.prim_func
    def dots(a: T.Buffer((chains * width,), "uint8"), b: T.Buffer((chains * width,), "int8"),
             out: T.Buffer((chunks, lut.LANES), "int32")):
        T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
        for c in T.parallel(chunks):
            acc = T.decl_buffer((chains, lut.LANES), "int32")  # in the task, under TVM's stack limit: registers
            for j in T.unroll(chains):
                acc[j, T.Ramp(0, 1, lut.LANES)] = T.Broadcast(T.int32(0), lut.LANES)
            for _ in range(repeats):
                for j in T.unroll(chains):
                    acc[j, T.Ramp(0, 1, lut.LANES)] = tirx.call_llvm_pure_intrin(
                        "int32x16", lut.DOT, acc[j, T.Ramp(0, 1, lut.LANES)], a[T.Ramp(j * width, 1, width)],
                        b[T.Ramp(j * width, 1, width)])
            out[c, T.Ramp(0, 1, lut.LANES)] = lut.tree([acc[j, T.Ramp(0, 1, lut.LANES)] for j in range(chains)])

    fn = tvm.compile(dots, make_target()).mod["main"]
    args = [tvm.runtime.tensor(np.ones(chains * width, dtype)) for dtype in (np.uint8, np.int8)]
    out = tvm.runtime.empty((chunks, lut.LANES), "int32")
    return {"name": "compute probe", "pass": lambda: fn(*args, out), "layers": 1,
            "bytes": chunks * repeats * chains * width * 2, "probe": True}


def compute_summary(compute: list[float]) -> str:
    """The compute probe's rounds (:func:`bandwidth_fractions`' ``compute``) in words, for a report."""
    full = sum(c >= FULL_COMPUTE for c in compute)
    return f"full compute in {full} of {len(compute)} rounds (the probe's lowest: {min(compute):.2f} of its best)"


def bandwidth_fractions(methods: list[dict]) -> dict:
    """Each method's ``bw_fraction``: the median over rounds of its read rate (bytes a layer reads / time) over that
    round's ceiling, the fastest read rate of the ``reference`` methods in the round (all timed by
    :func:`interleaved_passes`, so a slow phase of the machine's memory hits the ceiling and the methods alike).
    Returns the median ceiling and each reference's median rate (bytes per second).

    With a :func:`compute_probe` among the methods, also each method's ``bw_fraction_full``: the same median over
    the rounds with the cores' full compute (the probe at ``FULL_COMPUTE`` of its best rate or more), and
    ``compute``: the probe's rate in each round over its best."""
    rates = {m["name"]: [m["bytes"] / t for t in m["seconds"]] for m in methods}
    references = [m["name"] for m in methods if m.get("reference")]
    rounds = range(len(rates[references[0]]))
    ceilings = [max(rates[name][r] for name in references) for r in rounds]
    probe = next((rates[m["name"]] for m in methods if m.get("probe")), [])
    compute = [rate / max(probe) for rate in probe]
    full = [r for r in rounds if compute and compute[r] >= FULL_COMPUTE]  # with a probe, its best round at least
    for method in methods:
        fractions = [rates[method["name"]][r] / ceilings[r] for r in rounds]
        method["bw_fraction"] = statistics.median(fractions)
        if full:
            method["bw_fraction_full"] = statistics.median(fractions[r] for r in full)
    result = {"bandwidth": statistics.median(ceilings),
              "references": {name: statistics.median(rates[name]) for name in references}}
    return {**result, "compute": compute} if compute else result


def matmul_chain(size: int, layers: int) -> onnx.ModelProto:
    """x [1, size] -> MatMul(w0) -> ... -> MatMul(w{L-1}) -> y; initializers left for the caller to add."""
    names = ["x", *(f"h{i}" for i in range(1, layers)), "y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(layers)]
    graph = helper.make_graph(
        nodes, "gemv_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_fanout(weight: np.ndarray, layers: int) -> onnx.ModelProto:
    """``layers`` MatMuls, each of ``x [1, K]`` with its own copy of ``weight`` [K, N] (any shape: no chaining)."""
    k, n = weight.shape
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(layers)]
    graph = helper.make_graph(
        nodes, "gemv_fanout", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, n]) for i in range(layers)],
        [numpy_helper.from_array(distinct_copy(weight, i), f"w{i}") for i in range(layers)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def distinct_copy(weight: np.ndarray, i: int) -> np.ndarray:
    """``weight`` with one element changed per copy: onnxruntime may share identical initializers."""
    copy = weight.copy()
    copy.flat[0] += i
    return copy


def ort_session(model: bytes | str, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    """onnxruntime on ``model`` (serialized, or a path) with ``threads`` intra-op threads, idle workers not spinning;
    with ``profile_prefix``, its profiler on (``end_profiling`` names the file)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def matmul_nbits(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """The model with its MatMuls as onnxruntime 4-bit ``MatMulNBits`` (block 32, symmetric, accuracy_level 4:
    its fast int8-activation path), or (None, the reason there is none); see ``bie_compiler.ort_reference``."""
    return ort_reference.matmul_nbits(model, bits=4, block_size=32, accuracy_level=4)


def copies_for(layer_bytes: int, factor: float) -> int:
    cache = last_level_cache_bytes() or 256 * 2**20
    return max(2, math.ceil(factor * cache / layer_bytes))


def nbits_fanout(weight: np.ndarray, layers: int) -> tuple[onnx.ModelProto | None, int, str | None]:
    """A model of ``layers`` MatMulNBits copies of ``weight`` (quantized once), its bytes per layer, or why none."""
    single, reason = matmul_nbits(matmul_fanout(weight, 1))
    if single is None:
        return None, 0, reason
    node = next(n for n in single.graph.node if n.op_type == "MatMulNBits")
    inits = {i.name: i for i in single.graph.initializer}
    graph = onnx.helper.make_graph([], "nbits_fanout", list(single.graph.input), [])
    for i in range(layers):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.output[0] = f"y{i}"
        for j, name in enumerate(node.input):
            if name in inits:
                copy.input[j] = f"{name}_{i}"
                tensor = onnx.TensorProto()
                tensor.CopyFrom(inits[name])
                tensor.name = copy.input[j]
                if tensor.raw_data:  # one byte changed per copy: onnxruntime may share identical initializers
                    raw = bytearray(tensor.raw_data)
                    raw[0] = i % 256
                    tensor.raw_data = bytes(raw)
                graph.initializer.append(tensor)
        graph.node.append(copy)
        out = onnx.ValueInfoProto()
        out.CopyFrom(single.graph.output[0])
        out.name = f"y{i}"
        graph.output.append(out)
    model = onnx.helper.make_model(graph, opset_imports=list(single.opset_import))
    per_layer = sum(numpy_helper.to_array(t).nbytes for t in inits.values() if t.name in node.input)
    return model, per_layer, None

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
    function in turn, the order reversed every other round (a fixed order favours one side on a loaded machine)."""
    warm_until = time.perf_counter() + WARMUP_SECONDS
    while time.perf_counter() < warm_until:
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            start = time.perf_counter()
            for _ in range(calls):
                fns[i]()
            times[i].append((time.perf_counter() - start) / calls)
    return [statistics.median(t) for t in times]


def numpy_read_bandwidth(repeats: int) -> float:
    """Bytes per second of numpy's single-threaded float32 sum over an array larger than the caches."""
    arr = np.ones(BANDWIDTH_ARRAY_BYTES // 4, np.float32)
    return arr.nbytes / median_seconds(arr.sum, 1, repeats)


def parallel_read_bandwidth(repeats: int) -> float:
    """Bytes per second of a TVM float32 sum over 512 MiB, parallel over 64 chunks (TVM_NUM_THREADS threads).

    The reference for "fraction of the bandwidth limit" with several threads:
    a kernel that does nothing but stream its input.
    """
    import tvm
    from tvm import s_tir, te

    from bie_compiler.codegen.target import make_target

    chunks, per_chunk = 64, BANDWIDTH_ARRAY_BYTES // 4 // 64
    x = te.placeholder((chunks, per_chunk), "float32", "x")
    lanes = te.reduce_axis((0, per_chunk), "k")
    total = te.compute((chunks,), lambda c: te.sum(x[c, lanes], axis=lanes), name="total")
    sch = s_tir.Schedule(te.create_prim_func([x, total]))
    block = sch.get_sblock("total")
    c, k = sch.get_loops(block)
    _, lane = sch.split(k, [None, 16])
    partial = sch.rfactor(lane, factor_axis=0)
    c, _, lane = sch.get_loops(partial)
    sch.vectorize(lane)
    sch.parallel(c)
    sch.reverse_compute_at(block, c)
    fn = tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), make_target()).mod["main"]
    data = tvm.runtime.tensor(np.ones((chunks, per_chunk), np.float32))
    out = tvm.runtime.empty((chunks,), "float32")
    return BANDWIDTH_ARRAY_BYTES / median_seconds(lambda: fn(data, out), 1, repeats)


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


def ort_session(model: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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

"""tANS benchmark: the generated CPU decoder's throughput, and the fused decode-and-GEMV against onnxruntime.

On one 4096x4096 layer (the heavy-tailed weights of ``bitplane_gemv.py``, fixed
seed) coded with the ``tans`` codec, in one run:

* decode throughput on one thread, in symbols per second per core of CPU time
  (``time.process_time``: on a shared machine, wall time mostly measures the
  wait for a core), medians: the decoder alone (``tans_matmul.symbol_decoder``,
  the symbols as bytes), the decoder writing the dense weights
  (``decode_weights``, the matmul's ``W [K, N]``, 4 bytes a symbol) and the one
  writing the look-up GEMV's words at load (``int8_lut_weights`` or
  ``lut_weights``), and the fused decode-and-GEMV at batch 1; the dense decoder
  also on ``--threads`` threads (wall time);
* batch-1 matmul time, one layer called repeatedly: the fused tANS kernel
  (``--tans-execution stream``), the GEMV over the words decoded at load
  (``--tans-execution load``, the default; the one-off decode at load timed
  too), the ``bie-bitplane`` kernel of the same precision on the same weights
  (the planes of the codes, sign included: 4 bits at 15 levels), each with the
  look-up tables ``--lut-tables auto`` gives it (int8 up to 4 planes on a CPU
  with AVX-512 VNNI: the report names each side's kernel; the int8-table GEMV is
  checked within its stated bound, ``bitplane_lut.int8_error_bound``),
  onnxruntime's fp32 MatMul, and
  onnxruntime's 4-bit ``MatMulNBits`` (block 32, symmetric, accuracy_level 4,
  from ``MatMulNBitsQuantizer``; needs the ``onnx-ir`` package, ``pip install
  -e .[bench]``: without it that row says so).

The bar for decoding is zstd's FSE on this kind of machine, about 1.0 Gsym/s per
core with 4 interleaved states, 1.3-1.5 with 8 (``shared/notes/tans.md``). Threads and idle
spinning are set as in ``bitplane_gemv.py``, whose helpers this script reuses.

    python benchmarks/tans_decode.py [--size 4096] [--levels 15] [--states 0] [--repeats 7] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bitplane_gemv import MAX_REL_ERROR, SEED  # noqa: E402
from common import interleaved_medians, matmul_chain, matmul_nbits, median_seconds, ort_session  # noqa: E402

CALLS = 5  # calls per timed loop
INTERLEAVED_ROUNDS = 20  # rounds of the load GEMV against bie-bitplane per --repeats


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="K = N of the square layer")
    p.add_argument("--levels", type=int, default=15, help="tans quantization levels (odd)")
    p.add_argument("--states", type=int, default=0, help="interleaved tANS states per stream (0: the codec's default)")
    p.add_argument("--repeats", type=int, default=7, help="timed loops; the median is reported")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for every library")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def matmul_nbits_session(model: onnx.ModelProto, threads: int):
    """onnxruntime 4-bit MatMulNBits session for the layer, or the reason there is none."""
    quantized, reason = matmul_nbits(model)
    if quantized is None:
        return None, reason
    nbytes = sum(numpy_helper.to_array(i).nbytes for i in quantized.graph.initializer)
    return (ort_session(quantized.SerializeToString(), threads), nbytes), None


def cpu_seconds(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the CPU time of one call (this process, all threads), each timed over ``calls``
    calls, after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - start) / calls)
    return statistics.median(times)


def set_tvm_threads(threads: int) -> None:
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, threads)


def run(args: argparse.Namespace) -> dict:
    import tvm

    from bie_compiler.codecs import bie_bitplane, tans
    from bie_compiler.codecs.lut_tables import INT8_KIND_SUFFIX
    from bie_compiler.codegen import kernel_for
    from bie_compiler.codegen.kernels import bitplane_lut, tans_matmul
    from bie_compiler.codegen.kernels.decode import Layout
    from bie_compiler.codegen.target import make_target

    size = args.size
    rng = np.random.default_rng(SEED)
    w = (rng.standard_t(5, (size, size)) / np.sqrt(size)).astype(np.float32)  # [K, N] for x @ W
    model = matmul_chain(size, 1)
    model.graph.initializer.append(numpy_helper.from_array(w, "w0"))
    enc = tans.encode(w.T, tans.Config(levels=args.levels, states=args.states or tans.Config.states))
    bitplane_bits = tans.lut_planes(args.levels) + 1
    bitplane = bie_bitplane.encode(w.T, bie_bitplane.Config(bits=bitplane_bits))
    decoded = tans.decode(enc)
    del w

    target = make_target()
    build = lambda f: tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target).mod["main"]  # noqa: E731
    call = kernel_for(enc, target, tans_execution="stream")
    fused = build(call.func)
    load = kernel_for(enc, target, tans_execution="load")
    at_load, load_gemv = build(load.at_load.func), build(load.func)
    stored = [tvm.runtime.tensor(a) for a in load.at_load.stored]
    computed = [tvm.runtime.empty(c.shape, c.dtype.name) for c in load.constants]
    bitplane_call = kernel_for(bitplane, target)
    bitplane_gemv = build(bitplane_call.func)
    bitplane_consts = [tvm.runtime.tensor(c) for c in bitplane_call.constants]
    decoder = build(tans_matmul.decode_weights(**tans_matmul.stream_layout(enc), into=Layout.matmul(size, size), x_ndim=2))
    consts = [tvm.runtime.tensor(c) for c in call.constants]
    x = np.random.default_rng(SEED + 1).standard_normal((1, size)).astype(np.float32)
    x_tvm, y_tvm, dense = tvm.runtime.tensor(x), tvm.runtime.empty((1, size), "float32"), tvm.runtime.empty((size, size), "float32")

    fused(x_tvm, *consts, y_tvm)
    ref = x.astype(np.float64) @ decoded.T.astype(np.float64)
    rel_error = float(np.abs(y_tvm.numpy() - ref).max() / np.abs(ref).max())
    at_load(*stored, *computed)
    load_gemv(x_tvm, *computed, y_tvm)
    deviation, peak = np.abs(y_tvm.numpy() - ref), np.abs(ref).max()
    load_error = float(deviation.max() / peak)
    if load.kind.endswith(INT8_KIND_SUFFIX):  # approximate tables: within their stated bound
        bound = bitplane_lut.int8_error_bound(x, tans_matmul.lut_layout(enc), enc.arrays["steps"][:, None])
        if (deviation > bound + MAX_REL_ERROR * peak).any():
            raise SystemExit(f"tans load GEMV ({load.kind}) past its int8 tables' bound (rel. error {load_error:.2e})")
    else:
        rel_error = max(rel_error, load_error)
    decoder(x_tvm, *consts, dense)
    symbol_decoder = build(tans_matmul.symbol_decoder(**tans_matmul.stream_layout(enc)))
    symbols_tvm = tvm.runtime.empty((size, size), "uint8")
    symbol_decoder(*consts[:3], symbols_tvm)
    symbols_exact = np.array_equal(symbols_tvm.numpy(), tans.decode_symbols(enc) + args.levels // 2)
    if rel_error > MAX_REL_ERROR or not np.array_equal(dense.numpy(), decoded.T) or not symbols_exact:
        raise SystemExit(f"TVM tANS kernels disagree with the reference decoder (matmul rel. error {rel_error:.2e})")
    del dense, decoded

    symbols = size * size
    out_dense = tvm.runtime.empty((size, size), "float32")
    set_tvm_threads(1)
    symbols_cpu = cpu_seconds(lambda: symbol_decoder(*consts[:3], symbols_tvm), CALLS, args.repeats)
    decode_cpu = cpu_seconds(lambda: decoder(x_tvm, *consts, out_dense), CALLS, args.repeats)
    at_load_cpu = cpu_seconds(lambda: at_load(*stored, *computed), CALLS, args.repeats)
    fused_cpu = cpu_seconds(lambda: fused(x_tvm, *consts, y_tvm), CALLS, args.repeats)
    fused_1 = median_seconds(lambda: fused(x_tvm, *consts, y_tvm), CALLS, args.repeats)
    set_tvm_threads(args.threads)
    decode_n = median_seconds(lambda: decoder(x_tvm, *consts, out_dense), CALLS, args.repeats)
    fused_n = median_seconds(lambda: fused(x_tvm, *consts, y_tvm), CALLS, args.repeats)
    at_load_n = median_seconds(lambda: at_load(*stored, *computed), CALLS, args.repeats)
    # interleaved, the order alternating: the two kernels see the same machine (the load GEMV is the bie-bitplane
    # kernel over planes of the same count: their ratio measures the noise)
    load_n, bitplane_n = interleaved_medians([lambda: load_gemv(x_tvm, *computed, y_tvm),
                                              lambda: bitplane_gemv(x_tvm, *bitplane_consts, y_tvm)],
                                             CALLS, INTERLEAVED_ROUNDS * args.repeats)

    feed = {"x": x}
    fp32 = ort_session(model.SerializeToString(), args.threads)
    ort_fp32 = median_seconds(lambda: fp32.run(None, feed), CALLS, args.repeats)
    nbits, why = matmul_nbits_session(model, args.threads)
    ort_nbits = median_seconds(lambda: nbits[0].run(None, feed), CALLS, args.repeats) if nbits else None
    report = tans.report(enc)
    return {
        "size": size, "threads": args.threads, "repeats": args.repeats, "target": str(target.attrs["mcpu"]),
        "levels": args.levels, "states": int(enc.header["states"]), "streams": report["streams"],
        "tans_bits_per_weight": enc.bits_per_weight, "tans_payload_bits_per_weight": report["payload_bits_per_weight"],
        "tans_bytes": enc.nbytes, "fp32_bytes": 4 * symbols, "nbits_bytes": nbits[1] if nbits else None,
        "bitplane_bits": bitplane_bits, "bitplane_bytes": bitplane.nbytes,
        "load_decode_ms": 1e3 * at_load_n, "load_vs_bitplane": load_n / bitplane_n,
        "load_kind": load.kind, "bitplane_kind": bitplane_call.kind,
        "matmul_rel_error": rel_error, "load_rel_error": load_error,
        "decoder_alone_gsym_per_cpu_s": symbols / symbols_cpu * 1e-9,
        "dense_decoder_gsym_per_cpu_s": symbols / decode_cpu * 1e-9,
        "load_decoder_gsym_per_cpu_s": symbols / at_load_cpu * 1e-9,
        "decode_gsym_per_s_threads": symbols / decode_n * 1e-9,
        "fused_gsym_per_cpu_s": symbols / fused_cpu * 1e-9,
        "ms": {"tans fused, 1 thread": 1e3 * fused_1, f"tans fused, {args.threads} threads": 1e3 * fused_n,
               f"tans load ({load.kind}), {args.threads} threads": 1e3 * load_n,
               f"bie-bitplane {bitplane_bits}-bit ({bitplane_call.kind}), {args.threads} threads": 1e3 * bitplane_n,
               f"onnxruntime fp32, {args.threads} threads": 1e3 * ort_fp32,
               f"onnxruntime MatMulNBits 4-bit, {args.threads} threads": None if ort_nbits is None else 1e3 * ort_nbits},
        "matmul_nbits_missing": why,
    }


def print_report(res: dict) -> None:
    n = res["size"]
    print(f"{n}x{n} layer, tans {res['levels']} levels, {res['states']} interleaved states, {res['streams']} streams, "
          f"llvm -mcpu={res['target']}, median of {res['repeats']}")
    print(f"tans: {res['tans_bits_per_weight']:.3f} bits/weight stored ({res['tans_payload_bits_per_weight']:.3f} "
          f"symbol payload), {res['tans_bytes'] / 1e6:.2f} MB; fp32 {res['fp32_bytes'] / 1e6:.1f} MB"
          + (f"; MatMulNBits {res['nbits_bytes'] / 1e6:.2f} MB" if res["nbits_bytes"] else ""))
    print(f"correctness: decoder bit-exact vs reference; fused matmul rel. error {res['matmul_rel_error']:.1e}; load "
          f"GEMV ({res['load_kind']}) {res['load_rel_error']:.1e}")
    print()
    print(f"decode, 1 thread, per second of CPU time: the decoder alone {res['decoder_alone_gsym_per_cpu_s']:.3f} "
          f"Gsym/s, writing the dense fp32 weights {res['dense_decoder_gsym_per_cpu_s']:.3f}, writing the look-up "
          f"GEMV's words (at load) {res['load_decoder_gsym_per_cpu_s']:.3f} (bar: zstd FSE ~1.0 Gsym/s per core with "
          "4 states, 1.3-1.5 with 8)")
    print(f"dense decoder on {res['threads']} threads: {res['decode_gsym_per_s_threads']:.3f} Gsym/s (wall time)")
    print(f"fused decode-and-GEMV, batch 1, 1 thread: {res['fused_gsym_per_cpu_s']:.3f} Gsym/s per second of CPU time")
    print(f"load: decoding the streams into {res['bitplane_bits']} planes once takes {res['load_decode_ms']:.1f} ms "
          f"({res['threads']} threads); its GEMV ({res['load_kind']}) / bie-bitplane {res['bitplane_bits']}-bit "
          f"({res['bitplane_kind']}, {res['bitplane_bytes'] / 1e6:.2f} MB) = {res['load_vs_bitplane']:.2f} "
          "(interleaved)")
    print()
    print("batch-1 matmul, one layer called repeatedly:")
    for name, ms in res["ms"].items():
        print(f"  {name:<45} " + (f"{ms:8.3f} ms" if ms is not None else f"  n/a: {res['matmul_nbits_missing']}"))


if __name__ == "__main__":
    common.main(parse_args, run, print_report)

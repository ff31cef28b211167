"""Encoding time of a model's layers on 1 worker, on N processes and on a Ray cluster, and that the bytes are the same.

    python benchmarks/parallel_encoding.py [--codec tans] [--jobs 2] [--model models/encoder.onnx] \
        [--ray local] [--repeat 3]

Encodes every MatMul/Gemm weight of the model (default: the MiniLM-shaped encoder, written if missing)
with the codec's defaults, serially, in ``--jobs`` processes (worker start-up included) and, with ``--ray
ADDRESS``, on that Ray cluster (connected once, before the timings: "local" starts one here), the modes
interleaved ``--repeat`` times; prints each mode's median wall time, its ratio to one worker, its CPU time
(this process and its worker processes), the load average, and whether every encoding hashes the same.
For worker processes also the CPU critical path: the busiest worker's CPU time (its start-up included) plus
this process's, over one worker's CPU time: the ratio the wall times would show on cores of their own, which
stays meaningful when other jobs share the cores (then the wall times do not: the kernel's autogroup
scheduling gives this session's processes one share, however many there are). Weights in external data files are read by the process encoding them
(as ``compile`` does), the others passed in memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

from bie_compiler import codecs, external_data
from bie_compiler.codecs.parallel import Workers
from bie_compiler.codecs.layout import codec_matrix
from bie_compiler.codecs.stored import StoredMatrix
from bie_compiler.models import write_all


def matmul_matrices(path: Path) -> dict:
    """Each MatMul/Gemm weight's [N, K] matrix, or its :class:`StoredMatrix` if it lies in a data file."""
    model = external_data.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    matrices = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            tensor = inits[node.input[1]]
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            stored = external_data.stored_weight(tensor)
            matrices[tensor.name] = StoredMatrix(stored, "matmul", transposed) if stored is not None else \
                codec_matrix(external_data.tensor_array(tensor), "matmul", transposed)
    return matrices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="tans")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--ray", default=None, metavar="ADDRESS", help="also on this Ray cluster ('local': a new one)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    path = args.model or write_all("out/models", ["encoder"])[0]
    matrices = matmul_matrices(path)
    config = codecs.make_config(args.codec, {})
    tasks = {name: (args.codec, m, config, None) for name, m in matrices.items()}
    modes = {"1 worker": dict(jobs=1), f"{args.jobs} processes": dict(jobs=args.jobs)}
    if args.ray:
        import ray

        ray.init(address=args.ray, include_dashboard=False, log_to_driver=False, logging_level="error")
        modes[f"ray, {args.jobs} workers"] = dict(jobs=args.jobs, ray="auto")
    times, cpu, critical = ({mode: [] for mode in modes} for _ in range(3))
    hashes = {}
    for _ in range(args.repeat):
        for mode, how in modes.items():
            start, cpu_start, parent_start = time.perf_counter(), cpu_seconds(), time.process_time()
            results = Workers(**how).map(encoded_with_cpu, tasks)  # as encode_many runs encode
            times[mode].append(time.perf_counter() - start)
            cpu[mode].append(cpu_seconds() - cpu_start)
            hashes[mode] = {n: enc.sha256() for n, (enc, _, _) in results.items()}
            workers = {}  # pid -> the CPU time it reported last
            for _, pid, seconds in results.values():
                workers[pid] = max(workers.get(pid, 0.0), seconds)
            if how.get("ray") is None and os.getpid() not in workers:  # a Ray worker's CPU is not this run's alone
                critical[mode].append(max(workers.values()) + time.process_time() - parent_start)
    total = sum(m.size for m in matrices.values())
    print(f"{path.name}: {len(matrices)} layers, {total / 1e6:.1f}M weights, codec {args.codec}, "
          f"median of {args.repeat}, load average at the end {os.getloadavg()[0]:.1f}")
    one, one_cpu = statistics.median(times["1 worker"]), statistics.median(cpu["1 worker"])
    for mode, seconds in times.items():
        print(f"{mode}: {statistics.median(seconds):.2f} s (ratio {statistics.median(seconds) / one:.2f}; "
              f"runs {', '.join(f'{s:.1f}' for s in seconds)}); CPU {statistics.median(cpu[mode]):.2f} s"
              + (" in this process (its Ray workers' not counted)" if "ray" in mode else "")
              + (f"; CPU critical path {statistics.median(critical[mode]):.2f} s (ratio "
                 f"{statistics.median(c / s for c, s in zip(critical[mode], cpu['1 worker'])):.2f})"
                 if critical[mode] else ""))
    print(f"bytes identical: {all(h == hashes['1 worker'] for h in hashes.values())}")


def encoded_with_cpu(codec: str, matrix, config, calibration) -> tuple:
    """:func:`codecs.encode`'s result, the process that ran it, and the CPU time that process has used so far
    (a worker's since it was started: its start-up included)."""
    encoded = codecs.encode(codec, matrix, config, calibration)
    used = os.times()
    return encoded, os.getpid(), used.user + used.system


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


if __name__ == "__main__":
    main()

"""The panel GEMM (matmuls above one row) over the two layouts ``--lut-tables`` stores the same codes in.

One layer (N x K, standard normal weights, fixed seed) encoded once with ``bie-bitplane --bits BITS`` (4: 4 planes
with the sign; 3: the int8 layout's 3 bytes a channel) and once with
``bbs --pruned-columns 4``; each encoding's panel GEMM (``kernel_for(...).large_batch``) built with the float32
tables' layout and with the int8 tables' (``lut_tables="int8"``: the same codes, the GEMV's byte layout). Both kernels
checked against the reference decoder, then timed in the same process at ``--rows`` rows of activations, the two
layouts interleaved (the order alternating each round), ``--calls`` calls a round; printed: the median microseconds
per call of each and int8 / fp32.

    python benchmarks/panel_gemm_tables.py [--n 1536] [--k 384] [--rows 128] [--rounds 15] [--calls 20] [--bits 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import tvm

from bie_compiler.codecs import CODECS, make_config
from bie_compiler.codegen import kernel_for
from bie_compiler.codegen.target import make_target

LAYOUTS = ("fp32", "int8")


def layout_calls(codec: str, options: dict, n: int, k: int, rows: int, target) -> dict:
    """For each layout, a call of the panel GEMM on fixed activations, its output checked against the decoder's."""
    rng = np.random.default_rng(0)
    enc = CODECS[codec].encode(rng.standard_normal((n, k)).astype(np.float32), make_config(codec, options))
    x = rng.standard_normal((rows, k)).astype(np.float32)
    want = x @ CODECS[codec].decode(enc).astype(np.float64).T
    calls = {}
    for tables in LAYOUTS:
        kernels = kernel_for(enc, target, lut_tables=tables)
        assert kernels.at_load is None  # the stored constants are what the kernel reads
        module = tvm.IRModule({"main": kernels.large_batch.func.with_attr("global_symbol", "main")})
        kernel = tvm.compile(module, target).mod["main"]
        args = [tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in kernels.constants),
                tvm.runtime.empty((rows, n), "float32")]
        kernel(*args)
        error = np.abs(args[-1].numpy() - want).max() / np.abs(want).max()
        assert error < 1e-5, (codec, tables, error)
        calls[tables] = lambda kernel=kernel, args=args: kernel(*args)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1536)
    parser.add_argument("--k", type=int, default=384)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--bits", type=int, default=4, help="bie-bitplane's bits (2 to 4: the int8 layout's planes)")
    args = parser.parse_args()
    target = make_target()
    for codec, options in [("bie-bitplane", {"bits": args.bits}), ("bbs", {"pruned_columns": 4})]:
        calls = layout_calls(codec, options, args.n, args.k, args.rows, target)
        times = {tables: [] for tables in LAYOUTS}
        for r in range(args.rounds):
            for tables in LAYOUTS if r % 2 else LAYOUTS[::-1]:
                start = time.perf_counter()
                for _ in range(args.calls):
                    calls[tables]()
                times[tables].append((time.perf_counter() - start) / args.calls * 1e6)
        median = {tables: statistics.median(t) for tables, t in times.items()}
        print(f"{codec} {options} {args.n}x{args.k} at {args.rows} rows: fp32 layout {median['fp32']:.0f} us, "
              f"int8 layout {median['int8']:.0f} us, int8 / fp32 {median['int8'] / median['fp32']:.3f} "
              f"(load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()

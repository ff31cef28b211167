"""A/B of a LUT GEMV (``bie-bitplane`` or ``bbs``) against its own code at another git revision, in one process.

The kernel of the working tree (``codegen/kernels/bitplane_lut.py``, or
``bbs_lut.py`` with ``--codec bbs``, and ``lut.py``) and the one of
``--against`` (those files as they were at that revision, loaded as modules of
their own) are built for the same weights (each laid out by its own revision's
``words_of``), checked against the exact product
(``bie-bitplane``: random codes and scales; ``bbs``: the moderate preset's
encoding of heavy-tailed weights at each ``--sensitive`` fraction, against its
reference decoder), and called in turn, the order alternating every round; the
median and least time of each are printed with their ratio (below 1: the
working tree is faster), and whether their outputs are bit-identical (a change
meant to keep the arithmetic per output, as a new loop structure, shows it).

* ``--mode l2``: one thread, CPU time (``time.process_time``), one copy of the
  words, small enough for L2 (the default 1024 channels x 2048): the kernels'
  compute, which the other jobs of a shared machine disturb least;
* ``--mode stream``: ``--threads`` threads, wall time, distinct copies of the
  words together at least twice the L3, each round a pass over them (the
  weights read from memory, as in ``bitplane_gemv.py``).

    python benchmarks/lut_gemv_ab.py --against REV [--codec bie-bitplane|bbs] [--mode l2|stream] [--planes 2,3,4]
        [--sensitive 0.2] [--shape NxK] [--groups 1] [--tables fp32|int8] [--rounds 60] [--threads 2]

``--tables int8`` with ``--codec bbs``: the moderate preset's 4 kept columns, the int8-table GEMV.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import copies_for, interleaved_passes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KERNELS = "codegen/kernels"
CALLS = 5  # calls per timed loop in L2 (a pass over the copies when streamed)
# each codec's kernel module and its relative imports made absolute: lut from the revision, the rest from the tree
MODULES = {
    "bie-bitplane": ("bitplane_lut", {
        "from ..kernel_registry import": "from bie_compiler.codegen.kernel_registry import",
        "from ..layout_memo import": "from bie_compiler.codegen.layout_memo import",
        "from . import column_runs, lut, panel_gemm":
            "import base_lut as lut\nfrom bie_compiler.codegen.kernels import column_runs, panel_gemm"}),
    "bbs": ("bbs_lut", {"from . import lut": "import base_lut as lut",
                        "from ..layout_memo import": "from bie_compiler.codegen.layout_memo import"}),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, help="the git revision of the other kernel")
    p.add_argument("--codec", choices=tuple(MODULES), default="bie-bitplane")
    p.add_argument("--mode", choices=("l2", "stream"), default="l2")
    p.add_argument("--planes", default="2,3,4", help="bie-bitplane: comma-separated LUT planes, the sign included")
    p.add_argument("--sensitive", default="0.2", help="bbs: comma-separated fractions of INT8 rows (moderate preset)")
    p.add_argument("--shape", default=None, help="N x K (default 1024x2048 in L2, 4096x4096 streamed)")
    p.add_argument("--groups", type=int, default=1, help="bie-bitplane: scales per channel (1: per channel)")
    p.add_argument("--tables", choices=("fp32", "int8"), default="fp32", help="the look-up tables")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=2, help="threads when streamed (one in L2)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.mode == "l2":
        args.threads = 1
    return args


def kernels_at(revision: str, codec: str):
    """``codec``'s kernel module as it was at ``revision``, with its ``lut``, as modules of their own."""
    def source(name):
        return subprocess.run(["git", "show", f"{revision}:{KERNELS}/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    name, imports = MODULES[codec]
    folder = Path(tempfile.mkdtemp(prefix="lut_gemv_ab_"))
    atexit.register(shutil.rmtree, folder, True)  # kept until then: TVMScript reads a kernel's source when it builds
    (folder / "base_lut.py").write_text(source("lut.py"))
    text = source(f"{name}.py")
    for relative, absolute in imports.items():
        text = text.replace(relative, absolute)
    (folder / f"base_{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"base_{name}", folder / f"base_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bitplane_cases(args, n: int, k: int, rng):
    """Per ``--planes``: its label, the kernel a module builds, the constants a module lays out, x, the exact
    product and the largest error a module's kernel may make."""
    from bie_compiler.codegen.kernels import bitplane_lut

    for planes in (int(p) for p in args.planes.split(",")):
        magnitude = planes - 1
        codes = rng.integers(-(1 << magnitude), 1 << magnitude, (n, k))
        scale_group = 8 * -(-k // 8) if args.groups == 1 else k // args.groups
        scales = rng.uniform(0.5, 1.5, (n, args.groups)).astype(np.float32)
        layout = bitplane_lut.Layout(n, k, magnitude, 0, scale_group, args.groups)
        x = rng.standard_normal((1, k)).astype(np.float32)
        exact = x.astype(np.float64) @ (codes * np.repeat(scales, scale_group, axis=1)[:, :k]).T
        int8 = args.tables == "int8"
        yield (f"{planes} planes", lambda module, layout=layout: (module.int8_gemv if int8 else module.gemv)(
            **layout._asdict()), lambda module, codes=codes, magnitude=magnitude, scales=scales: [
                module.words_of(codes, magnitude, args.tables), module.lanes_of_scales(scales)], x, exact,
            lambda module, x=x, layout=layout, scales=scales: np.abs(module.int8_error_bound(x, layout, scales)).max()
            if int8 else 1e-5 * np.abs(exact).max())


def bbs_cases(args, n: int, k: int, rng):
    """As :func:`bitplane_cases`, per ``--sensitive`` fraction: the moderate preset's encoding of Student-t
    weights, exact against its reference decoder (int8 tables: within their stated bound), float rounding aside."""
    from bie_compiler.codecs import bbs
    from bie_compiler.codegen.kernels import bbs_decoded

    weight = (rng.standard_t(5, (n, k)) / np.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    for fraction in (float(f) for f in args.sensitive.split(",")):
        enc = bbs.encode(weight, bbs.Config("moderate", sensitive_fraction=fraction))
        exact = x.astype(np.float64) @ bbs.decode(enc).T.astype(np.float64)
        int8 = args.tables == "int8"
        constants = bbs_decoded.constants(enc, args.tables)
        yield (f"sensitive {fraction:g}", lambda module, enc=enc: module.gemv(enc, args.tables),
               lambda module, constants=constants: constants, x, exact,
               lambda module, x=x, enc=enc, exact=exact: (np.abs(module.int8_error_bound(x, enc)).max() if int8
                                                          else 0) + 1e-5 * np.abs(exact).max())


def run(args: argparse.Namespace) -> dict:
    import tvm

    from bie_compiler.codegen.target import make_target

    target = make_target()
    name = MODULES[args.codec][0]
    tree_module = importlib.import_module(f"bie_compiler.codegen.kernels.{name}")
    sides = {"working tree": tree_module, args.against: kernels_at(args.against, args.codec)}
    n, k = (int(d) for d in (args.shape or ("1024x2048" if args.mode == "l2" else "4096x4096")).split("x"))
    rng = np.random.default_rng(0)
    clock = time.process_time if args.mode == "l2" else time.perf_counter
    rows = []
    for label, build, constants_of, x, exact, bound in (bbs_cases if args.codec == "bbs" else bitplane_cases)(
            args, n, k, rng):
        calls, stored, outputs = {}, {}, {}
        for side, module in sides.items():
            constants = constants_of(module)
            stored[side] = sum(c.nbytes for c in constants)
            copies = 1 if args.mode == "l2" else copies_for(stored[side], 2.0)
            tensors = [(tvm.runtime.tensor(x), *(tvm.runtime.tensor(c) for c in constants),
                        tvm.runtime.empty((1, n), "float32")) for _ in range(copies)]
            kernel = tvm.compile(tvm.IRModule({"main": build(module).with_attr("global_symbol", "main")}),
                                 target).mod["main"]
            kernel(*tensors[0])
            outputs[side] = tensors[0][-1].numpy()
            error = np.abs(outputs[side] - exact).max()
            if error > bound(module):
                raise SystemExit(f"{side}: {label}: relative error {error / np.abs(exact).max():.1e} against the "
                                 "exact product")
            layers = CALLS if copies == 1 else copies
            calls[side] = (lambda kernel=kernel, tensors=tensors, copies=copies: [
                kernel(*t) for t in tensors for _ in range(CALLS if copies == 1 else 1)], layers)
        methods = [{"name": side, "pass": fn, "layers": layers} for side, (fn, layers) in calls.items()]
        interleaved_passes(methods, args.rounds, clock)
        times = {m["name"]: m["seconds"] for m in methods}
        tree, base = times["working tree"], times[args.against]
        rows.append({"case": label, "ms": {side: 1e3 * statistics.median(t) for side, t in times.items()},
                     "least_ms": {side: 1e3 * min(t) for side, t in times.items()},
                     "median_ratio": statistics.median(tree) / statistics.median(base),
                     "least_ratio": min(tree) / min(base), "words_bytes": stored,
                     "identical": bool(np.array_equal(*(o.view(np.uint32) for o in outputs.values())))})
    return {"against": args.against, "codec": args.codec, "mode": args.mode, "shape": f"{n}x{k}",
            "groups": args.groups, "tables": args.tables, "threads": args.threads, "rounds": args.rounds, "rows": rows}


def report(res: dict) -> None:
    detail = (f"{res['tables']} tables, {res['groups']} scale(s) per channel" if res["codec"] == "bie-bitplane"
              else f"moderate preset, {res['tables']} tables")
    print(f"{res['codec']} LUT GEMV ({detail}), N x K = {res['shape']}, {res['mode']}, {res['threads']} thread(s), "
          f"{res['rounds']} rounds, order alternating")
    for row in res["rows"]:
        tree, base = row["ms"]["working tree"], row["ms"][res["against"]]
        print(f"  {row['case']}: {res['against']} {base:.4f} ms, working tree {tree:.4f} ms (medians); "
              f"working tree / {res['against']} = {row['median_ratio']:.3f} (medians), {row['least_ratio']:.3f} "
              f"(least); constants {row['words_bytes'][res['against']]} and {row['words_bytes']['working tree']} "
              f"bytes; outputs {'bit-identical' if row['identical'] else 'differ'}")


if __name__ == "__main__":
    common.main(parse_args, run, report)

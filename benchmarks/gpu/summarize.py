"""Markdown tables from run_on_device.py's results: parity per artefact, and kernels against the copy bandwidth.

    python benchmarks/gpu/summarize.py RESULTS_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REFERENCE_COPY = "copy (torch copy_)"  # the faster of the two copies: what the memory system can do


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> int:
    results = Path(sys.argv[1])
    parity = rows(results / "parity.jsonl")
    if parity:
        print("| artefact | GPU-kernel layers | rel. err. batch 1 | rel. err. batch 8 | passed |\n| --- | --- | --- | --- | --- |")
        for r in parity:
            if "error" in r or "skipped" in r:
                print(f"| {r.get('item', r.get('index'))} | | | | {r.get('error', r.get('skipped'))} |")
            else:
                print(f"| {r['artefact']} | {r['layers_on_gpu_kernels']} | {r['rel_err_b1']:.1e} | {r['rel_err_b8']:.1e} "
                      f"| {'yes' if r['passed'] else 'NO'} |")
    bench = rows(results / "bench.jsonl")
    copies = {r["item"]: r for r in bench if r.get("item", "").startswith("copy")}
    if not copies:
        return 0
    bandwidth = copies[REFERENCE_COPY]["warm_GBps"]
    print()
    for name, r in copies.items():
        print(f"- {name}: {r['warm_GBps']:.0f} GB/s (1 GiB read + 1 GiB written)")
    print(f"\nFractions are of {bandwidth:.0f} GB/s ({REFERENCE_COPY}). Times: L2 flushed before each call.\n")
    print("| layer N x K | kernel | bits/weight | batch | us | GB/s | BW fraction | tANS Gsym/s | check |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in bench:
        if "n" not in r:
            if "error" in r or "skipped" in r:
                print(f"| | {r.get('item', r.get('index'))} | | | | | | | {r.get('error', r.get('skipped'))} |")
            continue
        bits = f"{r['bits_per_weight']:.2f}" if "bits_per_weight" in r else "16"
        check = "" if "passed" not in r else ("ok" if r["passed"] else f"FAILED ({r['rel_err']:.1e})")
        sym = f"{r['Gsym_per_s']:.0f}" if "Gsym_per_s" in r else ""
        print(f"| {r['n']}x{r['k']} | {r['item']} | {bits} | {r['batch']} | {r['cold_us']:.1f} | {r['cold_GBps']:.0f} "
              f"| {r['cold_GBps'] / bandwidth:.2f} | {sym} | {check} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The accelerator report of a run: the performance model on the layers the run offloaded.

A bitvert artefact stores, per offloaded layer, its weight profile per accelerator
(``perf_model.WeightProfile`` as JSON); the device logs (layer, M) per call. The
report scales the profiles by the M each call saw.
"""

from __future__ import annotations

from . import perf_model as pm


def from_run(layer_profiles: list[tuple[str, dict]], run_log: list[tuple[int, int]]) -> dict:
    """The report for calls ``run_log`` of (layer index, M) into ``layer_profiles`` [(name, {acc: profile json})]."""
    runs = []
    for index, m in run_log:
        name, profiles = layer_profiles[index]
        runs.append((name, m, {acc: pm.WeightProfile.from_json(p) for acc, p in profiles.items()}))
    return pm.report(runs)


def table(report: dict) -> str:
    """A readable summary: per layer cycles, and totals with utilization, stalls, DRAM and energy."""
    lines = [f"{'layer':<28} {'M':>6} " + " ".join(f"{a:>11}" for a in pm.ACCELERATORS) + "   cycles"]
    for layer in report["layers"]:
        lines.append(f"{layer['name'][:28]:<28} {layer['m']:>6} "
                     + " ".join(f"{layer[a]['cycles']:>11}" for a in pm.ACCELERATORS))
    lines.append("")
    lines.append(f"{'accelerator':<11} {'cycles':>12} {'time ms':>9} {'util':>6} {'intra':>6} {'inter':>6} {'pad':>6} "
                 f"{'memory':>6} {'DRAM MB':>8} {'energy uJ':>10}  {'PE':>7} {'W-SRAM':>7} {'I-SRAM':>7} {'DRAM':>7}")
    for acc in pm.ACCELERATORS:
        t = report["accelerators"][acc]
        s, e = t["stalls"], t["energy_by_component_pj"]
        lines.append(
            f"{acc:<11} {t['cycles']:>12} {1e3 * t['time_s']:>9.3f} {t['utilization']:>6.1%} "
            f"{s.get('intra_pe_stall', 0):>6.1%} {s.get('inter_pe_stall', 0):>6.1%} {s.get('padding', 0):>6.1%} "
            f"{s.get('memory_stall', 0):>6.1%} {t['dram_bytes'] / 1e6:>8.3f} {t['energy_pj'] / 1e6:>10.3f}  "
            + " ".join(f"{e.get(part, 0) / 1e6:>7.3f}" for part in ("pe", "weight_sram", "input_sram", "dram")))
    lines.append("")
    lines.append("BitVert over " + ", ".join(
        f"{b}: {v['speedup']:.2f}x faster, {v['energy_ratio']:.2f}x less energy" for b, v in report["bitvert_vs"].items()))
    return "\n".join(lines)

"""The ``analyze`` report on disk: report.json, layers.csv, rate_distortion.csv, two PNG plots and report.html
(self-contained: the plots inline), and its summary for the terminal."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from .errors import OptionError

FILES = ("report.json", "layers.csv", "rate_distortion.csv", "rate_distortion.png", "sensitivity.png", "report.html")
MATPLOTLIB_HINT = "analyze draws its plots with matplotlib: install it with pip install -e '.[bench]'"


def require_matplotlib() -> None:
    """OptionError with the install hint when matplotlib is missing (checked before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError(MATPLOTLIB_HINT) from None


def points(report: dict) -> list[dict]:
    """Every measured whole-model point: the codecs as asked, the sweep, the references that ran."""
    return [p for p in report["codecs"] + report["sweep"] + report["references"] if "skipped" not in p]


def write(report: dict, out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"-o {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    _layers_csv(report, out / "layers.csv")
    _points_csv(report, out / "rate_distortion.csv")
    _plot_rate_distortion(report, out / "rate_distortion.png")
    _plot_sensitivity(report, out / "sensitivity.png")
    (out / "report.html").write_text(_html(report, out))
    return out


def _layers_csv(report: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "op", "shape", "weights", "codec", "bits_per_weight", "sqnr_db", "weight_rel_l2",
                    "output_rel_l2", "output_cosine", "task_metric", "task", "dense_because"])
        for layer in report["layers"]:
            for label, e in layer["codecs"].items():
                o = e.get("output", {})
                w.writerow([layer["name"], layer["op"], "x".join(map(str, layer["shape"])), layer["weights"], label,
                            round(e["bits_per_weight"], 4), e.get("sqnr_db", ""), e.get("rel_l2", ""),
                            o.get("rel_l2", ""), o.get("cosine", ""), o.get("task_metric", ""), o.get("task", ""),
                            e["dense"] or ""])


def _points_csv(report: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "codec", "mode", "bits_per_weight", "rel_l2", "cosine", "task_metric", "task", "seconds"])
        for p in points(report):
            w.writerow([p["label"], p["codec"], p["mode"], round(p["bits_per_weight"], 4), p["rel_l2"], p["cosine"],
                        p["task_metric"], p["task"], round(p.get("seconds", 0.0), 3)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plot_rate_distortion(report: dict, path: Path) -> None:
    plt = _pyplot()
    task = next((p["task_metric"] for p in points(report)), "cosine")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple, list] = {}
    for p in report["sweep"]:
        series.setdefault((p["codec"], p["mode"]), []).append(p)
    for (codec, mode), ps in series.items():
        ps = sorted(ps, key=lambda p: p["bits_per_weight"])
        style = "-o" if mode == "rtn" else "--s"
        name = codec if mode == "rtn" else f"{codec} ({mode})"
        left.plot([p["bits_per_weight"] for p in ps], [max(p["rel_l2"], 1e-9) for p in ps], style, ms=4, label=name)
        right.plot([p["bits_per_weight"] for p in ps], [p["task"] for p in ps], style, ms=4, label=name)
    for p in report["codecs"]:  # the settings analyzed layer by layer
        name = f"{p['label']} ({p['mode']})"
        left.plot(p["bits_per_weight"], max(p["rel_l2"], 1e-9), "D", mfc="none", ms=9, label=name)
        right.plot(p["bits_per_weight"], p["task"], "D", mfc="none", ms=9, label=name)
    for p in report["references"]:
        if "skipped" not in p:
            left.plot(p["bits_per_weight"], max(p["rel_l2"], 1e-9), "k*", ms=9)
            left.annotate(p["label"].replace("onnxruntime ", "ort ").replace(" (RTN)", ""),
                          (p["bits_per_weight"], max(p["rel_l2"], 1e-9)), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")
            right.plot(p["bits_per_weight"], p["task"], "k*", ms=9)
    left.set_yscale("log")
    left.set_ylabel("output relative L2 error to fp32 (first output)")
    right.set_ylabel(f"{task} (first output)")
    if "accuracy_fp32" in report["fp32"] and task == "accuracy":
        right.axhline(report["fp32"]["accuracy_fp32"], color="grey", lw=0.8, ls=":", label="fp32")
    for ax in (left, right):
        ax.set_xlabel("bits per weight (matmul and conv weights)")
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    model_path = Path(report["model"]["path"])
    fig.suptitle(f"{model_path.parent.name}/{model_path.name}", fontsize=10)  # zoo entries are all model.onnx
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_sensitivity(report: dict, path: Path) -> None:
    plt = _pyplot()
    labels = [c["label"] for c in report["codecs"]]
    names = [layer["name"] for layer in report["layers"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) * max(1, len(labels)) ** 0.5 + 2), 4.2))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        values = [layer["codecs"].get(label, {}).get("output", {}).get("rel_l2", 0.0) or 1e-9
                  for layer in report["layers"]]
        ax.bar([i + j * width for i in range(len(names))], values, width, label=label)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("output relative L2, only this layer encoded")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(report: dict, out: Path) -> str:
    images = {name: base64.b64encode((out / name).read_bytes()).decode()
              for name in ("rate_distortion.png", "sensitivity.png")}
    point_rows = [[p["label"], p["mode"], p["bits_per_weight"], p["rel_l2"], p["cosine"], f"{p['task_metric']}",
                   p["task"]] for p in points(report)]
    skipped = [[p["label"], p["skipped"]] for p in report["references"] if "skipped" in p]
    layer_rows = [[layer["name"], layer["op"], "x".join(map(str, layer["shape"])), label, e["bits_per_weight"],
                   e.get("sqnr_db", ""), e.get("output", {}).get("rel_l2", e["dense"] or "")]
                  for layer in report["layers"] for label, e in layer["codecs"].items()]
    lines = "".join(f"<pre>{html.escape(s['command'])}</pre><p>{len(s['layers'])} layer(s) {s['kind']}: "
                    f"{s['bits_per_weight']:.3f} bits/weight, output rel. L2 {s['rel_l2']:.4g}, "
                    f"{s['task_metric']} {s['task']:.4f}</p>" for c in report["codecs"] for s in c["suggestions"])
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>analyze: {html.escape(Path(report['model']['path']).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:75em}}table{{border-collapse:collapse;font-size:0.85em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
pre{{background:#f4f4f4;padding:6px;overflow-x:auto}}</style>
</head><body>
<h1>{html.escape(report['model']['path'])}</h1>
<p>{report['samples']} sample file(s), {report['rows']} rows; figures against onnxruntime fp32 on the source model
(mean over rows of the first output); fp32 on the labels: {html.escape(json.dumps(report['fp32']))};
calibration: {html.escape(str(report['calibration']))}.</p>
<h2>Rate and distortion</h2><img src="data:image/png;base64,{images['rate_distortion.png']}">
{_table(["point", "mode", "bits/weight", "output rel. L2", "cosine", "task metric", "task"], point_rows)}
{_table(["reference not measured", "why"], skipped) if skipped else ""}
<h2>Per layer: only that layer encoded</h2><img src="data:image/png;base64,{images['sensitivity.png']}">
{_table(["layer", "op", "shape", "codec", "bits/weight", "weight SQNR dB", "output rel. L2 (or why dense)"],
        layer_rows)}
<h2>Sensitive layers: compile lines</h2>{lines}
</body></html>
"""


def summary(report: dict) -> str:
    """What the terminal shows: every point, the most sensitive layers per codec, the ready compile lines."""
    lines = [f"{report['model']['path']}: {report['samples']} sample file(s), {report['rows']} rows; against fp32"
             + (f" (fp32 {', '.join(f'{k} {v:.4f}' for k, v in report['fp32'].items())})" if report["fp32"] else "")]
    lines.append(f"{'point':<52} {'mode':<9} {'bits/w':>7} {'rel L2':>9} {'cosine':>9}  task")
    for p in points(report):
        lines.append(f"{p['label']:<52} {p['mode']:<9} {p['bits_per_weight']:7.3f} {p['rel_l2']:9.5f} "
                     f"{p['cosine']:9.6f}  {p['task_metric']} {p['task']:.4f}")
    for p in report["references"]:
        if "skipped" in p:
            lines.append(f"{p['label']:<52} not measured: {p['skipped']}")
    by_name = {layer["name"]: layer for layer in report["layers"]}
    for c in report["codecs"]:
        lines.append(f"{c['label']}: most sensitive layers (output rel. L2 with only that layer encoded):")
        for name in c["ranking"][:5]:
            e = by_name[name]["codecs"][c["label"]]
            lines.append(f"  {name:<48} {e['output']['rel_l2']:.5f}  (weight SQNR {e['sqnr_db']:.1f} dB)")
        for s in c["suggestions"]:
            lines.append(f"{s['command']}\n  # {s['bits_per_weight']:.3f} bits/weight, output rel. L2 {s['rel_l2']:.5f}"
                         f" (all layers {c['label']}: {c['rel_l2']:.5f}), {s['task_metric']} {s['task']:.4f}")
    return "\n".join(lines)

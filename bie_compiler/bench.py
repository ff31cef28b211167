"""``bie-compiler bench``: an artefact against onnxruntime on its source model, same inputs, same threads.

Each side runs in its own process (``bench_worker.py``), so each sees the thread
count before its library loads and each peak resident memory is its own. The
parent interleaves single timed calls (artefact, onnxruntime, then the other way
round) after a warm-up, so slow phases of a shared machine hit both sides alike.
onnxruntime's idle workers do not spin unless asked (``spin``): they would hold
the cores between its calls, through the artefact's; the artefact's workers poll
briefly between kernels and then sleep, as a loaded artefact's do.

``cold_cache``: before each timed call, outside its timing, each process rewrites a
buffer of twice the last-level cache, so both sides read their weights from memory
(the premise of a one-row call being memory-bound). Warm, a model whose weights fit
in the cache is timed from it, and the other side's calls in between evict part of
them: neither is what a model running alone with large weights sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import BieError, OptionError
from .frontend import file_sha256
from .model_identity import check_data_files
from .runtime.artefact import read_manifest

WORKER = Path(__file__).with_name("bench_worker.py")
BOOT = f"import runpy; runpy.run_path({str(WORKER)!r}, run_name='__main__')"  # no package import on the ort side
WARMUP_SECONDS = 1.0  # a fresh process runs its first calls slower (thread pools, lazy allocations, clocks)
EXTEND_LIMIT = 50  # ``min_seconds`` extends the timed calls to at most this many times ``repeat``
ARTEFACT, ORT = "bie-compiler", "onnxruntime"
MIB = 2**20
CACHE_INDEX = Path("/sys/devices/system/cpu/cpu0/cache")
UNKNOWN_CACHE_FLUSH = 2**30  # the flush when Linux reports no cache sizes


def last_level_cache_bytes() -> int | None:
    """The largest data or unified cache Linux reports for CPU 0 (the L3), if any."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = []
    for index in CACHE_INDEX.glob("index*"):
        if (index / "type").read_text().strip() == "Instruction":
            continue
        size = (index / "size").read_text().strip()
        sizes.append(int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size))
    return max(sizes, default=None)


def cache_flush_bytes() -> tuple[int, int | None]:
    """(bytes each process rewrites before a cold-cache call: twice the last-level cache, the cache's bytes)."""
    cache = last_level_cache_bytes()
    return (2 * cache if cache else UNKNOWN_CACHE_FLUSH), cache


class Side:
    """A worker process holding one side loaded; ``ask`` sends a command and returns its reply."""

    def __init__(self, label: str, kind: str, path: str, inputs: Path, threads: int, spin: bool, env: dict):
        self.label = label
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, kind, path, str(inputs), str(threads), "1" if spin else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        self.ready = self._reply()

    def ask(self, **command) -> dict:
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process is gone: _reply says why
        return self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            raise BieError(f"bench: the {self.label} process ended (exit {self.proc.returncode}): " + " | ".join(tail))
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def source_model(manifest: dict, model: str | None) -> tuple[str, bool]:
    """The model onnxruntime runs (``model`` or the path recorded at compile time) and whether it is the one
    compiled; ModelError if it is, but one of its external data files is missing or changed."""
    path = model or manifest["source_model"]["path"]
    if path is None:
        raise OptionError("the artefact was compiled from an in-memory model and records no path: give --model")
    if not Path(path).is_file():
        raise OptionError(f"{path}: no such model file" + ("" if model else " (the path recorded at compile time; give --model)"))
    same = file_sha256(path) == manifest["source_model"]["sha256"]
    if same:
        check_data_files(path, manifest["source_model"])
    return str(path), same


def worker_env(threads: int) -> dict:
    # The artefact's pool keeps the runtime's settings (``runtime/threads.py``: workers poll briefly when idle,
    # then sleep) unless the user's environment overrides them, as a loaded artefact would.
    return dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))


def stats(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return {"median_ms": float(median), "p10_ms": float(p10), "p90_ms": float(p90), "min_ms": float(ms.min()),
            "max_ms": float(ms.max())}


def max_rel_err(actual: dict, expected: dict) -> dict:
    """Per output: max |artefact - onnxruntime| / max |onnxruntime|."""
    errors = {}
    for name, ref in expected.items():
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        diff = float(np.abs(actual[name].astype(np.float64) - ref).max()) if ref.size else 0.0
        errors[name] = diff / scale if scale else diff
    return errors


def per_kernel_rows(kernels: dict, kernel_layers: dict) -> list[dict]:
    total = sum(k["seconds"] for k in kernels.values()) or 1.0
    rows = [{"kernel": name, "layer": kernel_layers.get(name), "calls": k["calls"], "ms": k["seconds"] * 1e3,
             "share": k["seconds"] / total} for name, k in kernels.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def bench(artefact: str | Path, inputs: dict[str, np.ndarray], model: str | None = None, threads: int | None = None,
          repeat: int = 20, warmup: int = 3, spin: bool = False, per_layer: bool = False,
          cold_cache: bool = False, min_seconds: float = 0.0) -> dict:
    """Time ``artefact`` and onnxruntime on ``inputs``; see the module docstring. Returns the figures as a dict."""
    if repeat < 1 or warmup < 0 or min_seconds < 0:
        raise OptionError(f"--repeat must be >= 1, --warmup and --min-seconds >= 0 "
                          f"(got {repeat}, {warmup}, {min_seconds})")
    manifest = read_manifest(artefact)
    model_path, same_model = source_model(manifest, model)
    threads = threads or len(os.sched_getaffinity(0))
    if threads < 1:
        raise OptionError(f"--threads must be >= 1, got {threads}")
    env = worker_env(threads)
    flush_bytes, cache_bytes = cache_flush_bytes() if cold_cache else (0, last_level_cache_bytes())
    sides: dict[str, Side] = {}
    with tempfile.TemporaryDirectory(prefix="bie-bench-") as tmp:
        feeds = Path(tmp) / "inputs.npz"
        np.savez(feeds, **inputs)
        try:
            sides[ARTEFACT] = Side(ARTEFACT, "artefact", str(artefact), feeds, threads, spin, env)
            sides[ORT] = Side(ORT, "onnxruntime", model_path, feeds, threads, spin, env)
            outputs = {}
            for label, side in sides.items():
                side.ask(op="warmup", calls=warmup, seconds=WARMUP_SECONDS)
                side.ask(op="outputs", path=str(Path(tmp) / f"{label}.npz"))
                with np.load(Path(tmp) / f"{label}.npz") as data:
                    outputs[label] = {name: data[name] for name in data.files}
                if flush_bytes:
                    side.ask(op="flush_buffer", bytes=flush_bytes)
            times = {label: [] for label in sides}
            calls = 0
            # a short call's median over a few calls moves with every slow phase of the machine: past ``repeat``,
            # keep going until each side's timed calls add up to ``min_seconds`` (at most EXTEND_LIMIT x repeat)
            while calls < repeat or (calls < EXTEND_LIMIT * repeat
                                     and min(sum(t) for t in times.values()) < min_seconds):
                for label in (ARTEFACT, ORT) if calls % 2 == 0 else (ORT, ARTEFACT):
                    times[label].append(sides[label].ask(op="time")["seconds"])
                calls += 1
            kernels = sides[ARTEFACT].ask(op="per_kernel", runs=min(repeat, 5))["kernels"] if per_layer else None
            result_sides = {}
            for label, side in sides.items():
                peak = side.ask(op="exit")["peak_rss"]
                result_sides[label] = {
                    **stats(times[label]), "load_s": side.ready["load_seconds"], "peak_rss_mib": peak / MIB,
                    "peak_rss_over_imports_mib": (peak - side.ready["rss_after_imports"]) / MIB}
        finally:
            for side in sides.values():
                side.close()
    result = {
        "artefact": str(artefact), "codec": manifest["codec"]["name"], "model": model_path,
        "model_is_the_compiled_one": same_model, "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "threads": threads, "spin": spin, "cache": "cold" if cold_cache else "warm", "flush_bytes": flush_bytes,
        "last_level_cache_bytes": cache_bytes, "repeat": calls, "min_seconds": min_seconds, "warmup_calls": warmup,
        **result_sides,
        "ratio": result_sides[ARTEFACT]["median_ms"] / result_sides[ORT]["median_ms"],
        "max_rel_err": max_rel_err(outputs[ARTEFACT], outputs[ORT]),
    }
    if kernels is not None:
        result["per_kernel"] = per_kernel_rows(kernels, manifest.get("kernel_layers", {}))
    return result


def cache_line(result: dict) -> str:
    """Which cache mode ran, in words."""
    cache = result["last_level_cache_bytes"]
    size = f"the {cache / MIB:.0f} MiB last-level cache" if cache else "no cache size reported"
    if result["cache"] == "warm":
        return f"warm cache: calls back to back ({size})"
    return (f"cold cache: before each timed call, outside its timing, each process rewrote "
            f"{result['flush_bytes'] / MIB:.0f} MiB from every core ({size}); "
            "peak RSS read before that buffer existed")


def table(result: dict, top: int = 25) -> str:
    """The figures of :func:`bench` as readable text."""
    shapes = ", ".join(f"{k} {v}" for k, v in result["inputs"].items())
    lines = [f"{result['artefact']} ({result['codec']}) vs onnxruntime on {result['model']}",
             f"inputs {shapes}; {result['threads']} threads (onnxruntime's idle workers {'' if result['spin'] else 'not '}"
             f"spinning); "
             f"{result['repeat']} interleaved calls each after a warm-up", cache_line(result)]
    if not result["model_is_the_compiled_one"]:
        lines.append("warning: this model is not the one the artefact was compiled from (sha256 differs)")
    lines.append(f"{'':14s}{'median':>10s}{'p10':>10s}{'p90':>10s}{'peak RSS':>12s}{'over imports':>14s}{'load':>8s}")
    for label in (ARTEFACT, ORT):
        s = result[label]
        lines.append(f"{label:14s}{s['median_ms']:8.3f}ms{s['p10_ms']:8.3f}ms{s['p90_ms']:8.3f}ms"
                     f"{s['peak_rss_mib']:8.0f} MiB{s['peak_rss_over_imports_mib']:10.0f} MiB{s['load_s']:7.2f}s")
    errors = ", ".join(f"{k} {v:.2e}" for k, v in result["max_rel_err"].items())
    lines.append(f"ratio (artefact / onnxruntime median): {result['ratio']:.2f}x; max rel. output difference: {errors}")
    if "per_kernel" in result:
        rows = result["per_kernel"]
        total = sum(r["ms"] for r in rows)
        lines.append(f"per kernel, exclusive ms per call of the model (instrumented: {total:.3f} ms in all), "
                     f"top {min(top, len(rows))} of {len(rows)}:")
        for r in rows[:top]:
            lines.append(f"{r['ms']:10.3f} ms {100 * r['share']:5.1f}%  x{r['calls']:<4d} {r['kernel']}"
                         + (f"  [{r['layer']}]" if r["layer"] else ""))
    return "\n".join(lines)

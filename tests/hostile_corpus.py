"""A corpus of hostile and malformed inputs, each with the outcome it must have.

Every case is a command line (run in-process through ``cli.main``) over files a builder makes in the
case's own folder, and an expectation: ``Error(text)`` (exit 2, one line on stderr containing ``text``),
``Ok()`` (exit 0), or ``Ok(check)`` where ``check(folder, stdout)`` asserts the result is right. After
every case the files that existed before it must be unchanged unless the case says they may change, and
no half-written artefact or temporary may be left behind.

`python tests/hostile_corpus.py` prints the count of cases per class and runs them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bie_compiler import cli
from bie_compiler.runtime import artefact as art
from bie_compiler.runtime import weights_file as wf


@dataclass
class Error:
    text: str


@dataclass
class Ok:
    check: Callable[[Path, str], None] | None = None


@dataclass
class Case:
    name: str
    kind: str  # the class of input, for the per-class counts
    setup: Callable[[Path], list[str]]  # makes its files in the folder, returns the argv
    expect: Error | Ok
    may_change: tuple[str, ...] = ()  # files the command may write or replace (relative paths)
    tags: tuple[str, ...] = field(default=())


# --- models ---------------------------------------------------------------------------------------------------------


def tiny_model(weight: np.ndarray | None = None, *, in_dtype=TensorProto.FLOAT, opset: int = 17,
               extra_nodes=(), input_shape=("batch", 64)) -> onnx.ModelProto:
    """x [batch, 64] @ W [64, 32] -> Relu -> y."""
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32) if weight is None else weight
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu"),
             *extra_nodes]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", in_dtype, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(folder: Path, model: onnx.ModelProto, name: str = "m.onnx") -> str:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return str(path)


def model_bytes(folder: Path, data: bytes, name: str = "m.onnx") -> str:
    (folder / name).write_bytes(data)
    return str(folder / name)


def compiled(folder: Path, *options: str) -> Path:
    """A compiled artefact of the tiny model at folder/art (compiled once per corpus run, then copied)."""
    key = "-".join(options) or "default"
    cache = CACHE / key
    if not cache.exists():
        model = save(CACHE, tiny_model(), "tiny.onnx")
        assert cli.main(["compile", model, "-q", "--min-weights", "0", "-o", str(cache), *options]) == 0
    shutil.copy(CACHE / "tiny.onnx", folder / "tiny.onnx")
    out = folder / "art"
    shutil.copytree(cache, out)
    reseal(out, lambda m: m["source_model"].update(path=str(folder / "tiny.onnx")))
    return out


CACHE = Path()  # set by run_corpus


def reseal(out: Path, edit) -> None:
    path = out / art.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["checksum"] = art._checksum(manifest)
    path.write_text(json.dumps(manifest))


def raw_data_model(extra: int) -> onnx.ModelProto:
    model = tiny_model()
    init = model.graph.initializer[0]
    init.raw_data = init.raw_data + b"\0" * extra if extra > 0 else init.raw_data[:extra]
    return model


# --- the cases ------------------------------------------------------------------------------------------------------


def onnx_cases() -> list[Case]:
    def compile_bytes(data: bytes):
        return lambda f: ["compile", model_bytes(f, data), "-o", str(f / "out")]

    def compile_model(model_fn, *options):
        return lambda f: ["compile", save(f, model_fn()), "-q", "-o", str(f / "out"), *options]

    valid = tiny_model().SerializeToString()
    cases = [
        Case("empty file", "onnx", compile_bytes(b""), Error("has no nodes")),
        Case("text file", "onnx", compile_bytes(b"hello, world\n"), Error("m.onnx")),
        Case("random bytes", "onnx", compile_bytes(np.random.default_rng(1).bytes(4096)), Error("m.onnx")),
        Case("json", "onnx", compile_bytes(b'{"graph": {}}'), Error("m.onnx")),
        Case("missing file", "onnx", lambda f: ["compile", str(f / "nope.onnx"), "-o", str(f / "out")],
             Error("no such file")),
        Case("a folder as model", "onnx", lambda f: ["compile", str(f), "-o", str(f / "out")], Error("no such file")),
        Case("no nodes", "onnx", compile_model(lambda: helper.make_model(helper.make_graph([], "g", [], []))),
             Error("has no nodes")),
        Case("opset 99", "onnx", compile_model(lambda: tiny_model(opset=99)), AnyClean(), may_change=("out",)),
        Case("unsupported op", "onnx", compile_model(lambda: tiny_model(extra_nodes=[
            helper.make_node("LSTMish", ["y"], ["z"], name="odd")])), Error("m.onnx")),
        Case("NaN weight", "onnx", compile_model(lambda: tiny_model(np.full((64, 32), np.nan, np.float32))),
             Error("initializer 'w' has 2048 NaN/Inf")),
        Case("Inf weight", "onnx", compile_model(lambda: tiny_model(np.full((64, 32), np.inf, np.float32))),
             Error("NaN/Inf")),
        Case("raw_data longer than dims", "onnx", compile_model(lambda: raw_data_model(64)), Error("m.onnx")),
        Case("raw_data shorter than dims", "onnx", compile_model(lambda: raw_data_model(-64)), Error("m.onnx")),
        Case("bfloat16 input", "onnx", compile_model(lambda: tiny_model(in_dtype=TensorProto.BFLOAT16)), Error("m.onnx")),
        Case("dangling input reference", "onnx", compile_model(lambda: tiny_model(extra_nodes=[
            helper.make_node("Relu", ["ghost"], ["z"], name="haunted")])), Error("m.onnx")),
    ]
    for fraction in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cut = valid[: int(len(valid) * fraction)]
        cases.append(Case(f"truncated at {fraction:.0%}", "onnx", compile_bytes(cut), Error("m.onnx")))
    for seed in range(8):
        data = bytearray(valid)
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, 200, 4):  # the header region: structure, not weight bytes
            data[i] ^= 0xFF
        cases.append(Case(f"header bytes flipped #{seed}", "onnx", compile_bytes(bytes(data)), AnyClean(),
                          may_change=("out",)))
    return cases


@dataclass
class AnyClean:
    """Either outcome is right (a mutation may leave a valid model), as long as it is clean: exit 0 or 2."""


def option_cases() -> list[Case]:
    def compile_with(*options):
        return lambda f: ["compile", save(f, tiny_model()), "-q", "--min-weights", "0", "-o", str(f / "out"), *options]

    bad = [
        (["--bits", "0"], "bits must be in 2..8"), (["--bits", "9"], "bits must be in 2..8"),
        (["--bits", "-1"], "bits must be in 2..8"), (["--bits", "nan"], "invalid int value"),
        (["--bits", "4", "--planes", "4"], "planes must be in"), (["--group-size", "-3"], "group_size"),
        (["--codec", "tans", "--levels", "16"], "levels must be odd"), (["--codec", "tans", "--levels", "257"], "levels"),
        (["--codec", "tans", "--levels", "1"], "levels"), (["--codec", "tans", "--table-log", "4"], "table_log"),
        (["--codec", "tans", "--table-log", "16"], "table_log"), (["--codec", "tans", "--states", "0"], "states"),
        (["--codec", "tans", "--states", "33"], "states"), (["--codec", "tans", "--stream-symbols", "0"], "stream_symbols"),
        (["--codec", "tans", "--stream-symbols", "99999999999999"], "out of range"),
        (["--codec", "tans", "--bits-per-weight", "nan"], "finite number"),
        (["--codec", "tans", "--bits-per-weight", "-2"], "bits_per_weight"),
        (["--codec", "tans", "--levels", "15", "--bits-per-weight", "3"], "either levels or bits_per_weight"),
        (["--codec", "bie-binary", "--density", "-0.1"], "density"), (["--codec", "bie-binary", "--density", "1.5"], "density"),
        (["--codec", "bie-binary", "--density", "nan"], "finite number"),
        (["--codec", "bie-binary", "--threshold", "-1"], "threshold"),
        (["--codec", "bie-binary", "--threshold", "inf"], "finite number"),
        (["--codec", "bie-binary", "--layout", "zigzag"], "layout must be one of"),
        (["--codec", "bie-blocked", "--block-size", "3"], "block"), (["--codec", "bie-blocked", "--block-size", "0"], "block"),
        (["--codec", "bbs", "--preset", "extreme"], "preset"), (["--codec", "bbs", "--pruned-columns", "0"], "pruned"),
        (["--codec", "bbs", "--pruned-columns", "7"], "pruned"), (["--codec", "bbs", "--method", "magic"], "method"),
        (["--codec", "bbs", "--sensitive-fraction", "1.5"], "sensitive"),
        (["--codec", "bbs", "--sensitive-fraction", "nan"], "finite number"),
        (["--codec", "nope"], "invalid choice"), (["--min-weights", "-1"], "min"),
        (["--target", "tpu"], "unknown target"), (["--mcpu", "pentium9000"], "LLVM does not know the CPU"),
        (["--arch", "sm_90"], "applies to --target cuda only"), (["--target", "cuda", "--arch", "volta"], "--arch"),
        (["--override", "w"], "expected PATTERN:key=value"), (["--override", "w:bits"], "expected PATTERN:key=value"),
        (["--override", ":bits=4"], "expected PATTERN:key=value"), (["--override", "w:codec=nope"], "unknown codec"),
        (["--override", "w:bits=4.5"], "expected an integer"), (["--override", "w:colour=red"], "does not take option"),
        (["--calibration", "none.npz"], "none.npz: no such file or folder"),
        (["--act-order"], "needs --calibration"),
        (["--target", "bitvert", "--codec", "bbs", "--calibration", "none.npz"], "no such file"),
        (["--bits", "4", "--levels", "15"], "does not take option"),
        (["--jobs", "0"], "--jobs must be a positive integer"),
    ]
    cases = [Case(f"compile {' '.join(o)}", "options", compile_with(*o), Error(m)) for o, m in bad]
    cases.append(Case("warns on unmatched --skip", "options", compile_with("--skip", "nothing*"),
                      Ok(lambda f, out: None), may_change=("out",)))
    return cases


def _drop(*path):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


def _put(value, *path):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def artefact_cases() -> list[Case]:
    def command(edit=None, files=None, argv=("check",)):
        def setup(f):
            out = compiled(f)
            if files:
                files(out)
            if edit:
                reseal(out, edit)
            return [*argv, str(out)]
        return setup

    def flip(name, offset=0.5):
        def change(out):
            data = bytearray((out / name).read_bytes())
            data[int(len(data) * offset)] ^= 0xFF
            (out / name).write_bytes(bytes(data))
        return change

    resealed = [
        (_drop("files", "model.so"), "model.so is not listed"), (_put({}, "files"), "model.so is not listed"),
        (_drop("files", "weights.bin"), "weights.bin is not listed"), (_drop("weights"), "missing field(s) weights"),
        (_put({"sha256": "0" * 64, "bytes": 1}, "files", "../../etc/passwd"), "unexpected file name"),
        (_put({"sha256": "0" * 64, "bytes": 1}, "files", "/etc/passwd"), "unexpected file name"),
        (_put({"sha256": "0" * 64, "bytes": 1}, "files", "device.cu"), "device.cu: missing"),
        (_put("x" * 64, "files", "model.so", "sha256"), "files.model.so.sha256"),
        (_put(-5, "files", "model.so", "bytes"), "files.model.so.bytes"),
        (_put(1.5, "files", "model.so", "bytes"), "files.model.so.bytes"),
        (_put(1, "format_version"), "format version 1"), (_put("other", "format"), "not a bie-compiler manifest"),
        (_put("tpu", "target", "kind"), "target.kind"), (_put("sm_90", "target", "arch"), "target.arch"),
        (_put("a b", "target", "mcpu"), "target.mcpu"), (_drop("target", "mcpu"), "missing field(s) mcpu"),
        (_put([], "inputs"), "running the artefact failed"), (_put("x", "inputs"), "manifest.inputs: expected a list"),
        (_put(-1, "inputs", 0, "shape", 1), "inputs[0].shape[1]"), (_put("qint4", "inputs", 0, "dtype"), "dtype"),
        (_drop("inputs", 0, "name"), "missing field(s) name"), (_put(None, "outputs"), "expected a list"),
        (_put("magic", "layers", 0, "op"), "layers[0].op"), (_put("NaN", "layers", 0, "bits_per_weight"), "finite"),
        (_drop("totals", "layers"), "missing field(s) layers"), (_put({"x": {}}, "totals"), "totals"),
        (_put(7, "layers", 0, "details"), "details: expected an object"), (_put("x", "codec", "skip"), "skip"),
        (_put([["a"]], "codec", "overrides"), "overrides[0]"), (_put({"a": 1}, "extra_field"), "unknown field"),
        (_put({"calibration": None, "layers": 5}, "bitvert"), "bitvert.layers"),
        (_put({"source": "x.cu", "layer_kernels": {}}, "device_code"), "device_code.source"),
        (_put("", "source_model", "sha256"), "source_model.sha256"),
    ]
    cases = [Case(f"resealed manifest #{i}", "artefact", command(edit), Error(text))
             for i, (edit, text) in enumerate(resealed)]
    cases += [
        Case("library byte flipped", "artefact", command(files=flip("model.so")), Error("does not match the manifest")),
        Case("library truncated", "artefact", command(files=lambda o: (o / "model.so").write_bytes(b"\x7fELF")),
             Error("does not match the manifest")),
        Case("library missing", "artefact", command(files=lambda o: (o / "model.so").unlink()), Error("missing")),
        Case("library is a symlink", "artefact", command(files=lambda o: (
            shutil.move(o / "model.so", o.parent / "elsewhere.so"), (o / "model.so").symlink_to(o.parent / "elsewhere.so"))),
             Error("symbolic link")),
        Case("library is a folder", "artefact", command(files=lambda o: ((o / "model.so").unlink(), (o / "model.so").mkdir())),
             Error("not a plain file")),
        Case("manifest not JSON", "artefact", command(files=lambda o: (o / "manifest.json").write_text("{{{")),
             Error("unreadable manifest")),
        Case("manifest empty", "artefact", command(files=lambda o: (o / "manifest.json").write_text("")),
             Error("unreadable manifest")),
        Case("manifest a list", "artefact", command(files=lambda o: (o / "manifest.json").write_text("[]")),
             Error("not a bie-compiler manifest")),
        Case("manifest nested 100000 deep", "artefact", command(
            files=lambda o: (o / "manifest.json").write_text("[" * 100000 + "]" * 100000)), Error("unreadable manifest")),
        Case("manifest edited without reseal", "artefact", command(
            files=lambda o: (o / "manifest.json").write_text((o / "manifest.json").read_text().replace('"0.1', '"9.1'))),
             Error("modified after compilation")),
        Case("manifest a symlink", "artefact", command(files=lambda o: (
            shutil.move(o / "manifest.json", o.parent / "m.json"), (o / "manifest.json").symlink_to(o.parent / "m.json"))),
             Error("symbolic link")),
        Case("planted library, resealed, pinned", "artefact", _planted_library, Error("not the expected")),
        Case("wrong pin", "artefact", command(argv=("inspect", "--expect-sha256", "ab" * 32)), Error("not the expected")),
        Case("malformed pin", "artefact", command(argv=("check", "--expect-sha256", "zz")), Error("64 hexadecimal")),
        Case("artefact folder missing", "artefact", lambda f: ["check", str(f / "nothing")], Error("no such artefact")),
        Case("plain folder", "artefact", lambda f: ["inspect", str(f)], Error("not a bie-compiler artefact")),
        Case("source model changed", "artefact", command(files=lambda o: save(o.parent, tiny_model(
            np.ones((64, 32), np.float32)), "tiny.onnx")), Error("not the model this artefact was compiled from")),
        Case("inspect a valid artefact", "artefact", command(argv=("inspect",)), Ok()),
        Case("check a valid artefact", "artefact", command(), Ok()),
    ]
    return cases


def _weights_edit(edit, *options: str):
    """An attacker or a broken disk changes weights.bin (``edit(header, body)``, body a bytearray of the
    tensors) and reseals the manifest; the runtime's checks must refuse it before any kernel reads it."""
    def setup(folder: Path) -> list[str]:
        out = compiled(folder, *options)
        data = (out / art.WEIGHTS).read_bytes()
        (length,) = wf.struct.unpack("<Q", data[8:16])
        header = json.loads(data[16:16 + length])
        body = bytearray(data[wf._aligned(16 + length):])
        edit(header, body)
        text = json.dumps(header).encode()
        start = wf._aligned(16 + len(text))
        data = wf.MAGIC + wf.struct.pack("<Q", len(text)) + text + bytes(start - 16 - len(text)) + bytes(body)
        (out / art.WEIGHTS).write_bytes(data)
        reseal(out, _put({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, "files", art.WEIGHTS))
        return ["check", str(out)]
    return setup


def _tensor_of(header: dict, body: bytearray, index: int) -> np.ndarray:
    entry = header["tensors"][index]
    start = entry["offset"]
    return np.frombuffer(memoryview(body)[start:start + entry["nbytes"]], entry["dtype"])


def _bump_tans_counts(fix_crc: bool):
    def edit(header, body):
        stream = header["tans"][0]
        counts = _tensor_of(header, body, stream["counts"])
        counts[0] += 1
        if fix_crc:  # a consistent forgery: the checksum recomputed, the table no longer sums to its size
            words = _tensor_of(header, body, stream["words"]).view(np.uint32)
            stream["crc32"] = wf.check_streams.__globals__["checksum"](
                counts, _tensor_of(header, body, stream["offsets"]), words)
    return edit


def weights_cases() -> list[Case]:
    def offset_past_end(header, body):
        header["tensors"][-1]["offset"] = len(body) + 64

    def as_other_dtype(header, body):
        entry = header["tensors"][0]
        entry.update(dtype="uint8", shape=[entry["nbytes"]])

    def swap_first_two(header, body):
        header["tensors"][0], header["tensors"][1] = header["tensors"][1], header["tensors"][0]

    def drop_tans(header, body):
        header["tans"] = []

    def stream_offsets_reversed(header, body):
        stream = header["tans"][0]
        offsets = _tensor_of(header, body, stream["offsets"])
        offsets[:] = offsets[::-1].copy()

    def changed_on_disk(change):
        def setup(folder):
            out = compiled(folder)
            change(out / art.WEIGHTS)
            return ["check", str(out)]
        return setup

    def flip(path):
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))

    tans = ("--codec", "tans", "--stream-symbols", "256")
    return [
        Case("weights byte flipped", "weights", changed_on_disk(flip), Error("does not match the manifest")),
        Case("weights missing", "weights", changed_on_disk(Path.unlink), Error("missing")),
        Case("weights not a weights file, resealed", "weights", _weights_edit(lambda h, b: h.clear()),
             Error("unreadable header")),
        Case("weights tensor past the file, resealed", "weights", _weights_edit(offset_past_end), Error("past the file")),
        Case("weights tensor of another dtype, resealed", "weights", _weights_edit(as_other_dtype),
             Error("running the artefact failed")),
        Case("weights tensors reordered, resealed", "weights", _weights_edit(swap_first_two), Error("out of order")),
        Case("tANS counts changed, resealed", "weights", _weights_edit(_bump_tans_counts(False), *tans),
             Error("tANS stream 0: corrupted: checksum mismatch")),
        Case("tANS counts and checksum forged", "weights", _weights_edit(_bump_tans_counts(True), *tans),
             Error("counts sum to")),
        Case("tANS stream offsets reversed, resealed", "weights", _weights_edit(stream_offsets_reversed, *tans),
             Error("tANS stream 0")),
        Case("tANS stream list dropped, resealed", "weights", _weights_edit(drop_tans, *tans),
             Error("0 tANS stream(s), the manifest says")),
        Case("check a valid tans artefact", "weights", lambda f: ["check", str(compiled(f, *tans))], Ok()),
    ]


def _planted_library(folder: Path) -> list[str]:
    """An attacker replaces model.so by another valid library and reseals; the user's pin refuses it."""
    out = compiled(folder)
    pin = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    (folder / "other").mkdir()
    other = compiled(folder / "other", "--bits", "3")
    shutil.copy(other / "model.so", out / "model.so")
    data = (out / "model.so").read_bytes()
    reseal(out, _put({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, "files", "model.so"))
    return ["check", str(out), "--expect-sha256", pin]


def input_cases() -> list[Case]:
    def run_with(make_npz=None, argv=("run",)):
        def setup(f):
            out = compiled(f)
            extra = []
            if make_npz is not None:
                path = f / "in.npz"
                make_npz(path)
                extra = ["--inputs", str(path)]
            return [*argv, str(out), *extra]
        return setup

    def eval_with(make_npz):
        def setup(f):
            make_npz(f / "in.npz")
            return ["eval", str(compiled(f)), "--data", str(f / "in.npz")]
        return setup

    x = np.zeros((2, 64), np.float32)
    cases = [
        Case("npz is not a zip", "inputs", run_with(lambda p: p.write_bytes(b"not a zip")), Error("in.npz")),
        Case("npz empty file", "inputs", run_with(lambda p: p.write_bytes(b"")), Error("in.npz")),
        Case("npz missing input", "inputs", run_with(lambda p: np.savez(p, other=x)), Error("missing input")),
        Case("npz wrong dtype", "inputs", run_with(lambda p: np.savez(p, x=x.astype(np.float64))), Error("input 'x'")),
        Case("npz wrong rank", "inputs", run_with(lambda p: np.savez(p, x=x[0])), Error("input 'x'")),
        Case("npz wrong fixed dim", "inputs", run_with(lambda p: np.savez(p, x=np.zeros((2, 65), np.float32))),
             Error("input 'x'")),
        Case("npz object array", "inputs", run_with(lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object))),
             Error("in.npz")),
        Case("npz valid", "inputs", run_with(lambda p: np.savez(p, x=x)), Ok()),
        Case("check npz valid", "inputs", run_with(lambda p: np.savez(p, x=x), argv=("check",)), Ok()),
        Case("run --batch 0", "inputs", run_with(argv=("run", "--batch", "0")), Error("batch")),
        Case("run --batch -1", "inputs", run_with(argv=("run", "--batch", "-1")), Error("batch")),
        Case("check --batch 0", "inputs", run_with(argv=("check", "--batch", "0")), Error("batch")),
        Case("check --tolerance nan", "inputs", run_with(argv=("check", "--tolerance", "nan")), Error("tolerance")),
        Case("check --tolerance -1", "inputs", run_with(argv=("check", "--tolerance", "-1")), Error("tolerance")),
        Case("run --report on llvm", "inputs", run_with(argv=("run", "--report", "r.json")), Error("--report")),
        Case("check --min-cosine nan", "inputs", run_with(argv=("check", "--min-cosine", "nan")), Error("--min-cosine")),
        Case("check --min-cosine 2", "inputs", run_with(argv=("check", "--min-cosine", "2")), Error("--min-cosine")),
        Case("run --planes 0", "inputs", run_with(argv=("run", "--planes", "0")), Error("planes")),
        Case("run --planes 1", "inputs", run_with(argv=("run", "--planes", "1")), Ok()),
        Case("eval --data missing", "inputs", lambda f: ["eval", str(compiled(f)), "--data", str(f / "none")],
             Error("--data")),
        Case("eval npz missing input", "inputs", eval_with(lambda p: np.savez(p, other=x)), Error("missing input")),
        Case("eval npz is not a zip", "inputs", eval_with(lambda p: p.write_bytes(b"not a zip")), Error("in.npz")),
        Case("eval labels of the wrong length", "inputs",
             eval_with(lambda p: np.savez(p, x=x, label=np.zeros(3, np.int64))), Error("'label' must hold")),
        Case("eval npz with labels", "inputs", eval_with(lambda p: np.savez(p, x=x, label=np.zeros(2, np.int64))),
             Ok()),
    ]
    return cases


def output_cases() -> list[Case]:
    def compile_to(make_out):
        def setup(f):
            return ["compile", save(f, tiny_model()), "-q", "-o", str(make_out(f))]
        return setup

    def folder_with(*files):
        def make(f):
            out = f / "out"
            out.mkdir()
            for name in files:
                (out / name).write_text("user data")
            return out
        return make

    def long_name(f):
        return f / ("x" * 300)

    cases = [
        Case("-o ''", "output", lambda f: ["compile", save(f, tiny_model()), "-o", ""], Error("name is empty")),
        Case("-o is a file", "output", compile_to(lambda f: _user_file(f) / "file"), Error("not a folder")),
        Case("-o under a file", "output", compile_to(lambda f: _user_file(f) / "file" / "out"), Error("is a file")),
        Case("-o name too long", "output", compile_to(long_name), Error("x" * 20)),
        Case("-o folder with manifest.json only", "output", compile_to(folder_with("manifest.json")),
             Error("not a bie-compiler artefact")),
        Case("-o folder with user files", "output", compile_to(folder_with("notes.txt", "photo.jpg")),
             Error("not a bie-compiler artefact")),
        Case("-o holds the source model", "output",
             lambda f: ((f / "out").mkdir(), ["compile", save(f / "out", tiny_model()), "-q", "-o", str(f / "out")])[1],
             Error("holds the source model")),
        Case("-o is the model's folder", "output", lambda f: ["compile", save(f, tiny_model()), "-q", "-o", str(f)],
             Error("holds the source model")),
        Case("-o a symlink to a folder", "output",
             compile_to(lambda f: ((f / "real").mkdir(), (f / "out").symlink_to(f / "real"), f / "out")[2]),
             Error("symbolic link")),
        Case("-o an empty folder", "output", compile_to(lambda f: (f / "out").mkdir() or f / "out"), Ok(),
             may_change=("out",)),
        Case("-o an artefact with a user file", "output",
             compile_to(lambda f: (compiled(f), (f / "art" / "notes.txt").write_text("mine"), f / "art")[2]),
             Error("not part of its artefact")),
        Case("-o an older artefact", "output", compile_to(lambda f: compiled(f)), Ok(), may_change=("art",)),
        Case("-o where no folder can be made", "output", compile_to(lambda f: Path("/proc/self/bie-out")),
             Error("/proc/self/bie-out")),
        Case("run -o into a folder", "output", lambda f: ["run", str(compiled(f)), "-o", str(f)], Error("is a folder")),
        Case("run -o a file", "output", lambda f: ["run", str(compiled(f)), "-o", str(f / "y.npz")], Ok(
            lambda f, out: np.load(f / "y.npz")["y"]), may_change=("y.npz",)),
    ]
    return cases


def _user_file(folder: Path) -> Path:
    (folder / "file").write_text("mine")
    return folder


def all_cases() -> list[Case]:
    return onnx_cases() + option_cases() + artefact_cases() + weights_cases() + input_cases() + output_cases()


# --- running --------------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | None]:
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        files[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return files


def run_case(case: Case, folder: Path) -> str | None:
    """None if the case ends as expected, else what went wrong."""
    folder.mkdir(parents=True)
    argv = case.setup(folder)
    before = snapshot(folder)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        except Exception as e:  # a traceback for the user
            return f"uncaught {type(e).__name__}: {e}"
    err = stderr.getvalue()
    after = snapshot(folder)
    changed = [name for name in set(before) | set(after) if before.get(name, b"?") != after.get(name, b"?")
               and not any(name == m or name.startswith(m + "/") for m in case.may_change)]
    if changed:
        return f"files changed: {sorted(changed)[:5]}"
    if any(part.startswith(".") and (".tmp-" in part or ".old-" in part) for part in after):
        return "left a temporary behind"
    if isinstance(case.expect, AnyClean):
        return None if code in (0, 2) else f"exit {code}: {err[-300:]}"
    if isinstance(case.expect, Error):
        lines = [line for line in err.splitlines() if line.startswith("bie-compiler: error:")]
        if code != 2:
            return f"exit {code}, expected 2; stderr: {err[-300:]}"
        text = case.expect.text
        if text not in err:
            return f"error does not mention {text!r}: {err.strip()[-300:]}"
        if len(lines) != 1 and not err.startswith("usage:"):
            return f"expected one error line on stderr, got {len(lines)}: {err[-300:]}"
        return None
    if code != 0:
        return f"exit {code}, expected 0: {err[-300:]}"
    if case.expect.check is not None:
        case.expect.check(folder, stdout.getvalue())
    return None


def run_corpus(cases: list[Case], workdir: Path) -> dict[str, list[str]]:
    """Run every case in its own folder under ``workdir``; the failures by case name."""
    global CACHE
    CACHE = workdir / "_cache"
    CACHE.mkdir(parents=True, exist_ok=True)
    failures = {}
    for i, case in enumerate(cases):
        problem = run_case(case, workdir / f"case{i}")
        if problem:
            failures[f"{case.kind}: {case.name}"] = problem
    return failures


if __name__ == "__main__":
    import collections
    import tempfile

    cases = all_cases()
    print(dict(collections.Counter(c.kind for c in cases)), len(cases), "cases")
    with tempfile.TemporaryDirectory() as tmp:
        for name, problem in run_corpus(cases, Path(tmp)).items():
            print(f"FAIL {name}: {problem}")

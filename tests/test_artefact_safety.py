"""No lost file, no unverified code: what compile may replace, and how an artefact is read and loaded."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from bie_compiler.errors import ArtefactError, OptionError
from bie_compiler.runtime import artefact
from bie_compiler.runtime.manifest_schema import validate_manifest

pytestmark = pytest.mark.slow  # whole-model compiles: left out of `make test-fast`


def cli(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "bie_compiler", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "art"
    result = cli("compile", model_dir["mlp"], "-q", "--bits", "4", "-o", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def copy(built, tmp_path):
    return shutil.copytree(built, tmp_path / "art")


def reseal(folder, edit):
    """Edit the manifest and recompute its self-checksum, as an attacker could."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["checksum"] = artefact._checksum(manifest)
    path.write_text(json.dumps(manifest))


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("setup", ["manifest_only", "user_file_in_artefact", "model_inside", "symlink", "file"])
def test_compile_never_replaces_what_it_did_not_write(model_dir, built, tmp_path, setup):
    out = tmp_path / "target"
    model = model_dir["mlp"]
    if setup == "manifest_only":  # e.g. a browser extension's folder
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my extension"}')
        (out / "popup.html").write_text("<p>")
    elif setup == "user_file_in_artefact":
        shutil.copytree(built, out)
        (out / "notes.txt").write_text("mine")
    elif setup == "model_inside":
        out.mkdir()
        model = shutil.copy(model_dir["mlp"], out / "mlp.onnx")
    elif setup == "symlink":
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "keep.txt").write_text("mine")
        out.symlink_to(tmp_path / "real")
    else:
        out.write_text("a file")
    before = tree(tmp_path)
    result = cli("compile", model, "-q", "-o", out)
    reasons = ("refusing", "holds the source model", "symbolic link")
    assert result.returncode == 2 and any(r in result.stderr for r in reasons), result.stderr
    assert result.stderr.count("\n") == 1
    assert tree(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".target.")]


def test_empty_output_name_is_refused(model_dir, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    result = cli("compile", model_dir["mlp"], "-q", "-o", "", cwd=tmp_path)
    assert result.returncode == 2 and "-o: the artefact folder name is empty" in result.stderr
    assert (tmp_path / "manifest.json").read_text() == "{}"


def test_replacing_an_artefact_is_one_exchange_and_keeps_the_umask_mode(model_dir, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert cli("compile", model_dir["mlp"], "-q", "-o", out).returncode == 0
        inode = out.stat().st_ino
        assert cli("compile", model_dir["mlp"], "-q", "--bits", "3", "-o", out).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert out.stat().st_ino != inode  # the new folder took the old one's place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_dead_compiles_are_removed(model_dir, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tmp-{int(dead.stdout)}-abc123"
    live = tmp_path / f".out.tmp-{os.getpid()}-def456"
    other = tmp_path / f".other.tmp-{int(dead.stdout)}-abc123"
    for folder in (stale, live, other):
        folder.mkdir()
    assert cli("compile", model_dir["mlp"], "-q", "-o", tmp_path / "out").returncode == 0
    assert not stale.exists() and live.exists() and other.exists()


def test_expect_sha256_pins_the_artefact(copy):
    digest = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    assert cli("inspect", copy, "--expect-sha256", digest).returncode == 0
    reseal(copy, lambda m: m["codec"].update(name="bie-binary"))
    result = cli("check", copy, "--expect-sha256", digest)
    assert result.returncode == 2 and "not the expected" in result.stderr
    assert "expected 64 hexadecimal digits" in cli("run", copy, "--expect-sha256", "xyz").stderr


def test_compile_prints_the_pin(model_dir, tmp_path):
    result = cli("compile", model_dir["mlp"], "-q", "-o", tmp_path / "out")
    digest = hashlib.sha256((tmp_path / "out" / "manifest.json").read_bytes()).hexdigest()
    assert f"manifest sha256 {digest}" in result.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(files={}), "model.so is not listed"),
    (lambda m: m["files"].update({"../../etc/passwd": m["files"]["model.so"]}), "unexpected file name"),
    (lambda m: m["files"].update({"/abs/model.so": m["files"]["model.so"]}), "unexpected file name"),
    (lambda m: m.pop("inputs"), "missing field(s) inputs"),
    (lambda m: m["inputs"][0].update(dtype="complex256"), "manifest.inputs[0].dtype"),
    (lambda m: m["files"]["model.so"].update(bytes=-1), "manifest.files.model.so.bytes"),
    (lambda m: m["layers"][0].update(bits_per_weight=float("nan")), "finite number"),
    (lambda m: m["target"].update(mcpu="x; rm -rf /"), "manifest.target.mcpu"),
    (lambda m: m.update(extra=1), "unknown field(s) extra"),
    (lambda m: m["codec"].update(options={"bits": json.loads("[" * 50 + "]" * 50)}), "nested too deeply"),
])
def test_resealed_manifests_are_validated_before_use(copy, edit, message):
    reseal(copy, edit)
    for command in ("inspect", "check"):
        result = cli(command, copy)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_deeply_nested_json_is_a_clear_error(copy):
    (copy / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    result = cli("inspect", copy)
    assert result.returncode == 2 and "unreadable manifest" in result.stderr


def test_artefact_files_are_never_read_through_symlinks(copy, tmp_path):
    real = tmp_path / "elsewhere.so"
    shutil.move(copy / "model.so", real)
    (copy / "model.so").symlink_to(real)
    result = cli("check", copy)
    assert result.returncode == 2 and "symbolic link" in result.stderr


def test_the_loaded_library_is_the_verified_bytes(copy):
    """Swapping model.so after verification cannot change what is loaded (no check-then-reopen)."""
    from bie_compiler.runtime.runner import Runner

    manifest = artefact.read_manifest(copy)
    library = artefact.VerifiedLibrary(copy, manifest)
    (copy / "model.so").write_bytes(b"\x7fELF not a library")
    with library as path:
        assert open(path, "rb").read() == library.data
        assert hashlib.sha256(library.data).hexdigest() == manifest["files"]["model.so"]["sha256"]
    assert not os.path.exists(path)
    with pytest.raises(ArtefactError, match="does not match the manifest"):
        Runner(copy)


def test_output_folder_rules():
    with pytest.raises(OptionError, match="empty"):
        artefact.output_folder("  ")


def test_schema_accepts_every_kind_of_artefact(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert validate_manifest(manifest, ("model.so", "weights.bin", "device.cu"), 2) is None
    np.testing.assert_equal(artefact.read_manifest(built)["layers"], manifest["layers"])

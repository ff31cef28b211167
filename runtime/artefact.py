"""The artefact on disk: ``model.so`` (code), ``weights.bin`` (the constants, encoded weights among
them, as data: :mod:`.weights_file`) and ``manifest.json``.

The manifest carries the format version, where the model came from, the codec
configuration, the per-layer report, the I/O signature, the sha256 of every
file, and a checksum of itself, so a truncated, corrupted or foreign artefact
is refused before any of it runs. The checksum is not authentication (anyone
can recompute it): a user who must know that an artefact is the one they
compiled pins the sha256 of its manifest (``expect_sha256``), which covers
every file through their digests.

Writing never loses a user's file: only a folder that is an artefact we wrote
(the format marker, nothing but the files its manifest lists) is replaced, and
it is swapped for the new one in one atomic exchange, so there is no moment
without an artefact at the path. Reading opens each file once without
following symbolic links, hashes the bytes read and hands those same bytes on.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from typing import BinaryIO, Callable
from pathlib import Path

from bie_compiler.errors import ArtefactError, OptionError

from .manifest_schema import validate_manifest
from .weights_file import unpack

FORMAT = "bie-compiler-artefact"
FORMAT_VERSION = 2  # 2: constants in weights.bin, passed to main after the inputs
MANIFEST = "manifest.json"
LIBRARY = "model.so"
WEIGHTS = "weights.bin"
DEVICE_SOURCE = "device.cu"  # cuda artefacts: the generated CUDA source, for inspection and offline checks
_MAX_MANIFEST_BYTES = 64 << 20
_STAGING = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+")
_RENAME_EXCHANGE = 2  # linux/fs.h


def _checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _folder_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def output_folder(out_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """The absolute artefact folder for ``-o out_dir``, or OptionError when writing there could destroy a file.

    Refused: an empty name, a symbolic link, a folder that holds the source model, and a folder that is
    neither empty nor an artefact made only of the files its manifest lists.
    """
    if not str(out_dir).strip():
        raise OptionError("-o: the artefact folder name is empty")
    out = Path(os.path.abspath(out_dir))
    if source is not None:
        model = Path(os.path.realpath(source))
        if model == Path(os.path.realpath(out)) or Path(os.path.realpath(out)) in model.parents:
            raise OptionError(f"-o {out}: holds the source model {source}; choose another folder")
    try:
        out.is_symlink() and out.exists()
    except OSError as e:  # a name too long, a component that is not a folder
        raise OptionError(f"-o {out}: not a usable path ({e.strerror})") from None
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise OptionError(f"-o {out}: a part of the path is a file, not a folder")
    if out.is_symlink():
        raise OptionError(f"-o {out}: is a symbolic link; give the folder itself")
    if not out.exists():
        return out
    if not out.is_dir():
        raise OptionError(f"-o {out}: exists and is not a folder; refusing to overwrite it")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return out
    try:
        listed = set(_read_json(out / MANIFEST).get("files", {})) if MANIFEST in entries else None
    except ArtefactError:
        listed = None
    if listed is None:
        raise OptionError(f"-o {out}: exists and is not a bie-compiler artefact; refusing to overwrite it")
    strays = sorted(entries - listed - {MANIFEST})
    if strays:
        raise OptionError(f"-o {out}: holds files that are not part of its artefact ({', '.join(strays[:5])}"
                          f"{', ...' if len(strays) > 5 else ''}); refusing to delete them")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Remove temporaries of earlier compiles to ``name`` whose process is gone (killed mid-write)."""
    for entry in parent.glob(f".{name}.*-*-*"):
        match = _STAGING.fullmatch(entry.name)
        if match and match["name"] == name and entry.is_dir() and not entry.is_symlink() \
                and not _pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def write_artefact(out_dir: str | Path, executable, manifest: dict,
                   extra_files: dict[str, str | bytes | Callable[[BinaryIO], None]] | None = None,
                   source: str | os.PathLike | None = None) -> Path:
    """Export the executable, ``extra_files`` (name -> text, bytes, or a function writing the file's bytes to the
    binary file it is given: a large file is not held in memory) and the manifest into ``out_dir``, atomically
    replacing an older artefact (see :func:`output_folder` for what is refused). Every file is listed in the
    manifest with its sha256."""
    out = output_folder(out_dir, source)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out.parent, out.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise OptionError(f"-o {out}: cannot create the artefact there ({e.strerror})") from None
    try:
        os.chmod(staging, _folder_mode())  # mkdtemp makes 0700; an artefact folder gets the umask's mode
        try:
            executable.export_library(str(staging / LIBRARY))
        except Exception as e:  # the system's compiler or linker failed: a full disk, a missing tool
            detail = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ArtefactError(f"-o {out}: writing {LIBRARY} failed: {detail[:300]}") from None
        for name, content in (extra_files or {}).items():
            try:
                if isinstance(content, bytes):
                    (staging / name).write_bytes(content)
                elif isinstance(content, str):
                    (staging / name).write_text(content)
                else:
                    with open(staging / name, "wb") as f:
                        content(f)
            except OSError as e:  # a full disk
                raise ArtefactError(f"-o {out}: writing {name} failed ({e.strerror})") from None
        files = [LIBRARY, *(extra_files or {})]
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files={
            name: {"sha256": _file_sha256(staging / name), "bytes": (staging / name).stat().st_size} for name in files})
        manifest["checksum"] = _checksum(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        out = output_folder(out_dir, source)  # again: the folder may have changed while we built
        if out.exists() and _exchange(staging, out):
            shutil.rmtree(staging)  # now the old artefact
        elif out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def manifest_sha256(artefact_dir: str | Path) -> str:
    """The sha256 of an artefact's manifest file: pin it with ``--expect-sha256``."""
    return hashlib.sha256(_read_file(Path(artefact_dir) / MANIFEST, _MAX_MANIFEST_BYTES)).hexdigest()


def _open_plain(path: Path):
    """A binary reader of a regular file, opened once and never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtefactError(f"{path}: missing from the artefact") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtefactError(f"{path}: is a symbolic link; artefact files must be plain files") from None
        raise ArtefactError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtefactError(f"{path}: is not a plain file")
    return os.fdopen(fd, "rb")


def _read_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`_open_plain`); at most ``limit`` bytes, or ArtefactError."""
    with _open_plain(path) as f:
        data = f.read(limit + 1) if limit is not None else f.read()
    if limit is not None and len(data) > limit:
        raise ArtefactError(f"{path}: larger than {limit} bytes; not a bie-compiler manifest")
    return data


def _file_sha256(path: Path) -> str:
    """The sha256 of a file we just wrote, read in chunks (a library can be large)."""
    h = hashlib.sha256()
    with _open_plain(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    data = _read_file(path, _MAX_MANIFEST_BYTES)
    try:
        value = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtefactError(f"{path}: unreadable manifest ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise ArtefactError(f"{path}: not a bie-compiler manifest")
    return value


def read_manifest(artefact_dir: str | Path, verify_files: bool = True, expect_sha256: str | None = None) -> dict:
    """The verified manifest of an artefact; ArtefactError naming the problem otherwise.

    ``expect_sha256``: the manifest file's sha256 must equal it (a pin the user holds), checked first.
    """
    folder = Path(artefact_dir)
    if not folder.is_dir():
        raise ArtefactError(f"{folder}: no such artefact folder")
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise ArtefactError(f"{folder}: not a bie-compiler artefact (no {MANIFEST})")
    if expect_sha256 is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", expect_sha256):
            raise OptionError(f"--expect-sha256 {expect_sha256!r}: expected 64 hexadecimal digits")
        actual = manifest_sha256(folder)
        if actual != expect_sha256.lower():
            raise ArtefactError(f"{path}: sha256 {actual} is not the expected {expect_sha256.lower()}; "
                                "this is not the artefact you pinned")
    manifest = _read_json(path)
    if manifest.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not a bie-compiler manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(
            f"{path}: artefact format version {manifest.get('format_version')!r} (this bie-compiler reads "
            f"version {FORMAT_VERSION}); recompile the model"
        )
    if manifest.get("checksum") != _checksum(manifest):
        raise ArtefactError(f"{path}: the manifest was modified after compilation (checksum mismatch)")
    problem = validate_manifest(manifest, allowed_files=(LIBRARY, WEIGHTS, DEVICE_SOURCE), required_files=2)
    if problem:
        raise ArtefactError(f"{path}: invalid manifest: {problem}")
    if verify_files:
        for name in manifest["files"]:
            data = verified_bytes(folder, manifest, name)
            if name == WEIGHTS:
                unpack(data, str(folder / WEIGHTS), manifest["weights"])  # checked as the runtime will, running no code
    return manifest


def verified_bytes(folder: str | Path, manifest: dict, name: str) -> bytes:
    """The bytes of the artefact file ``name``, read once and checked against the manifest."""
    path = Path(folder) / name
    data = _read_file(path)
    expected = manifest["files"][name]
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise ArtefactError(f"{path}: does not match the manifest (truncated, corrupted or replaced)")
    return data


class VerifiedLibrary:
    """``with VerifiedLibrary(folder, manifest) as path:`` a private copy of the verified ``model.so`` bytes.

    TVM loads a library by path; loading the artefact's own path would let someone swap the file between
    the hash and the load. The copy lives in a folder only this user can read and is removed on exit
    (a loaded library stays mapped).
    """

    def __init__(self, folder: str | Path, manifest: dict):
        self.data = verified_bytes(folder, manifest, LIBRARY)
        self.tmp: str | None = None

    def __enter__(self) -> str:
        self.tmp = tempfile.mkdtemp(prefix="bie-compiler-lib-")
        path = os.path.join(self.tmp, LIBRARY)
        with open(path, "xb") as f:
            f.write(self.data)
        return path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

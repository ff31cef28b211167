"""The artefact on disk: ``model.so`` (code and encoded constants) and ``manifest.json``.

The manifest carries the format version, where the model came from, the codec
configuration, the per-layer report, the I/O signature, the sha256 of every
file, and a checksum of itself, so a truncated, tampered or foreign artefact
is refused before any of it runs. Artefacts are written to a temporary folder
and renamed into place: a failed compile never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from bie_compiler.errors import ArtefactError
from bie_compiler.frontend import file_sha256

FORMAT = "bie-compiler-artefact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
DEVICE_SOURCE = "device.cu"  # cuda artefacts: the generated CUDA source, for inspection and offline checks


def _checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_artefact(out_dir: str | Path, executable, manifest: dict, extra_files: dict[str, str] | None = None) -> Path:
    """Export the executable, ``extra_files`` (name -> text) and the manifest into ``out_dir``, atomically
    replacing an older artefact. Every file is listed in the manifest with its sha256."""
    out = Path(out_dir).absolute()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())):
        raise ArtefactError(f"{out}: exists and is not an artefact folder; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        executable.export_library(str(staging / LIBRARY))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        files = [LIBRARY, *(extra_files or {})]
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files={
            name: {"sha256": file_sha256(staging / name), "bytes": (staging / name).stat().st_size} for name in files})
        manifest["checksum"] = _checksum(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_manifest(artefact_dir: str | Path, verify_files: bool = True) -> dict:
    """The verified manifest of an artefact; ArtefactError naming the problem otherwise."""
    folder = Path(artefact_dir)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtefactError(f"{folder}: no such artefact folder")
    if not path.is_file():
        raise ArtefactError(f"{folder}: not a bie-compiler artefact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtefactError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not a bie-compiler manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(
            f"{path}: artefact format version {manifest.get('format_version')} (this bie-compiler reads "
            f"version {FORMAT_VERSION}); recompile the model"
        )
    if manifest.get("checksum") != _checksum(manifest):
        raise ArtefactError(f"{path}: the manifest was modified after compilation (checksum mismatch)")
    if verify_files:
        for name, expected in manifest["files"].items():
            file = folder / name
            if not file.is_file():
                raise ArtefactError(f"{file}: missing from the artefact")
            if file.stat().st_size != expected["bytes"] or file_sha256(file) != expected["sha256"]:
                raise ArtefactError(f"{file}: does not match the manifest (truncated, corrupted or replaced)")
    return manifest

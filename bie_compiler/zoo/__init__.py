"""``bie-compiler zoo NAME``: real trained models with their real evaluation data, built on first use into a cache.

An entry is a folder: ``model.onnx``; ``data/*.npz``, the evaluation samples (inputs by name, and ``label``
where the task has labels), for ``eval --data`` and ``analyze --data``; ``calibration/*.npz``, other samples,
for ``--calibration``; and ``entry.json``, what the model is, where it comes from, and the ``compile`` options
its data needs (fixed input shapes). The cache is ``$BIE_ZOO_CACHE`` or ``~/.cache/bie-compiler/zoo``; nothing
of it is committed. Entries that need optional packages say which extra brings them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import OptionError
from . import digits, minilm, ppocr

ENTRY_FILE = "entry.json"


@dataclass(frozen=True)
class Entry:
    name: str
    about: str
    build: Callable[[Path], dict]  # writes model.onnx, data/, calibration/ into a folder; returns entry.json's fields
    needs: tuple[str, ...] = ()  # modules the build imports beyond the project's own dependencies
    extra: str = "test"  # the pyproject extra that installs them


ENTRIES = {e.name: e for e in (
    Entry("digits-mlp", digits.MLP_ABOUT, digits.build_mlp, ("sklearn",)),
    Entry("digits-cnn", digits.CNN_ABOUT, digits.build_cnn, ("sklearn",)),
    Entry("minilm", minilm.ABOUT, minilm.build, minilm.NEEDS, "minilm"),
    Entry("ppocr-det", ppocr.ABOUT, ppocr.build, ppocr.NEEDS, "ppocr"),
)}


def cache_dir() -> Path:
    return Path(os.environ.get("BIE_ZOO_CACHE") or Path.home() / ".cache" / "bie-compiler" / "zoo")


def missing(name: str) -> list[str]:
    """The modules entry ``name`` needs that are not installed."""
    return [m for m in ENTRIES[name].needs if importlib.util.find_spec(m) is None]


def build(name: str, out: str | Path | None = None, force: bool = False,
          progress: Callable[[str], None] = lambda message: None) -> Path:
    """The folder of entry ``name`` (``out``, else its folder in the cache), built unless it is there already."""
    if name not in ENTRIES:
        raise OptionError(f"unknown zoo entry {name!r}; choose one of: {', '.join(ENTRIES)}")
    entry = ENTRIES[name]
    folder = Path(out) if out is not None else cache_dir() / name
    if (folder / ENTRY_FILE).is_file() and not force:
        return folder
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / ENTRY_FILE).is_file())):
        raise OptionError(f"{folder}: exists and is not a zoo entry; give an empty or new folder")
    lacking = missing(name)
    if lacking:
        raise OptionError(f"zoo {name} needs {', '.join(lacking)}: pip install -e '.[{entry.extra}]' "
                          f"(make zoo installs every entry's extra)")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    (tmp / "calibration").mkdir()
    try:
        progress(f"building {name}: {entry.about}")
        fields = entry.build(tmp)
        (tmp / ENTRY_FILE).write_text(json.dumps({"name": name, "about": entry.about, "model": "model.onnx",
                                                  "data": "data", "calibration": "calibration", **fields}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def describe(folder: Path) -> dict:
    return json.loads((folder / ENTRY_FILE).read_text())

"""docs/architecture.md names files that exist, and every pass and build module of the pipeline."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_path_the_doc_names_exists():
    paths = set(re.findall(r"[\w/]+/[\w.]+\.py", DOC))
    assert paths and not sorted(p for p in paths if not (ROOT / p).exists())


def test_every_pass_and_build_module_is_in_the_doc():
    modules = [p for folder in ("passes", "codegen") for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"]
    named = {p.relative_to(ROOT).as_posix() for p in modules if p.parent.name == "passes" or p.stem in ("cpu", "cuda")}
    assert not sorted(m for m in named if m not in DOC and Path(m).name not in DOC)

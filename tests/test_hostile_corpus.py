"""Every case of the hostile-input corpus (tests/hostile_corpus.py) ends in a clear one-line error or a correct
result, with no traceback, no changed file of the user's and no temporary left behind."""

import pytest

from hostile_corpus import all_cases, run_case
import hostile_corpus

pytestmark = pytest.mark.slow  # whole-model compiles or runs: left out of `make test-fast`

CASES = all_cases()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    hostile_corpus.CACHE = folder / "_cache"
    hostile_corpus.CACHE.mkdir()
    return folder


def test_the_corpus_covers_every_class():
    counts = {}
    for case in CASES:
        counts[case.kind] = counts.get(case.kind, 0) + 1
    assert len(CASES) >= 150 and set(counts) == {"onnx", "options", "artefact", "weights", "inputs", "output"}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c.kind}-{c.name}" for c in CASES])
def test_case(workdir, index):
    problem = run_case(CASES[index], workdir / f"case{index}")
    assert problem is None, problem

"""Options are checked once, the same way from the CLI flags and --override; patterns that match nothing warn."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # whole-model compiles or runs: left out of `make test-fast`


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "bie_compiler", *map(str, args)], capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize("args, message", [
    (["--override", "fc1.weight:bits=4.5"], "option bits=4.5: expected an integer"),
    (["--override", "fc1.weight:bits=abc"], "option bits='abc': expected an integer"),
    (["--codec", "tans", "--override", "fc*:levels=15.0"], "option levels=15.0: expected an integer"),
    (["--codec", "tans", "--stream-symbols", "1000000000000"], "out of range"),
    (["--codec", "bie-binary", "--threshold", "nan"], "threshold=nan: expected a finite number"),
])
def test_bad_option_values_are_one_line_errors(model_dir, tmp_path, args, message):
    result = cli("compile", model_dir["mlp"], "-q", "-o", tmp_path / "out", *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_patterns_that_match_nothing_warn(model_dir, tmp_path):
    result = cli("compile", model_dir["mlp"], "-q", "-o", tmp_path / "out", "--skip", "fc1.weight",
                 "--skip", "encoder.*", "--override", "fc9*:bits=8")
    assert result.returncode == 0, result.stderr
    assert "bie-compiler: warning: --skip 'encoder.*' matches no weight" in result.stderr
    assert "bie-compiler: warning: --override 'fc9*' matches no weight" in result.stderr
    assert "'fc1.weight' matches no weight" not in result.stderr

"""Every codec is complete: a CLI option per Config field, CPU kernels, a kernel test case, a README row."""

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from bie_compiler import codecs
from bie_compiler.cli import _parser
from bie_compiler.codegen import KERNELS, kernel_registry

ROOT = Path(__file__).resolve().parent.parent
CODECS = list(codecs.CODECS)


def compile_options() -> dict[str, argparse.Action]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: a for a in sub.choices["compile"]._actions for flag in a.option_strings}


@pytest.mark.parametrize("codec", CODECS)
def test_every_config_field_is_a_cli_option(codec):
    options = compile_options()
    for f in dataclasses.fields(codecs.CODECS[codec].Config):
        if f.metadata.get("set_by_plan"):
            continue
        action = options.get("--" + f.name.replace("_", "-"))
        assert action is not None, f"{codec}: no CLI option for Config field {f.name}"
        assert action.dest == f.name and codec.split("-")[-1] in action.help.split(":")[0]


def fake_codec(config) -> object:
    return type("FakeCodec", (), {"Config": config})


def test_codecs_sharing_a_field_must_agree_on_its_help(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Config:
        bits: int = dataclasses.field(default=4, metadata={"help": "another meaning"})

    monkeypatch.setitem(codecs.CODECS, "other", fake_codec(Config))
    with pytest.raises(ValueError, match="bits differs"):
        codecs.option_fields()


def test_a_field_without_help_is_refused(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Config:
        strength: int = 4

    monkeypatch.setitem(codecs.CODECS, "other", fake_codec(Config))
    with pytest.raises(ValueError, match="strength has no metadata help"):
        codecs.option_fields()


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_has_cpu_kernels_for_matmul_and_conv(codec):
    assert (codec, "matmul", "llvm") in KERNELS and (codec, "conv2d", "llvm") in KERNELS


def test_every_kernel_module_is_loaded_and_registers_where_it_defines():
    import sys
    folder = ROOT / "codegen" / "kernels"
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert all(f"bie_compiler.codegen.kernels.{m}" in sys.modules for m in modules)
    assert {b.__module__.rsplit(".", 1)[-1] for b in KERNELS.values()} <= modules


def test_a_second_kernel_for_the_same_row_is_refused(monkeypatch):
    monkeypatch.setattr(kernel_registry, "KERNELS", dict(KERNELS))
    with pytest.raises(ValueError, match="two kernels for .'int8', 'matmul', 'llvm'."):
        kernel_registry.register("int8", ops=("matmul",), target="llvm")(lambda enc, conv: None)
    with pytest.raises(ValueError, match="unknown op 'gemm'"):
        kernel_registry.register("int8", ops=("gemm",), target="llvm")(lambda enc, conv: None)


def test_kernels_are_registered_for_known_codecs_only():
    assert {codec for codec, _, _ in KERNELS} <= set(CODECS)


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_has_a_kernel_test_case(codec):
    from test_kernels import CASES

    own_file = ROOT / "tests" / f"test_{codec.replace('-', '_')}_kernels.py"
    assert codec in {c for c, _ in CASES} or own_file.is_file(), f"{codec}: no CPU kernel test case"


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_has_a_readme_row(codec):
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^\| `{re.escape(codec)}` \|", readme, re.M), f"{codec}: no row in the README's codec table"

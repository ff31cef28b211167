"""Imports flow one way: codecs need numpy only, loading an artefact needs TVM's runtime and none of the compiler."""

import subprocess
import sys

COMPILER = ("bie_compiler.codegen", "bie_compiler.passes", "bie_compiler.frontend", "bie_compiler.driver",
            "bie_compiler.codecs", "onnx", "onnxruntime")


def imported_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_importing_the_package_is_cheap():
    modules = imported_after("import bie_compiler")
    assert not {m for m in modules if m.startswith(COMPILER) or m == "tvm"}


def test_codecs_need_numpy_only():
    modules = imported_after("import bie_compiler.codecs")
    assert not {m for m in modules if m.split(".")[0] in ("tvm", "onnx", "onnxruntime")}


def test_loading_an_artefact_imports_no_compiler_part(model_dir, tmp_path):
    from bie_compiler import compile_model

    out = compile_model(model_dir["mlp"], tmp_path / "art", "bie-bitplane", progress=None)
    modules = imported_after(f"import bie_compiler, numpy as np\n"
                             f"r = bie_compiler.load({str(out)!r})\nr({{'x': np.zeros((1, 256), np.float32)}})")
    assert "tvm" in modules and "bie_compiler.runtime.runner" in modules
    assert not {m for m in modules if m.startswith(COMPILER)}


def test_kernels_do_not_import_the_passes():
    """codecs <- codegen <- passes: the rewrite asks codegen for kernels, never the other way."""
    modules = imported_after("import bie_compiler.codegen, bie_compiler.codegen.cpu, bie_compiler.codegen.cuda")
    assert "bie_compiler.codegen.cpu" in modules and not {m for m in modules if m.startswith("bie_compiler.passes")}

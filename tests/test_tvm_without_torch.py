"""TVM loads without importing torch when torch is installed; torch still imports for code that wants it."""

import subprocess
import sys
import textwrap


def test_torch_hidden_from_tvm_only(tmp_path):
    # a stand-in torch package: any import of it is recorded, so TVM's eager `import torch` would show
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("import builtins\nbuiltins.FAKE_TORCH_IMPORTS = getattr(builtins, 'FAKE_TORCH_IMPORTS', 0) + 1\n")
    script = textwrap.dedent("""
        import builtins, sys
        import bie_compiler
        import tvm, tvm.relax
        import bie_compiler.runtime.runner
        assert "torch" not in sys.modules, sys.modules.get("torch")
        assert getattr(builtins, "FAKE_TORCH_IMPORTS", 0) == 0
        import torch
        assert builtins.FAKE_TORCH_IMPORTS == 1
        print("ok")
    """)
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"

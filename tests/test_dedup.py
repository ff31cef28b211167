"""Identical kernels of layers of one shape are compiled once; the calls of the copies go to the one kept.

(The outputs stay those of the model: tests/test_compile.py checks the built artefacts against onnxruntime.)"""

import tvm
from tvm import relax

from bie_compiler.codegen.dedup import deduplicate_prim_funcs
from bie_compiler.codegen.target import make_target
from bie_compiler.frontend import import_model
from bie_compiler.passes import EncodingPolicy, encoding_passes, plan_encoding


def test_dense_kernels_of_one_shape_are_kept_once(model_dir):
    imported = import_model(model_dir["transformer"])
    plan = plan_encoding(imported.mod, imported.constant_names, EncodingPolicy("bie-bitplane", skip=("*",)), make_target())
    mod = encoding_passes(plan)(imported.mod)
    prims = lambda m: {gv.name_hint for gv, f in m.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}  # noqa: E731
    deduped = deduplicate_prim_funcs(mod)
    shapes = {tuple(int(d) for d in f.params[1].shape) for gv, f in mod.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc)}
    assert len(prims(deduped)) == 2 * len(shapes) < len(prims(mod))  # one GEMV and one GEMM per weight shape
    called = {gv.name_hint for _, f in deduped.functions_items() if isinstance(f, relax.Function)
              for gv in relax.analysis.all_global_vars(f)}
    assert prims(deduped) <= called and called <= {gv.name_hint for gv in deduped.get_global_vars()}

"""EncodeWeights: replace constant weights of matmuls by encoded constants and a kernel that reads them.

Rewrites ``matmul(x, W)`` and ``matmul(x, permute_dims(W))`` (ONNX MatMul, and
Gemm with or without transB; its bias add stays a separate op) where ``W`` is a
2-D float32 constant into ``call_tir(kernel, (x2d, *encoded))``, reshaping a
batched ``x`` to 2-D and back. Convolution weights stay dense and are reported
as such. The kernel reads ``x``, so constant folding cannot pre-compute it
into a dense weight again.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from bie_compiler import codecs, codegen
from bie_compiler.errors import CodecError
from bie_compiler.frontend import ImportedModel
from bie_compiler.report import LayerRecord

from .policy import EncodingPolicy

CONV_FALLBACK = "conv weights stay dense in this version (codecs compress MatMul/Gemm weights)"


@mutator
class _WeightEncoder(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, model: ImportedModel, policy: EncodingPolicy, target, progress):
        super().__init__(mod)
        self.mod_ = mod
        self.model = model
        self.policy = policy
        self.target = target
        self.progress = progress
        self.records: dict[str, LayerRecord] = {}
        self.kernels: dict[str, tuple[relax.GlobalVar, list[relax.Constant]]] = {}  # shared by tied weights

    def _bound(self, e):
        """The expression a variable is bound to (the matcher looks through bindings), else ``e``."""
        if isinstance(e, relax.Var):
            bound = self.lookup_binding(e)
            if bound is not None:
                return bound
        return e

    def _weight(self, e) -> tuple[np.ndarray, bool] | None:
        """(ONNX-layout weight, transposed?) if ``e`` is a constant or a 2-D transpose of one."""
        e = self._bound(e)
        if isinstance(e, tvm.ir.GenericConst):
            return e.value.numpy(), False
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.permute_dims":
            inner = self._bound(e.args[0])
            if isinstance(inner, tvm.ir.GenericConst) and len(inner.value.shape) == 2:
                axes = e.attrs.axes
                if axes is None or [int(a) for a in axes] == [1, 0]:
                    return inner.value.numpy(), True
        return None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        op = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if op == "relax.nn.conv2d":
            found = self._weight(call.args[1])
            if found is not None:
                self._dense(found[0], "conv2d", CONV_FALLBACK)
        if op != "relax.matmul":
            return call
        found = self._weight(call.args[1])
        if found is None:
            return call  # activation @ activation (attention), not a weight
        weight, transposed = found
        name = self._name(weight)
        if weight.ndim != 2:
            self._dense(weight, "matmul", f"{weight.ndim}-D weight (only 2-D weights are encoded)", name)
            return call
        x = call.args[0]
        if x.ty.dtype != "float32" or weight.dtype != np.float32:
            self._dense(weight, "matmul", f"dtype {x.ty.dtype}/{weight.dtype} (only float32 is encoded)", name)
            return call
        codec, config = self.policy.choose(name, weight.size)
        if codec is None:
            self._dense(weight, "matmul", config, name)
            return call
        gv, constants = self._kernel(name, weight, transposed, codec, config)
        return self._emit_call(x, gv, constants, weight.shape[0] if transposed else weight.shape[1])

    def _name(self, weight: np.ndarray) -> str:
        return self.model.weight_name(weight) or f"unnamed_weight_{len(self.records)}"

    def _dense(self, weight, op, reason, name=None):
        name = name or self._name(weight)
        self.records.setdefault(name, LayerRecord(
            name=name, op=op, shape=list(weight.shape), codec="dense",
            bytes_dense=int(weight.nbytes), bytes_encoded=int(weight.nbytes), fallback_reason=reason))

    def _kernel(self, name, weight, transposed, codec, config):
        if name in self.kernels:
            return self.kernels[name]
        self.progress(f"encoding {name} {list(weight.shape)} with {codec}")
        wt = weight if transposed else weight.T  # codecs take [N, K]
        module = codecs.get_codec(codec)
        try:
            enc = module.encode(wt, config)
        except CodecError as e:
            raise CodecError(f"weight {name!r}: {e}") from None
        call = codegen.kernel_for(enc, self.target)
        func_name = f"{codec.replace('-', '_')}_{call.kind}_" + "".join(c if c.isalnum() else "_" for c in name)
        gv = self.builder_.add_func(call.func.with_attr("global_symbol", func_name), func_name)
        constants = [relax.const(c) for c in call.constants]
        details = module.index_saving(enc) if hasattr(module, "index_saving") else {}
        self.records[name] = LayerRecord(
            name=name, op="matmul", shape=list(weight.shape), codec=codec,
            bytes_dense=int(weight.nbytes), bytes_encoded=enc.nbytes, transposed=transposed,
            config=codecs.config_dict(config), encoded_sha256=enc.sha256(),
            details={**details, "kernel": call.kind, **{f"header.{k}": v for k, v in enc.header.items()}})
        self.kernels[name] = (gv, constants)
        return self.kernels[name]

    def _emit_call(self, x, gv, constants, n):
        lead = list(x.ty.shape.values)[:-1]
        k = x.ty.shape.values[-1]
        rows = 1
        for d in lead:
            rows = rows * d
        x2 = x if len(lead) == 1 else self.builder_.emit(relax.op.reshape(x, [rows, k]))
        out = relax.call_tir(gv, [x2, *constants], out_ty=relax.TensorType([rows, n], "float32"))
        if len(lead) == 1:
            return out
        return relax.op.reshape(self.builder_.emit(out), [*lead, n])

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


class EncodeWeights:
    """Module pass: encode every eligible weight per the policy; records what it did in ``records``."""

    def __init__(self, model: ImportedModel, policy: EncodingPolicy, target, progress=lambda msg: None):
        self.model, self.policy, self.target, self.progress = model, policy, target, progress
        self.records: list[LayerRecord] = []

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        encoder = _WeightEncoder(mod, self.model, self.policy, self.target, self.progress)
        mod = encoder.run()
        self.records = list(encoder.records.values())
        return relax.transform.DeadCodeElimination()(mod)

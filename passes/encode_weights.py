"""EncodeWeights: replace constant weights of matmuls (and convs) by encoded constants and a kernel that reads them.

Rewrites ``matmul(x, W)`` and ``matmul(x, permute_dims(W))`` (ONNX MatMul, and
Gemm with or without transB; its bias add stays a separate op) where ``W`` is a
2-D float32 constant into ``call_tir(kernel, (x2d, *encoded))``, reshaping a
batched ``x`` to 2-D and back (a weight left dense gets the target's dense
kernels, ``codegen.dense_kernel``, over the same weight stored [N, K]). Where
the codec has a decode kernel (the CPU), a matmul dispatches on its row count:
one row runs the fused kernel, more rows ``matmul(x2d, call_tir(decode, (x2d,
*encoded)))`` (compute-bound: decode once, then the dense schedules' GEMM); a
``conv2d(x, W)`` (any groups) becomes ``conv2d(x, call_tir(decode, (x,
*encoded)))`` with its attributes kept. Every kernel takes ``x`` (a decode
kernel without reading it), so constant folding cannot pre-compute a dense
weight into the artefact again.

It works in two phases so that codecs can decide over the whole model (e.g.
which channels are sensitive, or how to split a bits budget): first every
weight use is collected, then the policy and the codecs' ``plan`` hooks decide
each weight's codec and config, then the calls are rewritten.

On the ``bitvert`` target, ``bbs`` weights are offloaded instead: each becomes
a BitVert program (with its calibrated activation scale) and the matmul or conv
a ``call_dps_packed`` into the simulated device (``codegen/bitvert.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from bie_compiler import codecs, codegen
from bie_compiler.codecs import bbs
from bie_compiler.codegen import ConvSpec, bitvert
from bie_compiler.errors import CodecError
from bie_compiler.frontend import ImportedModel
from bie_compiler.report import LayerRecord

from .policy import EncodingPolicy


@dataclass
class WeightUse:
    """A constant weight feeding a matmul or conv, in its ONNX layout."""

    name: str
    op: str  # "matmul" or "conv2d"
    weight: np.ndarray
    transposed: bool = False  # matmul whose ONNX weight is [N, K] (Gemm transB=1)
    unsupported: str | None = None  # why no codec can take it, whatever the policy says
    groups: int = 1  # of a conv

    def matrix(self) -> np.ndarray:
        """The weight as codecs take it, [N, K]; a conv's K runs over (kh, kw, in_channel), channel fastest."""
        if self.op == "conv2d":
            return np.ascontiguousarray(self.weight.transpose(0, 2, 3, 1).reshape(self.weight.shape[0], -1))
        return np.ascontiguousarray(self.weight if self.transposed else self.weight.T)


def _conv_spec(call) -> ConvSpec | None:
    a = call.attrs
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW":
        return None
    return ConvSpec(
        strides=tuple(int(v) for v in a.strides),
        padding=tuple(int(v) for v in a.padding),
        dilation=tuple(int(v) for v in a.dilation),
        kernel_shape=tuple(int(d) for d in call.args[1].ty.shape.values),
        groups=int(a.groups),
    )


def _dispatch_by_rows(small, large, large_decodes: bool, constants, k: int, n: int) -> relax.Function:
    """``f(x [m, k], *constants) -> [m, n]``: the small-batch kernel up to SMALL_BATCH_ROWS rows, else the
    large-batch one (``large_decodes``: a decode kernel of the weight [k, n], then a plain matmul).

    The constants are parameters, not bound inside, so every constant of the model is an argument in
    ``main`` and the build can move them all out of the code (``LiftConstants``)."""
    m = tvm.tirx.Var("m", "int64")
    x = relax.Var("x", relax.TensorType([m, k], "float32"))
    params = [relax.Var(f"c{i}", c.ty) for i, c in enumerate(constants)]
    out_ty = relax.TensorType([m, n], "float32")

    def branch(kernel, decodes):
        y = relax.Var("y", out_ty)
        if not decodes:
            call = relax.call_tir(kernel, [x, *params], out_ty=out_ty)
            return relax.SeqExpr([relax.BindingBlock([relax.VarBinding(y, call)])], y)
        w_ty = relax.TensorType([k, n], "float32")
        w = relax.Var("w", w_ty)
        bindings = [relax.VarBinding(w, relax.call_tir(kernel, [x, *params], out_ty=w_ty)),
                    relax.VarBinding(y, relax.op.matmul(x, w))]
        return relax.SeqExpr([relax.BindingBlock(bindings)], y)

    choice = relax.If(relax.prim_value(m <= codegen.SMALL_BATCH_ROWS), branch(small, False),
                      branch(large, large_decodes))
    result = relax.Var("result", out_ty)
    body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(result, choice)])], result)
    return relax.Function([x, *params], body, out_ty, is_pure=True)


@mutator
class _WeightRewriter(PyExprMutator):
    """Collects weight uses (``decisions`` is None) or rewrites them per ``decisions``."""

    def __init__(self, mod, model: ImportedModel, target, decisions=None, programs=None):
        super().__init__(mod)
        self.mod_ = mod
        self.model = model
        self.target = target
        self.decisions = decisions  # name -> (codec, Encoded) for the weights to encode
        self.programs = programs or {}  # name -> (layer index, BitVert Program) for the offloaded weights
        self.uses: dict[str, WeightUse] = {}
        self.kernels: dict[str, tuple[relax.GlobalVar, list]] = {}  # shared by uses of one weight
        self.dispatchers: set[relax.GlobalVar] = set()  # Relax functions choosing a kernel by the row count

    def _bound(self, e):
        """The expression a variable is bound to (the matcher looks through bindings), else ``e``."""
        if isinstance(e, relax.Var):
            bound = self.lookup_binding(e)
            if bound is not None:
                return bound
        return e

    def _weight(self, e) -> tuple[tvm.ir.GenericConst, bool] | None:
        """(the constant holding the ONNX-layout weight, transposed?) if ``e`` is a constant or a 2-D transpose of one."""
        e = self._bound(e)
        if isinstance(e, tvm.ir.GenericConst):
            return e, False
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.permute_dims":
            inner = self._bound(e.args[0])
            if isinstance(inner, tvm.ir.GenericConst) and len(inner.value.shape) == 2:
                axes = e.attrs.axes
                if axes is None or [int(a) for a in axes] == [1, 0]:
                    return inner, True
        return None

    def _use(self, call, op: str) -> WeightUse | None:
        found = self._weight(call.args[1])
        if found is None:
            return None  # activation @ activation (attention), not a weight
        constant, transposed = found
        weight = constant.value.numpy()
        name = self.model.weight_name(constant) or f"unnamed_weight_{len(self.uses)}"
        spec = _conv_spec(call) if op == "conv2d" else None
        use = WeightUse(name, op, weight, transposed, groups=spec.groups if spec else 1)
        if call.args[0].ty.dtype != "float32" or weight.dtype != np.float32:
            use.unsupported = f"dtype {call.args[0].ty.dtype}/{weight.dtype} (only float32 is encoded)"
        elif op == "matmul" and weight.ndim != 2:
            use.unsupported = f"{weight.ndim}-D weight (only 2-D matmul weights are encoded)"
        elif op == "conv2d" and spec is None:
            use.unsupported = "conv layout other than NCHW/OIHW"
        elif use.groups != 1 and self.target.kind.name != "llvm":
            use.unsupported = f"grouped conv ({use.groups} groups): only the CPU's decode + conv takes it"
        self.uses.setdefault(name, use)
        return use

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        op = {"relax.matmul": "matmul", "relax.nn.conv2d": "conv2d"}.get(
            call.op.name if isinstance(call.op, tvm.ir.Op) else None
        )
        use = self._use(call, op) if op else None
        if use is None or self.decisions is None:
            return call
        if use.name not in self.decisions and not self._gets_dense_kernel(use):
            return call
        if use.name in self.programs:
            index, program = self.programs[use.name]
            if op == "conv2d":
                return bitvert.offload(call.args[0], program, index, _conv_spec(call), call.ty)
            return self._emit_matmul(call.args[0], lambda x2: bitvert.offload(x2, program, index))
        callee, constants, decodes = self._kernel(use, call)
        if op == "conv2d" and decodes:
            w_ty = relax.TensorType(list(use.weight.shape), "float32")
            w = self.builder_.emit(relax.call_tir(callee, [call.args[0], *constants], out_ty=w_ty))
            return relax.Call(call.op, [call.args[0], w], call.attrs, call.ty_args)
        if op == "conv2d":
            return relax.call_tir(callee, [call.args[0], *constants], out_ty=call.ty)
        n = use.matrix().shape[0]

        def kernel_call(x2):
            if callee in self.dispatchers:
                return relax.Call(callee, [x2, *constants])
            return relax.call_tir(callee, [x2, *constants], out_ty=relax.TensorType([x2.ty.shape.values[0], n], "float32"))

        return self._emit_matmul(call.args[0], kernel_call)

    def _gets_dense_kernel(self, use: WeightUse) -> bool:
        """Whether a weight left dense is a 2-D float32 matmul weight the target has ``codegen.dense_kernel`` for."""
        return use.op == "matmul" and not use.unsupported and codegen.has_dense_kernel(self.target)

    def _kernel(self, use: WeightUse, call):
        """(callee, constants, decodes): a PrimFunc for call_tir (a decode kernel if ``decodes``), or a Relax
        function dispatching on the row count, called with the same constants."""
        if use.name not in self.kernels:
            if use.name in self.decisions:
                codec, enc = self.decisions[use.name]
                kernel = codegen.kernel_for(enc, self.target, _conv_spec(call) if use.op == "conv2d" else None)
            else:
                codec, kernel = "dense", codegen.dense_kernel(use.matrix(), self.target)
            stem = f"{codec.replace('-', '_')}_" + "".join(c if c.isalnum() else "_" for c in use.name)
            constants = [relax.const(c) for c in kernel.constants]
            small = self._add_prim_func(kernel, stem, use.name)
            if kernel.large_batch is None:
                self.kernels[use.name] = small, constants, kernel.decodes
            else:
                large = self._add_prim_func(kernel.large_batch, stem, use.name)
                n, k = use.matrix().shape
                dispatch = _dispatch_by_rows(small, large, kernel.large_batch.decodes, constants, k, n)
                callee = self.builder_.add_func(dispatch, f"{stem}_matmul")
                self.dispatchers.add(callee)
                self.kernels[use.name] = callee, constants, False
        return self.kernels[use.name]

    def _add_prim_func(self, kernel, stem: str, layer: str) -> relax.GlobalVar:
        name = f"{stem}_{kernel.kind}"
        return self.builder_.add_func(kernel.func.with_attrs({"global_symbol": name, codegen.LAYER_ATTR: layer}), name)

    def _emit_matmul(self, x, matmul_2d):
        """``matmul_2d(x2)`` on ``x`` with its leading dims flattened into rows, reshaped back."""
        lead = list(x.ty.shape.values)[:-1]
        k = x.ty.shape.values[-1]
        rows = 1
        for d in lead:
            rows = rows * d
        x2 = x if len(lead) == 1 else self.builder_.emit(relax.op.reshape(x, [rows, k]))
        out = matmul_2d(x2)
        if len(lead) == 1:
            return out
        out = self.builder_.emit(out)
        return relax.op.reshape(out, [*lead, out.ty.shape.values[-1]])

    def run(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


class EncodeWeights:
    """Module pass: encode every eligible weight per the policy; what it did is in ``records``."""

    def __init__(self, model: ImportedModel, policy: EncodingPolicy, target, progress=lambda msg: None,
                 activation_scales=None, calibrations=None):
        """``activation_scales(weight names) -> {name: scale}``: the calibrated INT8 scale of the activation
        each named weight multiplies; the bitvert target needs it for the weights it offloads.
        ``calibrations(weight names) -> {name: codecs.feedback.Calibration}``: the layers' calibration
        statistics; given, codecs that take them round with error feedback."""
        self.model, self.policy, self.target, self.progress = model, policy, target, progress
        self.activation_scales = activation_scales
        self.calibrations = calibrations
        self.records: list[LayerRecord] = []
        self.offloaded: list[tuple[str, dict]] = []  # (name, weight profile per accelerator), by layer index

    def _fallback(self, use: WeightUse, codec: str | None, config) -> str | None:
        if use.unsupported:
            return use.unsupported
        if codec is None:
            return config  # the policy's reason
        if not codegen.has_kernel(codec, use.op, self.target):
            return f"{codec} has no {use.op} kernel for {self.target.kind.name} yet"
        return None

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        collector = _WeightRewriter(mod, self.model, self.target)
        collector.run()
        uses = list(collector.uses.values())
        choices = {u.name: self.policy.choose(u.name, u.weight.size) for u in uses}
        reasons = {u.name: self._fallback(u, *choices[u.name]) for u in uses}
        configs = self._plan({u.name: u for u in uses if reasons[u.name] is None}, choices)
        fed = [u.name for u in uses if reasons[u.name] is None and codecs.takes_calibration(choices[u.name][0])]
        calibrations = self.calibrations(fed) if self.calibrations and fed else {}
        decisions, self.records = {}, []
        for use in uses:
            record = LayerRecord(name=use.name, op=use.op, shape=list(use.weight.shape), codec="dense",
                                 bytes_dense=int(use.weight.nbytes), bytes_encoded=int(use.weight.nbytes),
                                 fallback_reason=reasons[use.name], transposed=use.transposed)
            if reasons[use.name] is None:
                codec, config = choices[use.name][0], configs[use.name]
                enc = self._encode(use, codec, config, calibrations.get(use.name))
                if enc.nbytes >= use.weight.nbytes:  # e.g. a depthwise conv's K = 9 in a format padding K to 128
                    record.fallback_reason = (f"{codec} encoding is no smaller than dense ({enc.bits_per_weight:.1f} "
                                              f"bits/weight at K = {use.matrix().shape[1]})")
                    self.records.append(record)
                    continue
                decisions[use.name] = codec, enc
                module = codecs.get_codec(codec)
                record.codec, record.bytes_encoded = codec, enc.nbytes
                record.config, record.encoded_sha256 = codecs.config_dict(config), enc.sha256()
                record.details = {**(module.report(enc) if hasattr(module, "report") else {}),
                                  **{f"header.{k}": v for k, v in enc.header.items()}}
                if self.calibrations:
                    record.details.update(codecs.feedback_report(codec, use.matrix(), config,
                                                                 calibrations.get(use.name), enc))
            self.records.append(record)
        programs = self._offload({u.name: u for u in uses}, decisions)
        mod = _WeightRewriter(mod, self.model, self.target, decisions, programs).run()
        return relax.transform.DeadCodeElimination()(mod)

    def _offload(self, uses: dict[str, WeightUse], decisions) -> dict:
        """On the bitvert target: name -> (layer index, Program) of the bbs weights, their profiles in ``offloaded``."""
        # grouped convs stay on the host (decode + conv): the device's conv has no groups
        names = [name for name, (codec, _) in decisions.items() if codec == bbs.NAME and uses[name].groups == 1]
        if not bitvert.is_bitvert(self.target) or not names:
            return {}
        if self.activation_scales is None:
            raise ValueError("the bitvert target needs activation_scales to offload layers")
        self.progress(f"calibrating the activations of {len(names)} offloaded layer(s)")
        scales = self.activation_scales(names)
        programs, self.offloaded = {}, []
        by_name = {r.name: r for r in self.records}
        for index, name in enumerate(names):
            enc = decisions[name][1]
            self.progress(f"building the BitVert program of {name}")
            program = bitvert.program(enc, scales[name], name)
            programs[name] = index, program
            self.offloaded.append((name, bitvert.layer_profiles(name, uses[name].matrix(), enc, program)))
            by_name[name].details.update({"offloaded_to": "bitvert", "activation_scale": program.x_scale})
        return programs

    def _plan(self, eligible: dict[str, WeightUse], choices) -> dict[str, object]:
        """Per-layer configs; codecs with a ``plan(matrices, configs)`` hook decide over all their layers at once."""
        configs = {name: choices[name][1] for name in eligible}
        for codec in sorted({choices[name][0] for name in eligible}):
            module = codecs.get_codec(codec)
            names = [n for n in eligible if choices[n][0] == codec]
            if hasattr(module, "plan"):
                self.progress(f"planning {len(names)} {codec} layer(s) over the whole model")
                configs.update(module.plan({n: eligible[n].matrix() for n in names}, {n: configs[n] for n in names}))
        return configs

    def _encode(self, use: WeightUse, codec: str, config, calibration=None):
        how = " and error feedback" if calibration is not None else ""
        self.progress(f"encoding {use.name} {list(use.weight.shape)} with {codec}{how}")
        try:
            return codecs.encode(codec, use.matrix(), config, calibration)
        except CodecError as e:
            raise CodecError(f"weight {use.name!r}: {e}") from None

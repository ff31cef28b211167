"""LiftConstants: move the tensor constants of ``main`` out of the code, into trailing parameters.

A Relax VM executable keeps its constants in a pool inside the shared library, so the weights
could only be checked by running that library. After this pass ``main`` takes
``(*inputs, *weights)``: the build writes the weights to a data file that the runtime reads,
checks and passes back on every call (``runtime/weights_file.py``). Identical constants become
one parameter. Scalars stay in the code: they are part of the arithmetic, not data.

Run it last before lowering (after ``FoldConstant`` and the schedules): a lifted constant can no
longer be folded. Constants of other Relax functions stay where they are; the encoding pass
passes its constants into the functions it creates, so ``main`` holds all of a model's weights.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

LIFTED_ATTR = "bie.lifted_constants"  # on the module: the lifted constants, in parameter order
NUM_INPUT_ATTR = "num_input"  # on main: the parameters before the weights (TVM's own convention)


@mutator
class _Lifter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.params: list[relax.Var] = []
        self.constants: list = []
        self._by_content: dict[int, list[int]] = {}  # structural hash -> indices into constants

    def visit_generic_const_(self, const):
        if len(const.value.shape) == 0:
            return const
        bucket = self._by_content.setdefault(tvm_ffi.structural_hash(const), [])
        for i in bucket:
            if tvm_ffi.structural_equal(self.constants[i], const):
                return self.params[i]
        bucket.append(len(self.constants))
        self.constants.append(const)
        self.params.append(relax.Var(f"weight{len(self.params)}", const.ty))
        return self.params[-1]


@tvm.transform.module_pass(opt_level=0, name="LiftConstants")
class LiftConstants:
    """Module pass: ``main(*inputs)`` becomes ``main(*inputs, *weights)``; the weights' constants are the
    module attribute ``bie.lifted_constants`` (see :func:`lifted_constants`)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not any(gv.name_hint == "main" for gv in mod.get_global_vars()):
            return mod  # a library of functions, not a model: nothing to lift
        main = mod["main"]
        lifter = _Lifter(mod)
        body = lifter.visit_expr(main.body)
        inputs = list(main.params)
        lifted = relax.Function(inputs + lifter.params, body, main.ret_ty, main.is_pure, main.attrs, main.span)
        mod = mod.clone()
        mod["main"] = lifted.with_attr(NUM_INPUT_ATTR, len(inputs))
        return mod.with_attr(LIFTED_ATTR, lifter.constants)


def lifted_constants(mod: tvm.IRModule) -> list:
    """The constants :class:`LiftConstants` moved out of ``main``, in the order ``main`` takes them."""
    return list(mod.attrs[LIFTED_ATTR]) if mod.attrs is not None and LIFTED_ATTR in mod.attrs else []

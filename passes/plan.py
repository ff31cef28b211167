"""The encoding plan: every weight's codec, config and encoding, decided before any IR is rewritten.

Codecs decide over the whole model (which channels are sensitive, how to split a
bits budget), so the planner sees every weight use first: it applies the policy,
runs the codecs' ``plan`` hooks, gathers calibration statistics for the codecs
that round with error feedback, and encodes. ``EncodeWeights`` then only rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import tvm

from bie_compiler import codecs, codegen
from bie_compiler.codecs import Encoded, parallel
from bie_compiler.codecs.stored import LazyMapping, StoredWeight
from bie_compiler.codegen import bitvert
from bie_compiler.codegen.target import describe
from bie_compiler.errors import OptionError
from bie_compiler.progress import Reporter
from bie_compiler.report import LayerRecord

from .policy import EncodingPolicy
from .weight_uses import WeightUse, collect_weight_uses


@dataclass
class EncodingPlan:
    """What ``EncodeWeights`` does to a module, and the per-layer records of the manifest."""

    target: tvm.target.Target
    names: dict  # weight constant -> its name
    uses: dict[str, WeightUse]  # by name
    records: list[LayerRecord]  # one per weight, in the order of the calls
    encoded: dict[str, tuple[str, Encoded]]  # name -> (codec, encoding) of the weights to encode
    kernel_options: dict[str, dict]  # name -> the codec options choosing its kernel (codecs.kernel_options)
    dense_kernels: frozenset[str]  # weights left dense that get the target's dense kernel


def plan_encoding(mod: tvm.IRModule, names: Mapping, policy: EncodingPolicy, target: tvm.target.Target,
                  calibrations: Callable[[list[str]], dict] | None = None, report: Reporter = Reporter(),
                  jobs: int | None = None, stored: Mapping[str, StoredWeight] | None = None,
                  ray: str | None = None) -> EncodingPlan:
    """The plan for ``mod`` whose weight constants are named by ``names``.

    ``calibrations(weight names, sensitive) -> {name: codecs.feedback.Calibration}``: the layers' calibration
    statistics (``sensitive``: with each layer's measured sensitivity, which a bits budget's split needs);
    given, codecs that take them round with error feedback and budgets are split by sensitivity. ``report``: the compile's progress.
    ``jobs``: processes encoding layers at once (None: every core when the model is large enough to pay,
    :mod:`bie_compiler.codecs.parallel`); the bytes are the same whatever it is. ``stored``: the weights read
    from their data files rather than from their constants (by name), one at a time, by the process encoding them.
    ``ray``: the address of a Ray cluster that encodes the layers (``jobs`` at once; None: one per cluster CPU)."""
    found, names = collect_weight_uses(mod, names)
    uses_by_name = {u.name: u for u in found}
    for use in found:
        use.stored = (stored or {}).get(use.name)
    asked = {u.name: policy.choose(u.name, u.size) for u in found}
    choices = {name: (codec, codecs.for_op(config, uses_by_name[name].op) if codec else config)
               for name, (codec, config) in asked.items()}
    _check_rotation(choices, target)
    reasons = {u.name: _fallback(u, *choices[u.name], target) for u in found}
    # a table its codec has no gather kernel for stays what it was: one of the other weights, with its reason
    found = [u for u in found if u.op != "gather" or reasons[u.name] is None]
    uses = {u.name: u for u in found}
    eligible = {name: u for name, u in uses.items() if reasons[name] is None}
    # error feedback needs a layer's inputs; a table's are indices: its rows are rounded to nearest
    fed = [name for name, u in eligible.items() if codecs.takes_calibration(choices[name][0]) and u.op != "gather"]
    sensitive = any(codecs.splits_budget(choices[name][1]) for name in fed)
    statistics = calibrations(fed, sensitive) if calibrations and fed else {}
    if jobs is None and ray is None:
        jobs = parallel.default_jobs(sum(u.size for u in eligible.values()))
    configs = _configs(eligible, choices, statistics, report, parallel.Workers(jobs, ray))
    records, encoded, kernel_options = [], {}, {}
    position = {name: i for i, name in enumerate(eligible, 1)}  # for the per-layer progress
    tasks = LazyMapping(eligible, lambda name: (choices[name][0], uses[name].task_matrix(), configs[name],
                                                statistics.get(name)), {name: u.size for name, u in eligible.items()})

    def started(name: str) -> None:
        how = " and error feedback" if statistics.get(name) is not None else ""
        report("encode", f"encoding {name} {list(uses[name].shape)} with {choices[name][0]}{how}",
               position[name], len(eligible))

    encodings = parallel.encode_many(tasks, jobs, started, ray)
    for use in found:
        record = LayerRecord(name=use.name, op=use.op, shape=list(use.shape), codec="dense",
                             bytes_dense=int(use.nbytes), bytes_encoded=int(use.nbytes),
                             fallback_reason=reasons[use.name], transposed=use.transposed)
        records.append(record)
        if use.name not in eligible:
            continue
        codec, config = choices[use.name][0], configs[use.name]
        enc = encodings[use.name]
        record.fallback_reason = codecs.no_saving(codec, enc, use.nbytes)
        if record.fallback_reason:
            continue
        encoded[use.name] = codec, enc
        kernel_options[use.name] = codecs.kernel_options(config)
        module = codecs.get_codec(codec)
        record.codec, record.bytes_encoded = codec, enc.nbytes
        record.config, record.encoded_sha256 = codecs.config_dict(config), enc.sha256()
        record.details = {**(module.report(enc) if hasattr(module, "report") else {}),
                          **{f"header.{k}": v for k, v in enc.header.items()}}
        if calibrations:
            record.details.update(codecs.feedback_report(codec, use.matrix(), config, statistics.get(use.name), enc))
        record.details.update({f"kernel.{name}": why for name, why in codecs.kernel_fallbacks(config).items()})
        if target.kind.name == "llvm":  # the CPU kernels' choices (the GPU's kernels take no such field)
            record.details.update({f"kernel.{name}": how
                                   for name, how in codecs.kernel_choices(codec, config, enc, use.op).items()})
        if asked[use.name][1].rotate and not config.rotate:
            record.details["rotation"] = f"none: only matmul inputs are rotated, this is a {use.op}"
    dense = frozenset(name for name, u in uses.items() if name not in encoded and u.op == "matmul"
                      and not u.unsupported and codegen.has_dense_kernel(target))
    return EncodingPlan(target, names, uses, records, encoded, kernel_options, dense)


def _fallback(use: WeightUse, codec: str | None, config, target: tvm.target.Target) -> str | None:
    """Why ``use`` stays dense on ``target`` (None: it is encoded with ``codec``)."""
    if use.unsupported:
        return use.unsupported
    if use.groups != 1 and target.kind.name != "llvm":
        return f"grouped conv ({use.groups} groups): only the CPU's decode + conv takes it"
    if codec is None:
        return config  # the policy's reason
    if not codegen.has_kernel(codec, use.op, target):
        return f"{codec} has no {use.op} kernel for {target.kind.name} yet"
    return None


def _configs(eligible: dict[str, WeightUse], choices, statistics: dict, report: Reporter,
             workers: parallel.Workers) -> dict[str, object]:
    """Per-layer configs; codecs with a ``plan(matrices, configs, calibrations, workers)`` hook decide over all
    their layers at once (reading each matrix as they come to it, or in the worker measuring it: a large model's
    weights are not all in memory at once)."""
    configs = {name: choices[name][1] for name in eligible}
    for codec in sorted({choices[name][0] for name in eligible}):
        names = [n for n in eligible if choices[n][0] == codec]
        if hasattr(codecs.get_codec(codec), "plan"):
            report("plan", f"planning {len(names)} {codec} layer(s) over the whole model")
            matrices = LazyMapping(names, lambda n: eligible[n].task_matrix(),  # read one at a time
                                   {n: eligible[n].size for n in names})
            configs.update(codecs.plan(codec, matrices, {n: configs[n] for n in names},
                                       {n: statistics[n] for n in names if n in statistics}, workers))
    return configs


def _check_rotation(choices: dict, target: tvm.target.Target) -> None:
    """Refuse ``rotate`` where no kernel undoes it: the Walsh-Hadamard kernel of the activations is CPU code, and
    the BitVert device takes the activations as they are."""
    rotating = sorted(name for name, (codec, config) in choices.items() if codec and config.rotate)
    if rotating and (target.kind.name != "llvm" or bitvert.is_bitvert(target)):
        raise OptionError(f"--rotate needs the llvm target (the activations' Walsh-Hadamard kernel is CPU code, the "
                          f"BitVert device takes them unrotated), not {describe(target)['kind']}; it was asked for "
                          f"{len(rotating)} layer(s), e.g. {rotating[0]!r}")

"""Parallel loops over little work run serially.

Each parallel loop is a parallel region: the calling thread hands the pool's workers their shares and
waits for the last of them. Between the kernels of a call the workers poll briefly instead of sleeping
(``runtime/threads.py``), so a region costs a few microseconds of hand-off rather than a wake-up; a region
whose work takes less than that is faster on the calling thread alone, and a small model (the bundled cnn,
a transformer at one token) is mostly such regions.

The work of a loop nest is estimated on the lowered TIR, where vector loops are single statements and
unrolled loops their copies: the operations of the statements it executes (loads, arithmetic, casts,
selects: roughly its instructions; a weight decoded from bit planes costs many per vector, a dense
FMA few), plus the 4-byte words of the buffers it touches (what it streams through the caches: a dense
GEMV does one vector FMA per 16 weights but reads every weight from memory once). A loop whose work
is a constant below its bound becomes serial; one whose work depends on a symbolic size (batch,
sequence length) is kept twice, chosen at run time by its work, so one kernel runs serially at one
token and in parallel at 128.

Words streamed from memory cost more than cached ones, and a second thread brings its own bandwidth:
a GEMV over a weight that is not in the caches when it runs is worth splitting even when its
operations are few. The weights of a model larger than one core's L2 are evicted between the
kernels that read them (each is read once per call), so :func:`mark_streamed_weights` names the
weight parameters of the encoded and dense matmul kernels of such a model (``STREAMED_ATTR``), and
their words count ``STREAMED_WORD`` times; a small model's weights (the bundled transformer and mlp)
stay in L2 from one call to the next and count as any other word. A loop's cost is then the larger of
its operations and its streamed words, not their sum, plus its cached words: one thread reads the
stream while it computes (the one-row GEMVs prefetch it, out-of-order execution overlaps the rest), so
it takes about as long as the slower of the two; what it writes and reads besides (a decoded weight, the
activations) adds. Buffers that view one memory (a kernel's weight declared again as a flat stream)
count once. A loop that reads streamed weights is held to the larger ``STREAMED_SERIAL_WORK``: split, a short
stream gains less than its data's trips between the cores cost the kernels around it.

The bound a loop's cost must reach grows with its hand-off (:func:`handoff`): the words of the kernel's own
scratch buffers (allocated once per call) written before the loop that the loop touches, such as the
activation tables a look-up-table GEMV fills on the calling thread and every task reads. A second thread has
to fetch them from the first one's cache, which a single thread never does. What the calling thread writes
after the loop (a fused epilogue's output over the accumulator the tasks filled) hands nothing to them.
"""

from __future__ import annotations

import tvm
import tvm.sym
import tvm_ffi
from tvm import tirx
import tvm.ir.prim.expr as P
from tvm.ir.expr import Call, TensorLoad
from tvm.tirx.buffer import BufferType
from tvm.tirx import stmt as s

from .kernel_registry import is_per_call_kernel
from .tir_nodes import collected, substituted

# Cost (operations and words touched, see cost()) below which a loop runs serially, with the pool's workers polling
# between kernels. Timed alone (each model built with every loop split and with none), kernels of 9-120 k mostly ran
# slower split and GEMMs, GEMVs and convs from 160 k faster; but in whole models a split kernel whose neighbours run
# on one thread hands its data between the cores, and the bundled models at batch 8 and mobilenet at batch 1 ran
# fastest with every loop from 2^15 split (in-process A/B against 2^17 and the 2^20 of sleeping workers;
# benchmarks/README.md, stop 19).
SERIAL_WORK = 1 << 15
# The bound for a loop that reads streamed weights (mark_streamed_weights: a model larger than the L2): a one-row GEMV
# over a weight of 147 KB (the encoder's int8 384x384, 295 k as streamed words) made the whole call 7 % slower split
# (in-process A/B, the encoder at one token: 0.63-0.70 against 0.68-0.75 ms) where it ran 7.3 -> 5.8 us alone; the
# stop-13 and stop-18 A/Bs gained from splitting streams of 590 KB and more (1.2 M), none from 415 KB.
STREAMED_SERIAL_WORK = 1 << 20
# Cost of a word of scratch handed from the calling thread to the tasks (see handoff()), in the units of SERIAL_WORK:
# the look-up-table GEMVs at one token (K = 384: tables and padded activations of 3 k words; K = 1536: 12 k) took
# 10-18 us and 27-29 us longer on two threads than on one, 64-170 units a word at their 28 k units a microsecond.
HANDOFF_WORD = 256
# Weights of a model above this many bytes are streamed from memory (or the shared L3) by every call: one core's L2.
CACHED_WEIGHT_BYTES = 2 << 20
# Cost of a 4-byte word streamed from memory, in the units of SERIAL_WORK (an operation or a cached word): a kernel
# streaming more than about 512 KB is split. In a quiet A/B of the encoder at one token, splitting its FFN GEMVs
# saved time where each streams 590 KB (int8) or 2.4 MB (dense), nothing where it streams 415 KB (bbs).
STREAMED_WORD = 8
# On a PrimFunc: the names of its buffer parameters that are streamed weights (see mark_streamed_weights).
STREAMED_ATTR = "bie.streamed_buffers"
BUFFER_DATA = "tirx.buffer_data"  # the op of ``buffer.data``: a buffer declared over another's memory
IF_THEN_ELSE = "prim.if_then_else"  # a value selected by a condition (only the chosen one is computed)
LIKELY = "prim.likely"  # a condition marked as usually true

# Expression nodes that cost an instruction or so (variables, constants and vector index ramps do not).
OPERATIONS = (P.Add, P.Sub, P.Mul, P.Div, P.Mod, P.FloorDiv, P.FloorMod, P.Min, P.Max, P.EQ, P.NE, P.LT, P.LE, P.GT,
              P.GE, P.And, P.Or, P.Not, P.BitwiseAnd, P.BitwiseOr, P.BitwiseXor, P.BitwiseNot, P.LShift, P.RShift,
              P.Cast, P.Select, P.Shuffle, TensorLoad, Call)


def work(stmt, bound: dict | None = None) -> tirx.PrimExpr:
    """Operations ``stmt`` executes: loop extents times their bodies, sums over sequences, the larger branch.

    Variables bound inside ``stmt`` (common subexpressions) are replaced by their values in ``bound``, so the result
    can be evaluated outside it. A loop whose body's work depends on its variable counts the body at the middle
    iteration; a tail guard in its body (``v + offset < end``, a statement or a selected value) counts its guarded
    work only for the iterations it lets through: a scalar tail of 16 lanes over one remaining element costs one.
    """
    bound = {} if bound is None else bound
    if isinstance(stmt, s.For):
        extent = _int64(substituted(stmt.extent, bound))
        total = extent * work(stmt.body, bound)
        for condition, guarded in _guards(stmt.body, bound):
            through = _iterations_through(substituted(condition, bound), stmt.loop_var, extent)
            if through is not None:
                total = total - (extent - through) * guarded
        middle = tirx.FloorDiv(extent - tirx.IntImm("int64", 1), tirx.IntImm("int64", 2))
        return substituted(total, {stmt.loop_var: middle.astype(stmt.loop_var.ty)})
    if isinstance(stmt, s.SeqStmt):
        total = tirx.IntImm("int64", 0)
        for part in stmt.seq:
            if isinstance(part, s.Bind):
                bound[part.var] = substituted(part.value, bound)
            total = total + work(part, bound)
        return total
    if isinstance(stmt, s.IfThenElse):
        then = work(stmt.then_case, bound)
        return then if stmt.else_case is None else tirx.Max(then, work(stmt.else_case, bound))
    if hasattr(stmt, "body"):  # attributes, a while loop (counted once)
        return work(stmt.body, bound)
    # A store or a call does work; a binding, a buffer declaration or an allocation names it.
    if isinstance(stmt, s.BufferStore):
        return tirx.IntImm("int64", 1 + operations(stmt.value))
    return tirx.IntImm("int64", 1 if isinstance(stmt, s.Evaluate) else 0)


def _guards(body, bound: dict) -> list:
    """(condition, work it guards) of the guards at the top of a loop body: statements without an else, and the
    values that stores select (``if_then_else``) by a condition."""
    found = []
    for part in body.seq if isinstance(body, s.SeqStmt) else [body]:
        if isinstance(part, s.IfThenElse) and part.else_case is None:
            found.append((part.condition, work(part.then_case, dict(bound))))
        elif isinstance(part, s.BufferStore):
            found.extend((call.args[0], tirx.IntImm("int64", operations(call.args[1])))
                         for call in collected(part.value, Call) if getattr(call.op, "name", "") == IF_THEN_ELSE)
    return found


def _iterations_through(condition, var, extent) -> tirx.PrimExpr | None:
    """Of the iterations ``var`` = 0 .. ``extent`` - 1, how many pass ``condition`` when it reads ``var + offset <
    end``; else None."""
    if isinstance(condition, Call) and getattr(condition.op, "name", "") == LIKELY:
        condition = condition.args[0]
    if not isinstance(condition, P.LT):
        return None
    analyzer = tvm.sym.Analyzer()
    offset = substituted(condition.a, {var: tirx.const(0, var.ty)})
    if not analyzer.can_prove_equal(condition.a - offset, var):
        return None
    end = _int64(condition.b - offset)
    return tirx.Min(tirx.Max(end, tirx.IntImm("int64", 0)), extent)


def operations(expr) -> int:
    """The :data:`OPERATIONS` nodes in ``expr``."""
    return len(collected(expr, OPERATIONS))


def footprint(stmt, streamed: frozenset = frozenset(),
              views: dict | None = None) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """(cached, streamed): 4-byte words of the distinct memory ``stmt`` loads from or stores to, the buffers declared
    inside it (register tiles, per-task scratch) left out; a buffer named in ``streamed`` is streamed. ``views``
    (:func:`memory_views`): buffer -> the buffer whose memory it views; the views of one memory count once, as
    that buffer, streamed if any of them is named in ``streamed``."""
    cached, streaming = tirx.IntImm("int64", 0), tirx.IntImm("int64", 0)
    for memory, seen in _memories(stmt, views or {}).items():
        if _streamed(memory, seen, streamed):
            streaming = streaming + _words(memory)
        else:
            cached = cached + _words(memory)
    return cached, streaming


def handoff(loop, func_body, views: dict | None = None) -> tirx.PrimExpr:
    """4-byte words that ``loop`` touches of the scratch ``func_body`` allocates (once per call) and writes before
    ``loop`` starts: what the calling thread prepared for every task. A store after ``loop`` hands nothing to its
    tasks, unless a loop around both repeats it before ``loop`` runs again. ``views``: :func:`memory_views` (a
    store through a view writes the memory it views)."""
    views = views or {}
    allocated = {node.buffer for node in collected(func_body, s.AllocBuffer)}
    written = _stores_before(func_body, loop.loop_var, _stores(loop, views), views) or {}
    words = tirx.IntImm("int64", 0)
    for memory in _memories(loop, views):
        if memory in allocated and written.get(memory, 0) > 0:
            words = words + _words(memory)
    return words


def _stores_before(stmt, loop_var, inside: dict, views: dict) -> dict | None:
    """Memory -> the stores in ``stmt`` that run before the loop over ``loop_var`` in ``stmt`` (those ahead of it,
    and those of a loop around it that are not ``inside`` it: they precede its next run); None if ``stmt`` does not
    hold the loop."""
    if isinstance(stmt, s.For) and stmt.loop_var.same_as(loop_var):
        return {}
    if isinstance(stmt, s.SeqStmt):
        ahead = {}
        for part in stmt.seq:
            found = _stores_before(part, loop_var, inside, views)
            if found is not None:
                return _merged(ahead, found)
            ahead = _merged(ahead, _stores(part, views))
        return None
    if isinstance(stmt, s.IfThenElse):
        branches = (stmt.then_case, stmt.else_case)
        return next((f for b in branches if b is not None
                     and (f := _stores_before(b, loop_var, inside, views)) is not None), None)
    if not hasattr(stmt, "body"):
        return None
    found = _stores_before(stmt.body, loop_var, inside, views)
    if found is None or not isinstance(stmt, (s.For, s.While)):
        return found
    repeated = {memory: n - inside.get(memory, 0) for memory, n in _stores(stmt.body, views).items()}
    return _merged(found, repeated)


def _merged(a: dict, b: dict) -> dict:
    return {memory: a.get(memory, 0) + b.get(memory, 0) for memory in a.keys() | b.keys()}


def _stores(stmt, views: dict) -> dict:
    """Memory -> the stores to it (through any of its views) in ``stmt``."""
    count = {}
    for store in collected(stmt, s.BufferStore):
        memory = views.get(store.buffer, store.buffer)
        count[memory] = count.get(memory, 0) + 1
    return count


def _memories(stmt, views: dict) -> dict:
    """The memory each buffer that ``stmt`` loads from or stores to (and does not declare) views -> those buffers."""
    touched, local = {}, set()
    for node in collected(stmt, (s.BufferStore, TensorLoad, s.AllocBuffer, s.DeclBuffer)):
        if isinstance(node, (s.AllocBuffer, s.DeclBuffer)):
            local.add(node.buffer)
            continue
        buffer = node.buffer if isinstance(node, s.BufferStore) else node.source
        if isinstance(buffer, tirx.Var) and isinstance(buffer.ty, BufferType):
            touched[buffer] = buffer
    memories = {}
    for buffer in touched.values():
        if buffer not in local:
            memories.setdefault(views.get(buffer, buffer), []).append(buffer)
    return memories


def _streamed(memory, views_of_it: list, streamed: frozenset) -> bool:
    """Whether ``memory`` is a streamed weight: it or one of the buffers viewing it is named in ``streamed``."""
    return any(b.name in streamed for b in [memory, *views_of_it])


def _words(buffer) -> tirx.PrimExpr:
    bits = tirx.IntImm("int64", tvm.runtime.DataType(buffer.dtype).bits)
    for extent in buffer.shape:
        bits = bits * _int64(extent)
    return tirx.FloorDiv(bits, tirx.IntImm("int64", 32))


def memory_views(func_body) -> dict:
    """Buffer -> the buffer whose memory it views (``T.decl_buffer(..., data=other.data)``, followed to the first),
    for the buffers of ``func_body`` declared over another's memory."""
    viewed = {}
    for node in collected(func_body, s.DeclBuffer):
        data = node.data
        if (isinstance(data, Call) and getattr(data.op, "name", "") == BUFFER_DATA
                and isinstance(data.args[0], tirx.Var)):
            viewed[node.buffer] = data.args[0]
    views = {}
    for buffer, memory in viewed.items():
        while memory in viewed:
            memory = viewed[memory]
        views[buffer] = memory
    return views


def cost(loop, streamed: frozenset = frozenset(), views: dict | None = None) -> tirx.PrimExpr:
    """What ``loop`` costs one thread, in the units of SERIAL_WORK: the larger of its :func:`work` and
    ``STREAMED_WORD`` per streamed word, plus its cached words (:func:`footprint`; see the module docstring)."""
    cached, streaming = footprint(loop, streamed, views)
    return tirx.Max(work(loop), streaming * STREAMED_WORD) + cached


def _int64(expr: tirx.PrimExpr) -> tirx.PrimExpr:
    return expr if str(expr.ty) == "int64" else expr.astype("int64")


def _defined_inside(stmt) -> set:
    """Variables that loops and bindings inside ``stmt`` define."""
    return {node.loop_var if isinstance(node, s.For) else node.var for node in collected(stmt, (s.For, s.Bind))}


def mark_streamed_weights(mod: tvm.IRModule, weight_bytes: int) -> tvm.IRModule:
    """``mod`` with the weight parameters of its kernels named in ``STREAMED_ATTR``, when the model's weights
    (``weight_bytes``) are more than the L2 holds; else ``mod``.

    A kernel (``KERNEL_ATTR``) is ``f(x, *constants, out)`` (``kernel_registry``): its constants are weights. The
    attribute names buffers, not positions: the lowered function (what :func:`serial_when_small` sees) takes its
    arguments packed, and its buffers keep the parameters' names."""
    if weight_bytes <= CACHED_WEIGHT_BYTES:
        return mod
    mod = mod.clone()
    for gv, func in list(mod.functions_items()):
        if is_per_call_kernel(func):
            mod[gv] = func.with_attr(STREAMED_ATTR, [param.name for param in list(func.params)[1:-1]])
    return mod


def serial_when_small(func: tirx.PrimFunc, threshold: int = SERIAL_WORK) -> tirx.PrimFunc:
    """``func`` with each parallel loop serial below ``threshold`` (``STREAMED_SERIAL_WORK`` if higher, for a loop
    that reads a buffer ``STREAMED_ATTR`` names) plus ``HANDOFF_WORD`` per word of its :func:`handoff` in
    :func:`cost`."""
    analyzer = tvm.sym.Analyzer()
    streamed = frozenset(str(name) for name in (func.attrs or {}).get(STREAMED_ATTR, []))
    views = memory_views(func.body)

    def rewrite(loop):
        if not isinstance(loop, s.For) or loop.kind != s.ForKind.PARALLEL:
            return loop
        amount = analyzer.simplify(cost(loop, streamed, views) - HANDOFF_WORD * handoff(loop, func.body, views))
        streams = any(_streamed(memory, seen, streamed) for memory, seen in _memories(loop, views).items())
        bound = max(threshold, STREAMED_SERIAL_WORK) if streams else threshold
        if set(tirx.analysis.undefined_vars(amount)) & _defined_inside(loop):  # not known before the loop starts
            return loop
        serial = s.For(loop.loop_var, loop.min, loop.extent, s.ForKind.SERIAL, loop.body, None, loop.annotations,
                       loop.step)
        if isinstance(amount, tirx.IntImm):
            return serial if amount.value < bound else loop
        return s.IfThenElse(amount < bound, serial, loop)

    body = tvm_ffi.structural_map(func.body, [(s.For, rewrite)], order="post")
    return func if body.same_as(func.body) else func.with_body(body)

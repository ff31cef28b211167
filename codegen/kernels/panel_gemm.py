"""Encoded matmuls above one row: each panel of the weight decoded once per call, consumed by the dense micro-kernel.

Above one row an encoded matmul is compute-bound, like the dense one, but
decoding the whole weight into a dense buffer first writes and re-reads it
(tens of MB per model call) and leaves the multiplication to a GEMM over
[K, N]. Here the weight is decoded panel by panel: a panel is ``matmul.COLS``
output channels over all of K, laid out K-major ([K, COLS], the layout
``dense.pack`` stores), decoded into a buffer of that size (the size of one
panel of the dense kernel's packed weight: L1 or L2) at the top of the panel's
parallel iteration, and then every row of activations runs over it in the
register tiles of :func:`..schedules.matmul.schedule_matmul`, the dense GEMM's
own schedule. Each weight is decoded once per call; the decode runs in vectors
along the channels of the panel, where the codecs' arrays hold them contiguously
(K-major panels of 16 or 32 channels), or, where a codec gives :data:`RunWeights`,
a run of 16 channels over a group of K at a time in the codec's own vector code
(the int8 tables' bytes of ``bitplane_lut`` and ``bbs_decoded``: a bit transpose), or, where it gives a :data:`PanelDecode`, a whole panel
in statements of its own (``bie-blocked``'s index lists).

A codec's part is its :func:`decoder`, an unscheduled PrimFunc that the GEMM kernel carries (``DECODER_ATTR``, as
TVMScript text: the script printer cannot print a function among attributes; :func:`carried_decoder` parses it):
:func:`plain` puts the GEMM after it over any leading dims of the rows, so the many-row epilogue fusion
(:mod:`..gemm_epilogues`) builds the same kernel with an elementwise epilogue inlined into the tile write-back.
A codec that computes in a stored order of the channels (``position``) writes each channel of a tile where it
belongs (a scatter at the write-back), so the output needs no gather afterwards.

The decoded value is the codec's reference decoder's (a per-channel scale is
applied to the sums instead), so the result differs from ``x @ decode(enc).T``
by float rounding only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tvm
import tvm.script
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.ir import Range

from ..kernel_registry import KernelCall
from ..schedules import matmul

BLOCK = "panel_gemm"
DECODED = "decoded"
SCALES = "scales_of_channels"
SCALED = "panel_gemm_scaled"
INVERSE = "inverse_position"
SCATTER = "scatter"
VECTOR = 16  # float32 lanes of one AVX-512 vector: the decode's vector width
DECODER_ATTR = "bie.panel_decoder"  # on a panel GEMM kernel: its codec's decoder (see :func:`decoder`), as TVMScript

PanelWeight = Callable[..., tirx.Expr]  # (panel, kk, c) -> weight kk of channel panel * COLS + c
# (holders' and views' buffers, first channel of a run of VECTOR, group) -> [(kk in the group, the run's float32x16
# weights kk)], or (a condition on the run, such a list where it holds, another where not): two layouts' runs. A
# RunBinding item binds a value for the items after it, a RunLoop repeats its items: a value the run's weights
# share is computed, and printed in the decoder's TVMScript, once (the GEMM kernels carry it and parse it again for
# each fused epilogue: see DECODER_ATTR)
RunWeights = Callable[..., list | tuple]


class RunBinding(NamedTuple):
    """An item of a :data:`RunWeights` list: ``var`` bound to ``value`` for the items after it."""
    var: tirx.Var
    value: tirx.Expr


class RunLoop(NamedTuple):
    """An item of a :data:`RunWeights` list: ``items`` (which may use ``var``) for ``var`` in ``range(extent)``."""
    var: tirx.Var
    extent: int
    items: list


# (holders' buffers, decoded [panels, K, COLS], panel) -> the statement that writes the whole panel
PanelDecode = Callable[..., tirx.Stmt]


def by_channel(weight: Callable, n: int, lanes: int) -> PanelWeight:
    """A panel weight from ``weight(channel, kk)``, whose arrays hold channels in runs of ``lanes`` (zero-padded to a
    whole run): the runs past the last one are not read (zero), so a panel never reads past the arrays."""
    cols = matmul.COLS
    readable = -(-n // lanes) * lanes
    if readable % cols == 0:
        return lambda p, kk, c: weight(p * cols + c, kk)

    def guarded(p, kk, c):
        # if_then_else, not Select: only the runs that exist are read. Its condition is the same for a vector of
        # lanes (a run), so the decode stays vectorized.
        value = weight(p * cols + c, kk)
        return tirx.if_then_else(p * cols + c // lanes * lanes < readable, value, tirx.const(0, value.ty))

    return guarded


def word_view(holder: te.Tensor, dtype: str) -> te.Tensor:
    """``holder``'s bytes read as ``dtype`` words (its last dim shrunk to match): one of a :func:`decoder`'s
    ``views``. A decode that needs a channel's consecutive bytes together loads one word per channel, a contiguous
    vector along the channels, where the bytes themselves would be strided loads (one per lane)."""
    width = tvm.DataType(dtype).bits // 8
    return te.placeholder([*holder.shape[:-1], holder.shape[-1] // width], dtype, f"{holder.name}_{dtype}")


def decoder(panel_weight: PanelWeight | None, holders: list[te.Tensor], n: int, k: int, scale: Callable | None = None,
            position: te.Tensor | None = None, group: int | None = None,
            views: list[tuple[te.Tensor, te.Tensor]] = (), runs: RunWeights | None = None,
            unroll: int = 1, panels: PanelDecode | None = None) -> tirx.PrimFunc:
    """Unscheduled ``f(*holders, decoded [panels, K, COLS], [scales [N]])``: W's panels from ``panel_weight`` (a
    number, converted to float32) and, with ``scale``, each channel's scale.

    ``scale(c)``: a channel's scale, applied to the tile's sums as they are written back (the decode reads the
    panels' padding channels, the scales are read for channels that exist only). ``position`` (int32 [N], one of
    ``holders``): the weight's channels are stored rows, output channel ``c`` is stored row ``position[c]``; the
    product (and ``scale``) is in stored order. ``group``: the codec's words hold this many consecutive weights of
    K (bit ``j`` of a word: weight ``j`` of its group); the decode then runs group by group, a run of channels at a
    time, so that each group's words and metadata are loaded once; ``unroll``: that many consecutive weights of a
    group decoded per iteration (unrolled), where one word of the codec's arrays holds them (its load then made
    once for them: LLVM does not unroll every such loop itself). ``views``: (a :func:`word_view`, the holder it
    reads) pairs; a view is a parameter after the holders here, the holder's own memory in :func:`plain`.

    ``runs`` (instead of ``panel_weight``, with ``group``): the codec decodes a run of VECTOR channels over a group
    at once, in vector operations across the lanes that an expression of one weight cannot state (a bit transpose
    of the run's words); its holders hold channels in runs of VECTOR (zero-padded to a whole run). ``decoded`` then
    has K rounded up to whole groups (the GEMM reads the first K).

    ``panels`` (instead of ``panel_weight`` and ``runs``): the codec writes a whole panel in statements of its own
    (index lists: zeros, then each channel's entries), the panel's channels past N included."""
    cols = matmul.COLS
    count = -(-n // cols)
    if runs is None and panels is None:
        decoded = te.compute((count, k, cols), lambda p, kk, c: panel_weight(p, kk, c).astype("float32"),
                             name=DECODED)
    else:  # a placeholder block, replaced by the runs' (_by_runs) or the panels' (_by_panels)
        rows = k if runs is None else -(-k // group) * group
        decoded = te.compute((count, rows, cols), lambda *_: tirx.const(0, "float32"), name=DECODED)
    scales = [] if scale is None else [te.compute((n,), lambda c: scale(c).astype("float32"), name=SCALES)]
    at = -1 if position is None else next(i for i, h in enumerate(holders) if h.same_as(position))
    viewed = [next(i for i, h in enumerate(holders) if h.same_as(holder)) for _, holder in views]
    func = te.create_prim_func([*holders, *(view for view, _ in views), decoded, *scales])
    func = func if runs is None else _by_runs(func, runs, len(holders) + len(views), n, group)
    func = func if panels is None else _by_panels(func, panels, len(holders))
    # bie.runs: the decoded block is the codec's own (runs or panels), not one to vectorize along the channels
    return func.with_attrs({"bie.holders": len(holders), "bie.n": n, "bie.position": at, "bie.group": group or 0,
                            "bie.views": viewed, "bie.runs": runs is not None or panels is not None,
                            "bie.unroll": unroll})


def _by_runs(func: tirx.PrimFunc, runs: RunWeights, count: int, n: int, group: int) -> tirx.PrimFunc:
    """``func`` (a :func:`decoder`'s) with its ``DECODED`` block computed by ``runs``: one block a panel, group and
    run of VECTOR channels, storing the run's vectors of the group's weights (zeros past the holders' last run)."""
    holders, decoded = list(func.params[:count]), next(b for b in func.params if b.name == DECODED)
    panels, _, cols = (int(d) for d in decoded.shape)
    loops, iters = _iterators({"panel": panels, "group": int(decoded.shape[1]) // group, "run": cols // VECTOR})
    p, g, r = (it.var for it in iters)
    first = p * cols + r * VECTOR

    def stores(weights):
        # (kk, value): a store; a RunBinding: a Bind for the statements after it; a RunLoop: a loop
        lanes = tirx.Ramp(r * VECTOR, 1, VECTOR)

        def stmt(item):
            if isinstance(item, RunLoop):
                return tirx.For(item.var, 0, item.extent, tirx.ForKind.SERIAL, stores(item.items))
            if isinstance(item, RunBinding):
                return tirx.Bind(item.var, item.value)
            kk, value = item
            return tirx.BufferStore(decoded, value, [p, g * group + kk, lanes])

        body = [stmt(item) for item in weights]
        return body[0] if len(body) == 1 else tirx.stmt.SeqStmt(body)

    weights = runs(holders, first, g)
    body = (tirx.IfThenElse(weights[0], stores(weights[1]), stores(weights[2])) if isinstance(weights, tuple)
            else stores(weights))
    readable = -(-n // VECTOR) * VECTOR
    if panels * cols > readable:  # the last panel's runs past the holders' are zero
        body = tirx.IfThenElse(first < readable, body, stores(
            [(kk, tirx.Broadcast(tirx.const(0, "float32"), VECTOR)) for kk in range(group)]))
    writes = tirx.BufferRegion(decoded, [Range.from_min_extent(p, 1), Range.from_min_extent(g * group, group),
                                         Range.from_min_extent(r * VECTOR, VECTOR)])
    return _with_decode_block(func, holders, loops, iters, writes, body)


def _by_panels(func: tirx.PrimFunc, panels: PanelDecode, count: int) -> tirx.PrimFunc:
    """``func`` (a :func:`decoder`'s) with its ``DECODED`` block computed by ``panels``: one block a panel."""
    holders, decoded = list(func.params[:count]), next(b for b in func.params if b.name == DECODED)
    panel_count, rows, cols = (int(d) for d in decoded.shape)
    # its rows and columns as iterators of extent 1 too: compute_at places a block by the iterators its region is
    # stated in, in every dimension (a constant range fails its match)
    loops, iters = _iterators({"panel": panel_count, "rows": 1, "cols": 1})
    p, all_rows, all_cols = (it.var for it in iters)
    writes = tirx.BufferRegion(decoded, [Range.from_min_extent(p, 1), Range.from_min_extent(all_rows * rows, rows),
                                         Range.from_min_extent(all_cols * cols, cols)])
    return _with_decode_block(func, holders, loops, iters, writes, panels(holders, decoded, p))


def _iterators(extents: dict[str, int]) -> tuple[list, list]:
    """Serial loop variables and the block's data-parallel iterators over them, one of each per named extent."""
    loops = [tirx.Var(name, "int32") for name in extents]
    iters = [tirx.IterVar(Range(0, e), tirx.Var(f"v_{v.name}", "int32"), tirx.IterVar.DataPar)
             for v, e in zip(loops, extents.values())]
    return loops, iters


def _with_decode_block(func: tirx.PrimFunc, holders: list, loops: list, iters: list, writes: tirx.BufferRegion,
                       body: tirx.Stmt) -> tirx.PrimFunc:
    """``func`` with its ``DECODED`` loop nest replaced by one block of ``body`` under ``loops`` (``iters`` its
    iterators), reading every holder whole and writing ``writes``."""
    reads = [tirx.BufferRegion(h, [Range.from_min_extent(0, d) for d in h.shape]) for h in holders]
    nest = s_tir.SBlockRealize(loops, True, s_tir.SBlock(iters, reads, [writes], DECODED, body))
    for v, it in reversed(list(zip(loops, iters))):
        nest = tirx.For(v, 0, it.dom.extent, tirx.ForKind.SERIAL, nest)
    stmts = _sequence([func.body.block.body])
    stmts = stmts.seq if isinstance(stmts, tirx.stmt.SeqStmt) else [stmts]
    return _with_root(func, [nest if isinstance(stmt, tirx.For) and DECODED in _names(stmt) else stmt
                             for stmt in stmts])


def plain(decode: tirx.PrimFunc, lead: list, k: int) -> tirx.PrimFunc:
    """Unscheduled ``f(x [*lead, K], *holders, out [*lead, N])``: ``decode``'s blocks (:func:`decoder`), then
    ``out[..., c] = x @ W[c] * scale(c)``, written to ``out[..., inverse[c]]`` where the channels are stored rows
    (``inverse``, computed first: the output channel of each stored row)."""
    count, at = int(decode.attrs["bie.holders"]), int(decode.attrs["bie.position"])
    viewed = [int(i) for i in decode.attrs["bie.views"]]
    holders, views = decode.params[:count], decode.params[count:count + len(viewed)]
    decoded, *scales = decode.params[count + len(viewed):]
    n, cols = int(decode.attrs["bie.n"]), int(decoded.shape[-1])
    x = te.placeholder([*lead, k], "float32", "x")
    weight = te.placeholder(list(decoded.shape), "float32", DECODED)
    rk = te.reduce_axis((0, k), "rk")
    def product(*i):
        return te.sum(x[(*i[:-1], rk)] * weight[i[-1] // cols, rk, i[-1] % cols], axis=rk)

    # padded to the panel where there is one panel (int32 columns: the panel loop indexes the decode's int32 panels)
    out = (matmul.padded_product([*lead, n], product, BLOCK, index="int32") if n < cols
           else te.compute([*lead, n], product, name=BLOCK))
    inputs, internal = [x, weight], [decoded]  # internal: what the decode's params stand for, in inputs' order
    if scales:
        scale = te.placeholder((n,), "float32", SCALES)
        product = out
        out = te.compute(out.shape, lambda *i: product(*i) * scale[i[-1]], name=SCALED)
        inputs.append(scale)
        internal.append(scales[0])
    if at >= 0:
        position = te.placeholder((n,), "int32", "position")
        inverse = te.compute((n,), lambda c: c.astype("int32"), name=INVERSE)  # made a scatter below
        stored = out
        out = te.compute(out.shape, lambda *i: stored(*i), name=SCATTER)
        inputs += [position, inverse]
        internal.append(holders[at])
    gemm = te.create_prim_func([*inputs, out])
    gemm = _scattered(gemm, n) if at >= 0 else gemm
    renamed = list(zip(gemm.params[1:1 + len(internal)], internal))

    def rename(var):
        return next((buffer for param, buffer in renamed if param.same_as(var)), var)

    nest = tvm_ffi.structural_map(gemm.body.block.body, (tirx.Var, rename), order="post")
    allocated = list(gemm.params[1 + len(internal):-1]) + [decoded, *scales]  # inverse; decoded, scales
    aliases = [tirx.DeclBuffer(view, data=holders[i].data) for view, i in zip(views, viewed)]  # the holders' memory
    body = s_tir.SBlock([], [], [], "root", _sequence([*aliases, decode.body.block.body, nest]), None,
                        [*allocated, *decode.body.block.alloc_buffers, *gemm.body.block.alloc_buffers])
    # noalias as te.create_prim_func makes every function: without it LLVM reloads a group's words and metadata for
    # each of its weights, and TVM gives no function of the library noalias arguments (see ..cpu)
    func = tirx.PrimFunc([gemm.params[0], *holders, gemm.params[-1]], s_tir.SBlockRealize([], True, body))
    return func.with_attr("tirx.noalias", True)


def _sequence(stmts: list) -> tirx.Stmt:
    """One flat sequence of ``stmts`` (sequences among them spliced in, at any depth)."""
    flat = [s for stmt in stmts for s in (_sequence(list(stmt.seq)).seq if isinstance(stmt, tirx.stmt.SeqStmt)
                                          and len(stmt.seq) > 1 else [stmt])]
    return flat[0] if len(flat) == 1 else tirx.stmt.SeqStmt(flat)


def _with_root(func: tirx.PrimFunc, stmts: list) -> tirx.PrimFunc:
    root = func.body.block
    block = s_tir.SBlock([], [], [], "root", _sequence(stmts), None, root.alloc_buffers)
    return func.with_body(s_tir.SBlockRealize([], True, block))


def _names(stmt) -> set:
    names = set()
    tvm_ffi.structural_map(stmt, [(s_tir.SBlock, lambda b: names.add(b.name_hint) or b)], order="post")
    return names


def _scattered(func: tirx.PrimFunc, n: int) -> tirx.PrimFunc:
    """``func`` with its ``INVERSE`` block writing ``inverse[position[c]] = c`` and its ``SCATTER`` block writing
    row ``r`` of its input to ``out[..., inverse[r]]`` (TE writes at the block's own indices only)."""
    position, inverse = func.params[-3], func.params[-2]

    def clamped(index):  # in bounds as the analysis can see it: no predicate on the write-back's vector lanes
        return tirx.max(tirx.min(index, tirx.const(n - 1, "int32")), tirx.const(0, "int32"))

    def rewrite(block):
        if block.name_hint not in (INVERSE, SCATTER):
            return block
        store = block.body
        *rows, c = store.indices
        source = position if block.name_hint == INVERSE else inverse
        index = tirx.BufferLoad(source, [c])
        reads = [*block.reads, tirx.BufferRegion(source, [Range.from_min_extent(c, 1)])]
        writes = [tirx.BufferRegion(store.buffer, [*(Range.from_min_extent(r, 1) for r in rows),
                                                   Range.from_min_extent(0, n)])]
        body = tirx.BufferStore(store.buffer, store.value, [*rows, clamped(index).astype(c.ty)])
        return s_tir.SBlock(block.iter_vars, reads, writes, block.name_hint, body, block.init, block.alloc_buffers)

    return func.with_body(tvm_ffi.structural_map(func.body, [(s_tir.SBlock, rewrite)], order="post"))


def schedule(func: tirx.PrimFunc, decode: tirx.PrimFunc) -> tirx.PrimFunc:
    """A :func:`plain` kernel (and the elementwise blocks after it) scheduled: the register tiles of
    ``schedule_matmul`` in parallel over the panels, the leading dims and rows inside; each panel decoded at the
    top of its parallel iteration, in vectors along its channels (group by group with ``bie.group``); the stored
    rows' output channels (``inverse``) computed first, serially."""
    # the inverse's loop is set aside while the blocks are inlined: a block reading two buffers produced in the
    # function (the scatter: the tile and the inverse) cannot be inlined into the tile's write-back
    stmts = _sequence([func.body.block.body])
    stmts = list(stmts.seq) if isinstance(stmts, tirx.stmt.SeqStmt) else [stmts]
    aside = [s for s in stmts if _names(s) == {INVERSE}]
    sch = s_tir.Schedule(_with_root(func, [s for s in stmts if _names(s) != {INVERSE}]))
    if any(SCALES in _names(s) for s in stmts):
        sch.compute_inline(sch.get_sblock(SCALES))
    block = sch.get_sblock(BLOCK)
    matmul.schedule_matmul(sch, block, batch_in_task=True)
    panel_loop = sch.get_loops(block)[0]  # the parallel loop over panels; rows of activations run inside it
    decoding = sch.get_sblock(DECODED)
    sch.compute_at(decoding, panel_loop)
    if not decode.attrs["bie.runs"]:  # (a codec's runs are vectors already, see decoder)
        *_, kk, c = sch.get_loops(decoding)  # (kk is not a loop when K is 1)
        runs, lane = sch.split(c, [None, VECTOR])
        group = int(decode.attrs["bie.group"])
        k = int(sch.get(decoding).iter_vars[1].dom.extent)
        if group and k > group:  # a group's words and metadata are loaded and decoded once per run
            groups, kk = sch.split(kk, [None, group])
            sch.reorder(groups, runs, kk, lane)
            unroll = int(decode.attrs["bie.unroll"])
            if unroll > 1:
                sch.unroll(sch.split(kk, [None, unroll])[1])
        sch.vectorize(lane)
        sch.unroll(runs)
    scheduled = sch.mod["main"]
    return _with_root(scheduled, [*aside, scheduled.body.block.body]) if aside else scheduled


def gemm(panel_weight: PanelWeight | None, holders: list[te.Tensor], n: int, k: int, scale: Callable | None = None,
         position: te.Tensor | None = None, group: int | None = None,
         views: list[tuple[te.Tensor, te.Tensor]] = (), runs: RunWeights | None = None,
         unroll: int = 1, panels: PanelDecode | None = None) -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], *holders, out [m, N])``, ``out[:, c] = x @ W[c] * scale(c)``: :func:`plain` after the
    :func:`decoder` of these arguments, carrying it (``DECODER_ATTR``)."""
    decode = decoder(panel_weight, holders, n, k, scale, position, group, views, runs, unroll, panels)
    return schedule(plain(decode, [te.var("m", "int64")], k), decode).with_attr(DECODER_ATTR, decode.script())


def carried_decoder(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The :func:`decoder` a :func:`gemm` kernel carries, else None."""
    attrs = func.attrs or {}
    return tvm.script.from_source(str(attrs[DECODER_ATTR])) if DECODER_ATTR in attrs else None


def with_gemm(small: KernelCall, func: tirx.PrimFunc, kind: str) -> KernelCall:
    """``small`` (the one-row kernel) with ``func`` (a :func:`gemm` over the same constants) above one row."""
    small.large_batch = KernelCall(f"{kind}_gemm", func, small.constants)
    return small

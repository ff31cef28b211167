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
own schedule. Where the rows are one register tile (at most ``matmul.ROWS``: a branch at run time), a decode by
weight or by runs stores no panel: its vectors go to the tile's FMAs in registers as its k loop reaches them
(:func:`schedule`).
Each weight is decoded once per call, as the codec's :data:`Decode` states it:
:class:`ByWeight`, in vectors along the channels of the panel, where the codecs' arrays hold them contiguously
(K-major panels of 16 or 32 channels); :class:`ByRuns`, a run of 16 channels over a group of K at a time in the
codec's own vector code (a bit transpose: the int8 tables' bytes of ``bitplane_lut`` and ``bbs_decoded``, and the
bit columns of :mod:`.column_runs`);
:class:`ByPanels`, a whole panel in statements of its own (``bie-blocked``'s index lists).

A codec's part is its :func:`decoder`, an unscheduled PrimFunc that the GEMM kernel carries (``DECODER_ATTR``, as
TVMScript text: the script printer cannot print a function among attributes; :func:`carried_decoder` gives the
function that text was printed from, or parses it where this process did not make it;
what the schedule needs of the :data:`Decode` travels in its attributes, :class:`DecoderAttrs`):
:func:`plain` puts the GEMM after it over any leading dims of the rows, so the many-row epilogue fusion
(:mod:`..gemm_epilogues`) builds the same kernel with an elementwise epilogue inlined into the tile write-back.
A codec that computes in a stored order of the channels (``position``: ``bbs``'s two runs of rows, each in its
channels' order) has the product written in that order and merged into the output channels after it, in the same
kernel (:func:`_merged`: two loads and a permute per 16 outputs and row), so the output needs no kernel of its own.

The decoded value is the codec's reference decoder's (a per-channel scale is
applied to the sums instead), so the result differs from ``x @ decode(enc).T``
by float rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, NamedTuple

import tvm
import tvm.script
import tvm_ffi
from tvm import s_tir, te, tirx
from tvm.ir import Range
from tvm.ir.expr import TensorLoad, TensorRegion

from ..kernel_registry import KernelCall
from ..layout_memo import Recent
from ..schedules import matmul
from ..tir_nodes import collected, substituted
from .lut import PERMUTE2, supported

BLOCK = "panel_gemm"
DECODED = "decoded"
SCALES = "scales_of_channels"
SCALED = "panel_gemm_scaled"
MERGE = "merge"  # the outputs read from their stored rows (:func:`_merged`)
SMALLEST = "llvm.vector.reduce.smin"  # the least lane of an int32 vector
VECTOR = 16  # float32 lanes of one AVX-512 vector: the decode's vector width
DECODER_ATTR = "bie.panel_decoder"  # on a panel GEMM kernel: its codec's decoder (see :func:`decoder`), as TVMScript
# the decoders gemm made, by their TVMScript: carried_decoder need not parse them again (the bbs panel GEMMs' took
# 0.2-0.3 s each, once per fused epilogue)
_DECODERS = Recent()

PanelWeight = Callable[..., tirx.Expr]  # (panel, kk, c) -> weight kk of channel panel * COLS + c


class RunStore(NamedTuple):
    """An item of a run's decode (:data:`RunWeights`): the run's float32x16 weights ``kk`` of its group."""
    kk: int | tirx.Expr
    value: tirx.Expr


class RunBinding(NamedTuple):
    """An item of a run's decode: ``var`` bound to ``value`` for the items after it (a value the run's weights share,
    computed, and printed in the decoder's TVMScript, once)."""
    var: tirx.Var
    value: tirx.Expr


class RunLoop(NamedTuple):
    """An item of a run's decode: ``items`` (which may use ``var``) for ``var`` in ``range(extent)`` (repeats printed
    once)."""
    var: tirx.Var
    extent: int
    items: list


class RunChoice(NamedTuple):
    """An item of a run's decode: ``then``'s items where ``condition`` (on the run) holds, ``otherwise``'s where not
    (two layouts' runs)."""
    condition: tirx.Expr
    then: list
    otherwise: list


RunItem = RunStore | RunBinding | RunLoop | RunChoice
# (holders' and views' buffers, first channel of a run of VECTOR, group) -> the run's decode: the items, statements
# of its own small language, kept small because the GEMM kernels carry the decoder as TVMScript, printed once per
# kernel and parsed again where the process did not make it (see DECODER_ATTR)
RunWeights = Callable[..., list[RunItem]]

# (holders' buffers, decoded [panels, K, COLS], panel) -> the statement that writes the whole panel
PanelDecode = Callable[..., tirx.Stmt]
View = tuple[te.Tensor, te.Tensor]  # (a word_view, the holder it reads)


@dataclass(frozen=True)
class ByWeight:
    """A decode weight by weight: ``weight(panel, kk, c)``, a number (converted to float32), decoded in vectors
    along the panel's channels (the codecs' arrays hold them contiguously).

    ``group``: the codec's words hold this many consecutive weights of K (bit ``j`` of a word: weight ``j`` of its
    group); the decode then runs group by group, a run of channels at a time, so that each group's words and metadata
    are loaded once. ``unroll`` (with ``group``): that many consecutive weights of a group decoded per iteration
    (unrolled), where one word of the codec's arrays holds them (its load then made once for them: LLVM does not
    unroll every such loop itself). ``views``: (a :func:`word_view`, the holder it reads) pairs."""
    weight: PanelWeight
    group: int | None = None
    unroll: int = 1
    views: Sequence[View] = ()

    def __post_init__(self):
        if self.unroll > 1 and not self.group:
            raise ValueError(f"unroll {self.unroll}: consecutive weights of a group, and the decode has no group")


@dataclass(frozen=True)
class ByRuns:
    """A decode a run of VECTOR channels over a ``group`` of K at a time, in the codec's vector operations across
    the lanes that an expression of one weight cannot state (a bit transpose of the run's words): ``runs`` gives the
    run's items (:data:`RunWeights`). The holders hold channels in runs of VECTOR (zero-padded to a whole run); the
    decoded panels have K rounded up to whole groups (the GEMM reads the first K). ``views``: as :class:`ByWeight`'s."""
    runs: RunWeights
    group: int
    views: Sequence[View] = ()


@dataclass(frozen=True)
class ByPanels:
    """A decode a whole panel at a time in the codec's own statements (index lists: zeros, then each channel's
    entries), the panel's channels past N included: ``panels`` (:data:`PanelDecode`)."""
    panels: PanelDecode


Decode = ByWeight | ByRuns | ByPanels


class DecoderAttrs(NamedTuple):
    """What :func:`plain` and :func:`schedule` read of a :func:`decoder`: its ``bie.*`` attributes, which travel with
    it as TVMScript (``DECODER_ATTR``), where the :data:`Decode` it was made of cannot."""
    holders: int  # the decoder's first params: the holders, then the views
    n: int
    position: int  # the holder of the stored rows' output channels, -1 for none
    views: list[int]  # the holder each view reads
    decode: str  # "weight": the schedule vectorizes the decoded block along the channels; "runs", "panels": the
    # block is the codec's own (vectors already)
    group: int  # ByWeight's group (0 for none) and unroll: the vectorized decode's loops; ByRuns' group
    unroll: int

    @classmethod
    def of(cls, decode: Decode, holders: list[te.Tensor], n: int, position: te.Tensor | None) -> DecoderAttrs:
        views = [] if isinstance(decode, ByPanels) else [_index(holders, holder) for _, holder in decode.views]
        if isinstance(decode, ByWeight):
            kind, group, unroll = "weight", decode.group or 0, decode.unroll
        elif isinstance(decode, ByRuns):
            kind, group, unroll = "runs", decode.group, 1
        else:
            kind, group, unroll = "panels", 0, 1
        return cls(len(holders), n, -1 if position is None else _index(holders, position), views, kind, group, unroll)

    @classmethod
    def read(cls, func: tirx.PrimFunc) -> DecoderAttrs:
        attrs = func.attrs
        return cls(int(attrs["bie.holders"]), int(attrs["bie.n"]), int(attrs["bie.position"]),
                   [int(i) for i in attrs["bie.views"]], str(attrs["bie.decode"]), int(attrs["bie.group"]),
                   int(attrs["bie.unroll"]))

    def attrs(self) -> dict:
        return {f"bie.{name}": value for name, value in self._asdict().items()}


def _index(holders: list[te.Tensor], holder: te.Tensor) -> int:
    at = next((i for i, h in enumerate(holders) if h.same_as(holder)), None)
    if at is None:
        raise ValueError(f"{holder.name} is not one of the decoder's holders")
    return at


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


def decoder(decode: Decode, holders: list[te.Tensor], n: int, k: int, scale: Callable | None = None,
            position: te.Tensor | None = None) -> tirx.PrimFunc:
    """Unscheduled ``f(*holders, *views, decoded [panels, K, COLS], [scales [N]])``: W's panels as ``decode`` states
    them and, with ``scale``, each channel's scale; its attributes: :class:`DecoderAttrs`.

    ``scale(c)``: a channel's scale, applied to the tile's sums as they are written back (the decode reads the
    panels' padding channels, the scales are read for channels that exist only). ``position`` (int32 [N], one of
    ``holders``): the weight's channels are stored rows, output channel ``c`` is stored row ``position[c]``, the
    stored rows two runs each in its channels' order (:func:`_merged` reads them so); the product (and ``scale``) is
    in stored order. A view is a parameter after the holders here, the holder's own
    memory in :func:`plain`."""
    cols = matmul.COLS
    count = -(-n // cols)
    views = () if isinstance(decode, ByPanels) else decode.views
    if isinstance(decode, ByWeight):
        decoded = te.compute((count, k, cols), lambda p, kk, c: decode.weight(p, kk, c).astype("float32"),
                             name=DECODED)
    else:  # a placeholder block, replaced by the runs' (_by_runs) or the panels' (_by_panels)
        rows = k if isinstance(decode, ByPanels) else -(-k // decode.group) * decode.group
        decoded = te.compute((count, rows, cols), lambda *_: tirx.const(0, "float32"), name=DECODED)
    scales = [] if scale is None else [te.compute((n,), lambda c: scale(c).astype("float32"), name=SCALES)]
    func = te.create_prim_func([*holders, *(view for view, _ in views), decoded, *scales])
    if isinstance(decode, ByRuns):
        func = _by_runs(func, decode, len(holders) + len(views), n)
    if isinstance(decode, ByPanels):
        func = _by_panels(func, decode.panels, len(holders))
    return func.with_attrs(DecoderAttrs.of(decode, holders, n, position).attrs())


def _by_runs(func: tirx.PrimFunc, decode: ByRuns, count: int, n: int) -> tirx.PrimFunc:
    """``func`` (a :func:`decoder`'s) with its ``DECODED`` block computed by ``decode``'s runs: one block a panel,
    group and run of VECTOR channels, storing the run's vectors of the group's weights (zeros past the holders' last
    run)."""
    group = decode.group
    holders, decoded = list(func.params[:count]), next(b for b in func.params if b.name == DECODED)
    panels, _, cols = (int(d) for d in decoded.shape)
    loops, iters = _iterators({"panel": panels, "group": int(decoded.shape[1]) // group, "run": cols // VECTOR})
    p, g, r = (it.var for it in iters)
    first = p * cols + r * VECTOR
    lanes = tirx.Ramp(r * VECTOR, 1, VECTOR)

    def stmt(item: RunItem) -> tirx.Stmt:
        if isinstance(item, RunStore):
            return tirx.BufferStore(decoded, item.value, [p, g * group + item.kk, lanes])
        if isinstance(item, RunBinding):
            return tirx.Bind(item.var, item.value)
        if isinstance(item, RunLoop):
            return tirx.For(item.var, 0, item.extent, tirx.ForKind.SERIAL, stmts(item.items))
        if isinstance(item, RunChoice):
            return tirx.IfThenElse(item.condition, stmts(item.then), stmts(item.otherwise))
        raise TypeError(f"not an item of a run's decode: {item!r}")

    def stmts(items: list[RunItem]) -> tirx.Stmt:
        body = [stmt(item) for item in items]
        return body[0] if len(body) == 1 else tirx.stmt.SeqStmt(body)

    items = decode.runs(holders, first, g)
    readable = -(-n // VECTOR) * VECTOR
    if panels * cols > readable:  # the last panel's runs past the holders' are zero
        zeros = tirx.Broadcast(tirx.const(0, "float32"), VECTOR)
        items = [RunChoice(first < readable, items, [RunStore(kk, zeros) for kk in range(group)])]
    writes = tirx.BufferRegion(decoded, [Range.from_min_extent(p, 1), Range.from_min_extent(g * group, group),
                                         Range.from_min_extent(r * VECTOR, VECTOR)])
    return _with_decode_block(func, holders, loops, iters, writes, stmts(items))


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
    ``out[..., c] = x @ W[c] * scale(c)``; where the channels are stored rows, the product in stored order, then
    ``out[..., c]`` read from its stored row ``position[c]`` (``MERGE``)."""
    attrs = DecoderAttrs.read(decode)
    count, at, viewed, n = attrs.holders, attrs.position, attrs.views, attrs.n
    holders, views = decode.params[:count], decode.params[count:count + len(viewed)]
    decoded, *scales = decode.params[count + len(viewed):]
    cols = int(decoded.shape[-1])
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
        stored = out
        out = te.compute(out.shape, lambda *i: stored(*i[:-1], position[i[-1]]), name=MERGE)
        inputs.append(position)
        internal.append(holders[at])
    gemm = te.create_prim_func([*inputs, out])
    nest = substituted(gemm.body.block.body, dict(zip(gemm.params[1:1 + len(internal)], internal)))
    allocated = [decoded, *scales]
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
    return _with_root_block(func, _sequence(stmts), func.body.block.alloc_buffers)


def _names(stmt) -> set:
    return {block.name_hint for block in collected(stmt, s_tir.SBlock)}


def _merged(func: tirx.PrimFunc, position: tirx.Buffer, n: int) -> tuple[tirx.Stmt, list]:
    """The loops of ``func``'s ``MERGE`` block (a :func:`plain` kernel's statements from it on), the elementwise
    blocks after it inlined into it. Where the CPU has AVX-512, a window of 16 output channels at a time: a bbs-like
    stored order (two runs of rows, each in its channels' order) puts a window's stored rows in two spans of 16
    (from the window's least stored row, and from its least past that span), so each row of the window is two vector
    loads of the product and one two-register permute (``vpermi2ps``); the spans and the permute's indices are
    computed from ``position`` once per window, for every row. Outputs written in order: the tile's write-back (a
    scalar store per output where it scattered) stays vectors. Elsewhere, and for the channels past the last whole
    window, a load per output. Returns the loops and the buffers they allocate."""
    sch = s_tir.Schedule(func)
    merge = sch.get_sblock(MERGE)
    stored = next(r.source for r in sch.get(merge).reads if not r.source.same_as(position))
    while consumers := sch.get_consumers(merge):
        for consumer in consumers:
            sch.reverse_compute_inline(consumer)
    realize = next(r for r in collected(sch.mod["main"].body, s_tir.SBlockRealize) if r.block.name_hint == MERGE)
    *lead, channel = realize.block.iter_vars
    rows = [tirx.Var(iv.var.name, iv.var.ty) for iv in lead]

    def over_rows(body_of: Callable, c: tirx.Expr) -> tirx.Stmt:
        body = body_of(substituted(realize.block.body, {**{iv.var: r for iv, r in zip(lead, rows)},
                                                         channel.var: c.astype(channel.var.ty)}))
        for iv, r in reversed(list(zip(lead, rows))):
            body = tirx.For(r, tirx.const(0, r.ty), iv.dom.extent.astype(r.ty), tirx.ForKind.SERIAL, body)
        return body

    windows = n // VECTOR if n >= VECTOR and _has_avx512() else 0
    c = tirx.Var("c", "int32")
    tail = tirx.For(c, windows * VECTOR, n - windows * VECTOR, tirx.ForKind.SERIAL, over_rows(lambda b: b, c))
    if not windows:
        return tail, []
    w, lane = tirx.Var("window", "int32"), tirx.Var("lane", "int32")
    merged = tirx.decl_buffer((VECTOR,), "float32", "merged", scope="local")

    def vector(value, dtype="int32"):
        return tirx.Broadcast(tirx.const(value, dtype) if isinstance(value, int) else value, VECTOR)

    def least(vec):  # the least lane, clamped so that a span of 16 from it stays in [0, n)
        return tirx.min(tirx.call_llvm_pure_intrin("int32", SMALLEST, vec), tirx.const(n - VECTOR, "int32"))

    # the spans' starts in a buffer, not bound: TVM's codegen read a bound high as low (both reductions' bindings)
    starts = tirx.decl_buffer((2,), "int32", "span_starts", scope="local")
    stored_rows, indices = tirx.Var("stored_rows", "int32x16"), tirx.Var("indices", "int32x16")
    low, high = (tirx.BufferLoad(starts, [i]) for i in (0, 1))
    in_first = stored_rows < vector(low + VECTOR)
    spans = [tirx.Bind(stored_rows, tirx.BufferLoad(position, [tirx.Ramp(w * VECTOR, 1, VECTOR)])),
             tirx.BufferStore(starts, least(stored_rows), [0]),
             tirx.BufferStore(starts, least(tirx.Select(in_first, vector(n), stored_rows)), [1]),
             tirx.Bind(indices, stored_rows - tirx.Select(in_first, vector(low), vector(high - VECTOR)))]

    def permuted(body):  # the window's row: its outputs permuted from two spans of the stored row, then the epilogue
        load = next(ld for ld in collected(body, TensorLoad) if ld.source.same_as(stored))
        *at, _ = load.indices
        span = [tirx.BufferLoad(stored, [*at, tirx.Ramp(start, 1, VECTOR)]) for start in (low, high)]
        value = tirx.call_llvm_pure_intrin("float32x16", PERMUTE2, span[0], indices, span[1])
        reads = tvm_ffi.structural_map(body, [(TensorLoad, lambda ld: tirx.BufferLoad(merged, [lane])
                                               if ld.source.same_as(stored) else ld)], order="post")
        return tirx.stmt.SeqStmt([tirx.BufferStore(merged, value, [tirx.Ramp(0, 1, VECTOR)]),
                                  tirx.For(lane, 0, VECTOR, tirx.ForKind.VECTORIZED, reads)])

    window = tirx.For(w, 0, windows, tirx.ForKind.SERIAL, _sequence([*spans, over_rows(permuted, w * VECTOR + lane)]))
    return _sequence([window, tail] if windows * VECTOR < n else [window]), [merged, starts]


def schedule(func: tirx.PrimFunc, decode: tirx.PrimFunc) -> tirx.PrimFunc:
    """A :func:`plain` kernel (and the elementwise blocks after it) scheduled: the register tiles of
    ``schedule_matmul`` in parallel over the panels, the leading dims and rows inside; each panel decoded at the
    top of its parallel iteration, by weight (:class:`ByWeight`) in vectors along its channels, group by group where
    it has a group; a product in stored order merged into the output channels after it, serially (:func:`_merged`).

    Where one register tile of rows is the whole call (leading dims 1, at most ``matmul.ROWS`` rows: a branch at
    run time where the rows are symbolic), the weights go from the decode to the FMAs in registers instead, each
    decoded once as the tile's k loop reaches it (:func:`_in_registers`): stored and loaded again, each vector of
    decoded weights costs its store on the FMA pipes (a zmm store about 1.6 FMAs' time on Zen 4), and a tile of 8
    rows has only 8 FMAs per vector of weights. With more tiles, the panel decoded once serves every tile.
    (:class:`ByPanels`' statements write whole panels: stored at any rows.)"""
    # the merge and the blocks after it are set aside while the tile's consumers are inlined: the merge reads the
    # product at rows of its own (position), it cannot be inlined into the tile's write-back
    stmts = _sequence([func.body.block.body])
    stmts = list(stmts.seq) if isinstance(stmts, tirx.stmt.SeqStmt) else [stmts]
    at = next((i for i, s in enumerate(stmts) if MERGE in _names(s)), len(stmts))
    rest = _with_root(func, stmts[:at])
    attrs = DecoderAttrs.read(decode)
    lead = list(func.params[0].shape[:-1])
    one_tile = tvm.sym.Analyzer().simplify(tirx.all(*[d == 1 for d in lead[:-1]], lead[-1] <= matmul.ROWS)
                                           if len(lead) > 1 else lead[-1] <= matmul.ROWS)
    if attrs.decode == "panels" or _is_const(one_tile, False):
        scheduled = _tiled(rest, attrs)
    elif _is_const(one_tile, True):
        scheduled = _in_registers(rest, attrs, len(lead))
    else:
        whole = _tiled(rest, attrs)
        # the one-tile copy with a decoded buffer of its own: one buffer in both branches would be allocated where
        # both meet (the root: every panel at once)
        few = _in_registers(_fresh_decoded(rest), attrs, len(lead))
        body = tirx.IfThenElse(one_tile, matmul.fresh_definitions(few.body.block.body), whole.body.block.body)
        allocated = list(few.body.block.alloc_buffers)
        allocated += [b for b in whole.body.block.alloc_buffers if not any(b.same_as(a) for a in allocated)]
        scheduled = _with_root_block(whole, body, allocated)  # (allocated once: the product is both branches')
    if at == len(stmts):
        return scheduled
    merge, merged = _merged(_with_root(func, stmts[at:]), func.params[1 + attrs.position], attrs.n)
    return _with_root_block(scheduled, _sequence([scheduled.body.block.body, merge]),
                            [*scheduled.body.block.alloc_buffers, *merged])


def _is_const(expr: tirx.Expr, value: bool) -> bool:
    return isinstance(expr, tirx.IntImm) and bool(expr.value) == value


def _fresh_decoded(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with a new buffer for its decoded panels."""
    decoded = next(b for b in func.body.block.alloc_buffers if b.name == DECODED)
    fresh = tirx.decl_buffer(decoded.shape, decoded.dtype, decoded.name, scope=decoded.scope())
    return func.with_body(substituted(func.body, {decoded: fresh}))


def _tiles(func: tirx.PrimFunc, cols: int = matmul.COLS) -> tuple[s_tir.Schedule, s_tir.schedule.SBlockRV]:
    """A schedule of ``func`` (a :func:`plain` kernel, the merge set aside) with its product in register tiles of
    ``matmul.ROWS`` x ``cols`` (``schedule_matmul``, the panels the parallel loop, the leading dims and rows inside)
    and the product's block."""
    sch = s_tir.Schedule(func)
    if SCALES in _names(func.body.block.body):
        sch.compute_inline(sch.get_sblock(SCALES))
    block = sch.get_sblock(BLOCK)
    matmul.schedule_matmul(sch, block, cols=cols, batch_in_task=True)
    return sch, block


def _tiled(func: tirx.PrimFunc, attrs: DecoderAttrs) -> tirx.PrimFunc:
    """:func:`_tiles`, each panel decoded at the top of its parallel iteration (for every tile of rows)."""
    sch, block = _tiles(func)
    decoding = sch.get_sblock(DECODED)
    sch.compute_at(decoding, sch.get_loops(block)[0])
    if attrs.decode == "weight":  # (a codec's runs and panels are vectors already)
        *_, kk, c = sch.get_loops(decoding)  # (kk is not a loop when K is 1)
        runs, lane = sch.split(c, [None, VECTOR])
        group = attrs.group
        if group and int(sch.get(kk).extent) > group:  # a group's words and metadata are loaded and decoded once
            groups, kk = sch.split(kk, [None, group])   # per run
            sch.reorder(groups, runs, kk, lane)
            if attrs.unroll > 1:
                sch.unroll(sch.split(kk, [None, attrs.unroll])[1])
        sch.vectorize(lane)
        sch.unroll(runs)
    return sch.mod["main"]


def _in_registers(func: tirx.PrimFunc, attrs: DecoderAttrs, lead: int) -> tirx.PrimFunc:
    """:func:`_tiles` for one tile of rows, the weights decoded into registers where the tile uses them: a weight's
    decode (:class:`ByWeight`) inlined into the tile's FMAs (computed once per k and vector: the rows share it); a
    run's (:class:`ByRuns`) computed group by group in the tile's k loop, each vector of weights it stores going to
    the tile's FMAs instead (:func:`_runs_into_tile`). ``lead``: the rows' dims. The tile over a run's decode is a
    run wide (``VECTOR``): over two runs, every row's x broadcast stayed live from one run's FMAs to the other's,
    and LLVM spilled them."""
    cols = matmul.COLS if attrs.decode == "weight" else VECTOR
    sch, block = _tiles(func, cols)
    # one tile: no full tiles to partition from a tail (the FMAs are not predicated on the rows, the write-back
    # is: :func:`_tile_accumulator`), and each copy of the code costs its build
    for loop in sch.get_loops(block):
        if "pragma_loop_partition_hint" in sch.get(loop).annotations:
            sch.unannotate(loop, "pragma_loop_partition_hint")
    decoding = sch.get_sblock(DECODED)
    if attrs.decode == "weight":
        sch.compute_inline(decoding)
        return _tile_accumulator(sch.mod["main"], cols)
    k = int(sch.get(block).iter_vars[-1].dom.extent)
    tile = sch.get_loops(block)[lead]  # (the panels, the leading dims but the rows, the tiles of rows, k...)
    if k > attrs.group:
        step = matmul.k_unroll(tirx.IntImm("int32", k))  # the tile's k loop: steps of `step` k
        tile = sch.split(sch.get_loops(block)[lead + 1], [None, attrs.group // step])[0]
    sch.compute_at(decoding, tile)
    loops = sch.get_loops(decoding)
    for loop in loops[[sch.get(l).same_as(sch.get(tile)) for l in loops].index(True) + 1:]:
        sch.unroll(loop)  # the runs (and groups) of a chunk: the tile's channels constant in its FMAs
    return _runs_into_tile(_tile_accumulator(sch.mod["main"], cols), k, attrs.group)


def _runs_into_tile(func: tirx.PrimFunc, k: int, group: int) -> tirx.PrimFunc:
    """``func`` (:func:`_in_registers`' schedule of a run decode) with each vector the decode stores (a run's 16
    channels at one k) multiplied into the tile's rows there, in place of the tile's own loops over the stored
    weights: no decoded buffer. ``k``: K; ``group``: the decode's (its groups run past K where K is not whole
    groups)."""
    update = next(r for r in collected(func.body, s_tir.SBlockRealize) if r.block.name_hint == f"{BLOCK}_update")
    *outer, row, channel, rk = (iv.var for iv in update.block.iter_vars)
    bound = {iv.var: value for iv, value in zip(update.block.iter_vars, update.iter_values)}
    tile_rows = next(loop for loop in collected(func.body, tirx.For) if loop.kind == tirx.ForKind.UNROLLED
                     and any(v.same_as(loop.loop_var) for v in tirx.analysis.undefined_vars(bound[row])))
    tile_row = tile_rows.loop_var
    product = update.block.body  # tile[row, channel] += x[row, rk] * decoded[channel // COLS, rk, channel % COLS]
    decoded = next(b for b in func.body.block.alloc_buffers if b.name == DECODED)
    weights = tirx.decl_buffer((VECTOR,), "float32", "weights_of_run", scope="local")

    def reads(lane):  # the decoded weights read from the run's vector
        return lambda load: tirx.BufferLoad(weights, [lane]) if load.source.same_as(decoded) else load

    def multiplied(stored: tirx.BufferStore) -> tirx.Stmt:
        """The tile's FMAs of the vector ``stored`` (``decoded[panel, kk, first:first + VECTOR]``)."""
        panel, kk, columns = stored.indices
        row_of, lane = tirx.Var("row", tile_row.ty), tirx.Var("lane", columns.base.ty)
        values = {**{v: bound[v] for v in outer}, rk: kk, row: substituted(bound[row], {tile_row: row_of}),
                  channel: (panel * int(decoded.shape[-1]) + columns.base + lane).astype(channel.ty)}
        fma = substituted(tvm_ffi.structural_map(product, [(TensorLoad, reads(lane))], order="post"), values)
        if k % group:  # the last group's weights past K are not multiplied (nor x read past K)
            fma = tirx.IfThenElse(kk < k, fma, None)
        fmas = tirx.For(lane, 0, VECTOR, tirx.ForKind.VECTORIZED, fma)
        return tirx.stmt.SeqStmt([tirx.BufferStore(weights, stored.value, [tirx.Ramp(0, 1, VECTOR)]),
                                  tirx.For(row_of, 0, tile_rows.extent, tirx.ForKind.UNROLLED, fmas)])

    def opened(realize):  # the decode's block: its body, each store multiplied into the tile
        if realize.block.name_hint != DECODED:
            return realize
        body = tvm_ffi.structural_map(realize.block.body, [(tirx.BufferStore, lambda st: multiplied(st)
                                                            if st.buffer.same_as(decoded) else st)], order="post")
        return substituted(body, {iv.var: value for iv, value in zip(realize.block.iter_vars, realize.iter_values)})

    def without_tile_loops(stmt):  # the sequence (decode, the tile's loops over k) left with the decode
        if not isinstance(stmt, tirx.stmt.SeqStmt):
            return stmt
        kept = [s for s in stmt.seq if f"{BLOCK}_update" not in _names(s)]
        return stmt if len(kept) == len(stmt.seq) else _sequence(kept)

    body = tvm_ffi.structural_map(func.body.block.body, [(tirx.stmt.SeqStmt, without_tile_loops)], order="post")
    body = tvm_ffi.structural_map(body, [(s_tir.SBlockRealize, opened)], order="post")
    allocated = [b for b in func.body.block.alloc_buffers if not b.same_as(decoded)] + [weights]
    return _with_root_block(func, body, allocated)


def _tile_accumulator(func: tirx.PrimFunc, cols: int) -> tirx.PrimFunc:
    """``func`` (one tile of rows; the product's predicate on its rows alone, or the product replaced by
    :func:`_runs_into_tile`, which guards K itself) with the tile's accumulator a buffer of one whole tile,
    indexed within it, and every row of the tile zeroed and multiplied, unpredicated (a row of x past the last read
    as the last; the write-back still writes the rows there are). The accumulator of the call's rows (allocated
    per panel in the runtime's workspace), written under a predicate on the rows, stays in memory where a tile has
    fewer rows than ``matmul.ROWS`` (a load and store per FMA), and a predicate on each FMA costs its branch; a
    whole tile stays in registers (on the stack). ``cols``: the tile's."""
    update = next(r for r in collected(func.body, s_tir.SBlockRealize) if r.block.name_hint == f"{BLOCK}_update")
    accumulator = update.block.writes[0].source
    by_tile = len(accumulator.shape) == len(update.block.iter_vars) + 1  # (schedule_matmul's layout by tile)
    rows = matmul.ROWS
    shape = accumulator.shape[-2:] if by_tile else [rows, cols]
    tile = tirx.decl_buffer(shape, accumulator.dtype, accumulator.name, scope="local")
    x, last_row = func.params[0], update.block.iter_vars[-3].dom.extent - 1

    def within(indices):
        *_, row, column = indices
        return [row, column] if by_tile else [row % rows, column % cols]

    def region(ranges):
        *_, row, column = ranges
        return [row, column] if by_tile else [Range.from_min_extent(row.min % rows, row.extent),
                                              Range.from_min_extent(column.min % cols, column.extent)]

    def load(ld):
        if ld.source.same_as(accumulator):
            return tirx.BufferLoad(tile, within(ld.indices))
        if ld.source.same_as(x):
            *before, row, kk = ld.indices
            return tirx.BufferLoad(x, [*before, tirx.min(row, last_row), kk])
        return ld

    def unpredicated(realize):
        if realize.block.name_hint not in (f"{BLOCK}_init", f"{BLOCK}_update"):
            return realize
        return s_tir.SBlockRealize(realize.iter_values, True, realize.block)

    mine = accumulator.same_as
    body = tvm_ffi.structural_map(func.body.block.body, [
        (TensorLoad, load),
        (tirx.BufferStore, lambda st: tirx.BufferStore(tile, st.value, within(st.indices)) if mine(st.buffer) else st),
        (TensorRegion, lambda r: tirx.BufferRegion(tile, region(r.region)) if mine(r.source) else r),
        (s_tir.SBlockRealize, unpredicated)], order="post")
    return _with_root_block(func, body, [tile if mine(b) else b for b in func.body.block.alloc_buffers])


def _with_root_block(func: tirx.PrimFunc, body: tirx.Stmt, allocated: list) -> tirx.PrimFunc:
    return func.with_body(s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body, None, allocated)))


def _has_avx512() -> bool:
    target = tvm.target.Target.current()
    return target is not None and supported(target)


def gemm(decode: Decode, holders: list[te.Tensor], n: int, k: int, scale: Callable | None = None,
         position: te.Tensor | None = None) -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], *holders, out [m, N])``, ``out[:, c] = x @ W[c] * scale(c)``: :func:`plain` after the
    :func:`decoder` of these arguments, carrying it (``DECODER_ATTR``)."""
    func = decoder(decode, holders, n, k, scale, position)
    text = func.script()
    _DECODERS.put(text, func)
    return schedule(plain(func, [te.var("m", "int64")], k), func).with_attr(DECODER_ATTR, text)


def carried_decoder(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The :func:`decoder` a :func:`gemm` kernel carries, else None: the one :func:`gemm` made of that text (in
    ``_DECODERS``), else the text parsed."""
    attrs = func.attrs or {}
    if DECODER_ATTR not in attrs:
        return None
    text = str(attrs[DECODER_ATTR])
    decoder_func = _DECODERS.get(text)
    return decoder_func if decoder_func is not None else tvm.script.from_source(text)


def with_gemm(small: KernelCall, func: tirx.PrimFunc, kind: str) -> KernelCall:
    """``small`` (the one-row kernel) with ``func`` (a :func:`gemm` over the same constants) above one row."""
    small.large_batch = KernelCall(f"{kind}_gemm", func, small.constants)
    return small

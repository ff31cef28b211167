"""``bbs`` weights decoded from the stored bit columns: the decode in TE, a decode-once GEMV, the panel GEMM, the GPU
conv's compute.

The decode stage is the format of :mod:`bie_compiler.codecs.bbs` written in TE:
a stored row below ``S`` is a sensitive INT8 row; a pruned row's weight ``j`` of
group ``g`` is ``kept * 2^shift + offset``, ``kept`` the two's complement number
of its ``8 - N`` column bits and (shift, offset) from the group's metadata byte.
Times the row's scale, that is the reference decoder's value.

* :func:`matmul`: ``out[m, n] = sum_k x[m, k] * w[position[n], k]``: each stored
  row decoded once into a row buffer (vectorized), then 16-lane FMAs per row of
  activations, stored rows in parallel; then the output unshuffle. The one-row
  kernel on CPUs without the LUT kernel's AVX-512.
* :func:`gemm`: matmuls above one row, the panel GEMM (:mod:`.panel_gemm`) over
  the stored rows, a panel of sensitive rows or of pruned ones decoded once per
  call (where the CPU has the bit transposes, a run of 16 rows and a group at a
  time: :func:`run_weights`); the scales
  applied to the sums, the stored rows merged into the output channels after it.
* :func:`output_weight`: the decoded weight per output channel, for the decode
  kernels (:mod:`.decode`) of convs; where the kept columns fit a nibble, over
  :func:`channel_constants` (the kept integers moved by channel at compile time).
* :func:`conv2d_compute`: the whole OIHW weight decoded inside the same
  PrimFunc as ``topi.nn.conv2d_nchw``: the GPU's direct conv (:mod:`.bbs_cuda`).
* :func:`kept_value`: a pruned row's stored column bits as a number, shared
  with ``bitwave``, which stores its columns the same way (:mod:`.int8`).
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx, topi

import tvm

from bie_compiler.codecs import bbs
from bie_compiler.codecs.base import Encoded
from bie_compiler.codecs.lut_tables import INT8_KIND_SUFFIX, chosen

from ..kernel_registry import ConvSpec, KernelCall, register
from ..layout_memo import per_layout
from ..schedules import matmul as matmul_schedule
from . import bbs_lut, channel_nibbles, column_runs, decode, decode_once, lut, panel_gemm

CONV_BLOCK = "conv2d_nchw"  # topi's name for the conv block (the GPU's direct conv schedules it)

CODES_PER_WORD = 4  # sensitive rows' int8 codes per int32 word: the panel decode reads them so (panel_value)
NAMES = ("scales", "position", "sensitive", "columns", "meta")
CHANNEL_NAMES = ("scales", "position", "sensitive", "nibbles", "meta_by_row")


def _nonempty(x: np.ndarray) -> np.ndarray:
    """An empty chunk as one zero row: a kernel's buffer has a row to name even where it reads none."""
    return x if len(x) else np.zeros((1, *x.shape[1:]), x.dtype)


def constants(enc: Encoded, tables: str = "fp32") -> list[np.ndarray]:
    """What the kernels read: scales, position, sensitive, columns, meta (with int8 ``tables``, the columns as
    the LUT GEMV's look-up indices, :func:`.bbs_lut.int8_nibbles`)."""
    a = enc.arrays
    columns = _nonempty(a["columns"])
    return [a["scales"], a["position"], _nonempty(a["sensitive"]),
            bbs_lut.int8_nibbles(columns) if tables == "int8" else columns, _nonempty(a["meta"])]


def nibbles_fit(enc: Encoded) -> bool:
    """Whether a pruned row's kept columns fit a nibble (``moderate``'s 4 of 8)."""
    return 8 - int(enc.header["pruned_columns"]) <= 4


def channel_constants(enc: Encoded) -> list[np.ndarray]:
    """A conv decode's constants where the kept columns fit a nibble: scales, position, sensitive, the pruned rows'
    kept integers by channel (:mod:`.channel_nibbles`: int8 [ceil(P / 2), KG * 32], stored rows 2r and 2r + 1 of the
    pruned ones in row r) and their metadata bytes by row (uint8 [P, KG]).

    The same bits as ``columns`` and ``meta``, moved so that a vector of one channel's weights is one load of bytes
    widened, one nibble taken, shifted and offset by its group's scalars (the column words put each weight's bits
    in four words: a shift, a mask and a multiply-add per bit and weight)."""
    a = enc.arrays
    pruned = enc.shape[0] - int(enc.header["sensitive"])
    kept = bbs.unpack_columns(a["columns"], pruned).reshape(pruned, padded_k(enc))
    meta = bbs.from_lanes(a["meta"], pruned)
    return [a["scales"], a["position"], _nonempty(a["sensitive"]), _nonempty(channel_nibbles.pack(kept)),
            _nonempty(meta)]


def placeholders(arrays: list[np.ndarray], names: tuple[str, ...] = NAMES) -> list[te.Tensor]:
    return [te.placeholder(c.shape, c.dtype.name, name) for name, c in zip(names, arrays)]


def kept_value(columns, bits: int, p, g, j):
    """The ``bits``-bit two's complement number that pruned row ``p`` stores for weight ``j`` of group ``g``."""
    pb, lane = p // bbs.LANES, p % bbs.LANES
    one = tirx.const(1, "uint32")
    kept = tirx.const(0, "int32")
    for b in range(bits):
        bit = ((columns[pb, g, b, lane] >> j) & one).astype("int32")
        kept = kept + bit * (-(1 << (bits - 1)) if b == 0 else 1 << (bits - 1 - b))
    return kept


def group_offset_shift(enc: Encoded, meta_byte):
    """(offset, shift) of a group of a pruned row from its metadata byte (int32): its weights are ``kept * 2^shift +
    offset``."""
    # zps: the low 6 bits a two's complement c, the offset -c = 32 - (bits ^ 32) (no select: a vector's select
    # trips TVM's bound analysis in the panel GEMM's runs, run_weights)
    c = meta_byte & 63
    offset = 32 - (c ^ 32) if enc.header["method"] == "zps" else c
    return offset, int(enc.header["pruned_columns"]) - (meta_byte >> 6)


def group_value(enc: Encoded, kept, meta_byte):
    """A pruned weight from its kept integer and its group's metadata byte (int32): ``kept * 2^shift + offset``."""
    offset, shift = group_offset_shift(enc, meta_byte)
    return (kept << shift) + offset


def pruned_value(enc: Encoded, columns, meta):
    """``f(row, kk)``: the integer of pruned stored row ``row`` (at least the sensitive count) at padded position
    ``kk``, before its scale."""
    count = int(enc.header["sensitive"])
    bits = 8 - int(enc.header["pruned_columns"])

    def value(row, kk):
        g, j = kk // bbs.GROUP, (kk % bbs.GROUP).astype("uint32")
        p = row - count
        kept = kept_value(columns, bits, p, g, j)
        return group_value(enc, kept, meta[p // bbs.LANES, g, p % bbs.LANES].astype("int32"))

    return value


def pruned_float(enc: Encoded, columns, meta, tables: str = "fp32"):
    """``f(row, kk)``: :func:`pruned_value` as float32, for decodes that run in vectors of channels: the kept
    integer in offset binary (``u = kept + 2^(bits - 1)``, unsigned: its sign column inverted) times ``2^shift``
    plus ``offset - 2^(bits - 1 + shift)``, one multiply-add per weight whose two factors come from the group's
    metadata byte alone (computed once per group, not per weight). Every term is an integer below 2^10: exact.
    ``columns``: the stored words, or with int8 ``tables`` :func:`.bbs_lut.int8_nibbles` of them read as uint32
    words (:func:`.panel_gemm.word_view`; :func:`.bbs_lut.int8_offset_binary`)."""
    count = int(enc.header["sensitive"])
    bits = 8 - int(enc.header["pruned_columns"])
    one = tirx.const(1, "uint32")
    if tables == "int8":
        offset_binary = bbs_lut.int8_offset_binary(enc, columns)
    else:
        def offset_binary(pb, g, lane, j):  # bit j of each column word, the sign's inverted, as one number
            u = tirx.const(0, "uint32")
            for b in range(bits):
                bit = (columns[pb, g, b, lane] >> j) & one
                u = u | ((bit ^ one if b == 0 else bit) << tirx.const(bits - 1 - b, "uint32"))
            return u

    def value(row, kk):
        g, j = kk // bbs.GROUP, (kk % bbs.GROUP).astype("uint32")
        p = row - count
        pb, lane = p // bbs.LANES, p % bbs.LANES
        offset, shift = group_offset_shift(enc, meta[pb, g, lane].astype("int32"))
        step = tirx.const(1, "int32") << shift
        base = (offset - (step << tirx.const(bits - 1, "int32"))).astype("float32")
        return offset_binary(pb, g, lane, j).astype("int32").astype("float32") * step.astype("float32") + base

    return value


def nibble_value(enc: Encoded, nibbles, meta_by_row):
    """:func:`pruned_value` over :func:`channel_constants`' nibbles and metadata by row."""
    count = int(enc.header["sensitive"])

    def value(row, kk):
        p = row - count
        kept = channel_nibbles.nibble(nibbles[p // 2, kk], p % 2)
        return group_value(enc, kept, meta_by_row[p, kk // bbs.GROUP].astype("int32"))

    return value


def stored_weight(enc: Encoded, scales, sensitive, pruned):
    """``f(row, kk)``: the decoded float32 weight of stored row ``row`` at padded position ``kk``; ``pruned(row,
    kk)``: the integer of a pruned row (:func:`pruned_value`, :func:`nibble_value`)."""
    count = int(enc.header["sensitive"])

    def weight(row, kk):
        # if_then_else, not Select: Select evaluates both sides, and TVM simplifies each side under its own
        # condition, which removed the index clamps that kept the side not taken in bounds (a segfault when
        # the constants ended near the end of a mapping: mobilenet's classifier at batch 8).
        value = tirx.if_then_else(row < count, sensitive[row, kk].astype("int32"), pruned(row, kk))
        return value.astype("float32") * scales[row]

    return weight


def output_weight(enc: Encoded, holders, pruned_of=pruned_value):
    """``f(n, kk)``: the decoded weight of output channel ``n`` (the stored row ``position[n]``); ``holders``: of
    :func:`constants` (``pruned_of``: :func:`pruned_value`) or of :func:`channel_constants` (:func:`nibble_value`)."""
    scales, position, sensitive, *pruned_arrays = holders
    weight = stored_weight(enc, scales, sensitive, pruned_of(enc, *pruned_arrays))
    return lambda n, kk: weight(position[n], kk)


def padded_k(enc: Encoded) -> int:
    return -(-enc.shape[1] // bbs.GROUP) * bbs.GROUP


def matmul(enc: Encoded) -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])``."""
    n, k = enc.shape
    kp = padded_k(enc)
    x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
    scales, position, sensitive, columns, meta = holders = placeholders(constants(enc))
    zero = tirx.const(0, "float32")
    xpad = te.compute((x.shape[0], kp), lambda m, kk: te.if_then_else(kk < k, x[m, kk], zero), name="xpad")
    decoded = te.compute((n, kp), stored_weight(enc, scales, sensitive, pruned_value(enc, columns, meta)),
                         name="decoded")
    rk = te.reduce_axis((0, kp), "rk")
    stored = te.compute((x.shape[0], n), lambda m, row: te.sum(xpad[m, rk] * decoded[row, rk], axis=rk), name="stored")
    out = te.compute((x.shape[0], n), lambda m, c: stored[m, position[c]], name="unshuffle")
    sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
    sch.work_on("main")
    decode_once.schedule_llvm(sch, "stored")
    sch.parallel(sch.get_loops(sch.get_sblock("unshuffle"))[0])
    return sch.mod["main"]


def conv2d_compute(enc: Encoded, conv) -> tirx.PrimFunc:
    """Unscheduled ``f(x NCHW, scales, position, sensitive, columns, meta, out NCHW)``: the OIHW weight decoded
    (block ``decoded``, in output-channel order via ``position``), then ``topi.nn.conv2d_nchw`` (the GPU's direct conv)."""
    o, i, kh, kw = conv.kernel_shape
    x = te.placeholder((te.var("batch", "int64"), i, te.var("h", "int64"), te.var("w", "int64")), "float32", "x")
    holders = placeholders(constants(enc))
    weight = output_weight(enc, holders)
    # codec layout: K runs over (kh, kw, in_channel), channel fastest
    oihw = te.compute((o, i, kh, kw), lambda f, c, r, s: weight(f, (r * kw + s) * i + c), name="decoded")
    out = topi.nn.conv2d_nchw(x, oihw, list(conv.strides), list(conv.padding), list(conv.dilation))
    return te.create_prim_func([x, *holders, out])


def panel_value(enc: Encoded, holders, tables: str = "fp32") -> panel_gemm.PanelWeight:
    """The integers of stored rows in panels of ``COLS`` (:mod:`.panel_gemm`), before their scales: a panel is all
    sensitive or all pruned (the sensitive count is a multiple of the panel, or every row), so the choice is made
    once per panel, not per weight; pruned rows are read in their 16-row words, sensitive ones (K-major) across rows
    as int32 words of 4 codes (``holders``' sensitive: :func:`.panel_gemm.word_view`; the decode unrolled by 4),
    one load per row for 4 weights where bytes would be one per row and weight, each code then moved to the word's
    top byte and shifted back with its sign."""
    n = enc.shape[0]
    count = int(enc.header["sensitive"])
    cols = matmul_schedule.COLS
    if count % cols and count != n:
        raise ValueError(f"bbs: {count} sensitive rows of {n}: neither a multiple of {cols} nor every row")
    _, _, sensitive_words, columns, meta = holders
    pruned = panel_gemm.by_channel(pruned_float(enc, columns, meta, tables), n, bbs.LANES)
    last = tirx.const(max(count, 1) - 1, "int32")  # a last panel of sensitive rows may run past them
    top = tirx.const(24, "int32")

    def sensitive(p, kk, c):
        word = sensitive_words[tirx.min(p * cols + c, last), kk // CODES_PER_WORD]
        return ((word << (top - kk % CODES_PER_WORD * 8)) >> top).astype("float32")

    return lambda p, kk, c: tirx.if_then_else(p * cols < count, sensitive(p, kk, c), pruned(p, kk, c))


def run_weights(enc: Encoded, tables: str = "fp32") -> panel_gemm.RunWeights:
    """The panel GEMM's decode of a run of 16 stored rows over a group (a :data:`.panel_gemm.RunWeights`), where the
    CPU has the bit transposes (:func:`.lut.bit_transpose_supported`). The pruned rows: with fp32 ``tables`` from their
    stored column words (:func:`.column_runs.decoded`: the kept integer times ``2^shift`` plus the offset, both from
    the metadata bytes once per group); with int8 ``tables`` from :func:`.bbs_lut.int8_nibbles`' bytes (their words'
    layout is ``bie-bitplane``'s at 4 planes): one bit transpose per 8 weights (:func:`.lut.bit_transposed`), then
    per weight one vpmultishiftqb that moves each lane's offset-binary nibble ``u`` to the bottom of the lane, one
    vpermps of ``u + 1`` as float32, ``shift`` added to its exponent and the base less one step added
    (:func:`pruned_float`'s ``u * 2^shift`` plus base, with no multiply-add on the tile's FMA pipes).
    The sensitive rows' group of 8 words per row loaded at once (two rows a vector) and transposed by in-lane
    interleaves and 128-bit lane selects (no scalar inserts, no two-vector permutes); codes 0-2 of a word read as a
    float's low mantissa bits, code 3 shifted down with its sign and converted. What the weights share is bound once
    and their repeats are loops (``panel_gemm.RunBinding``, ``RunLoop``): the decoder's TVMScript, printed for every
    GEMM kernel (and parsed where the process did not print it), stays short (the encoder's compile time)."""
    n = enc.shape[0]
    count = int(enc.header["sensitive"])
    bits = 8 - int(enc.header["pruned_columns"])
    kg = -(-enc.shape[1] // bbs.GROUP)
    lanes = bbs.LANES
    words_per_group = bbs.GROUP // CODES_PER_WORD
    last = max(count, 1) - 1  # a last run of sensitive rows may run past them
    successors = tirx.Cast("float32x16", tirx.Ramp(tirx.const(1, "int32"), tirx.const(1, "int32"), lanes))  # u + 1

    def broadcast(value, dtype):
        return tirx.Broadcast(tirx.const(value, dtype), lanes)

    def indices(values):
        return [tirx.IntImm("int32", i) for i in values]

    def bound(name, value, dtype):
        return panel_gemm.RunBinding(tirx.Var(name, dtype), value)

    def step_offset(meta, pb, g):  # the group's 2^shift and offset per lane, int32x16
        offset, shift = group_offset_shift(enc, tirx.Cast("int32x16", meta[pb, g, tirx.Ramp(0, 1, lanes)]))
        return broadcast(1, "int32") << shift, offset

    def pruned_columns(columns, meta, first, g):
        pb = (first - count) // lanes
        step, offset = step_offset(meta, pb, g)
        return column_runs.decoded(lambda b: columns[pb, g, b, tirx.Ramp(0, 1, lanes)], bits,
                                   tirx.Cast("float32x16", step), tirx.Cast("float32x16", offset))

    def pruned_nibbles(columns, meta, first, g):
        pb = (first - count) // lanes
        offset, shift = group_offset_shift(enc, tirx.Cast("int32x16", meta[pb, g, tirx.Ramp(0, 1, lanes)]))
        # (u + 1) * 2^shift as the float u + 1 with shift added to its exponent (u + 1 > 0: a normal float), then
        # the base less one step: exact, and an integer add and a float add where a multiply-add took the FMA pipes
        # the tile's FMAs run on
        first_step = (broadcast(1, "int32") << shift) * broadcast((1 << (bits - 1)) + 1, "int32")
        out = [bound("base", tirx.Cast("float32x16", offset - first_step), "float32x16"),
               bound("exponent", shift << broadcast(23, "int32"), "int32x16")]
        base, exponent = (binding.var for binding in out)
        h = tirx.Var("h", "int32")  # the index vector: one loop over them, its body one vector's 8 weights
        vector = [bound("transposed", lut.bit_transposed(
            columns[pb * kg + g, h, tirx.Ramp(0, 1, lanes * bbs_lut.QUAD)]), "int8x64")]
        transposed = vector[0].var
        for j in range(8):  # byte j: weight j % 4 of table h, or of table h + 4; even lanes' nibble on top
            kept = lut.lane_bits(transposed, 8 * j + 4, 8 * j)
            value = tirx.call_llvm_pure_intrin("float32x16", lut.PERMUTE, successors, kept)
            scaled = tirx.reinterpret("float32x16", tirx.reinterpret("int32x16", value) + exponent)
            vector.append(panel_gemm.RunStore(4 * (h + 4 * (j // 4)) + j % 4, scaled + base))
        return [*out, panel_gemm.RunLoop(h, bbs_lut.QUAD, vector)]

    pruned = pruned_nibbles if tables == "int8" else pruned_columns

    def sensitive(sensitive_words, first, g):
        # vector p: rows a and b's words (its low and high 256 bits), in the order that leaves the transpose's rows
        # 0-15 in order
        rows = [(p, p + 4) if p < 4 else (p + 4, p + 8) for p in range(lanes // 2)]
        out = [bound(f"rows_{p}", tirx.Shuffle([sensitive_words[tirx.min(first + i, last), tirx.Ramp(
            g * words_per_group, 1, words_per_group)] for i in pair], indices(range(lanes))), "int32x16")
            for p, pair in enumerate(rows)]
        vectors = [binding.var for binding in out]
        # the 16 x 8 words transposed by in-lane interleaves and vshufi32x4 (as one shuffle of the 16 rows' words,
        # LLVM made 32 two-vector permutes, vpermt2d, of it): a 4 x 4 transpose within each 128-bit lane over vectors
        # 0-3 and over 4-7, interleaves of dwords (vectors 0 and 1, 2 and 3), then of qwords (0 and 2, 1 and 3) ...
        for size, starts, apart in ((4, (0, 2), 1), (8, (0, 1), 2)):
            dtype = f"int{8 * size}x{lanes * 4 // size}"
            out += [bound(f"interleaved_{size}_{base + p}_{half}", tirx.reinterpret("int32x16", column_runs.shuffled(
                tirx.reinterpret(dtype, vectors[base + p]), tirx.reinterpret(dtype, vectors[base + p + apart]),
                column_runs.interleave(size, half), size)), "int32x16")
                for base in (0, 4) for p in starts for half in (0, 1)]
            vectors = [binding.var for binding in out[-len(rows):]]
        for w in range(words_per_group):
            # ... leave word k of rows 0-3 and 8-11 (vector k) and of rows 4-7 and 12-15 (vector 4 + k) in lanes 0 and
            # 2 of the vector (word k < 4) or lanes 1 and 3 (word 4 + k): one vshufi32x4 takes them
            k, lane = w % 4, w // 4
            out.append(bound(f"word_{w}", tirx.Shuffle([vectors[k], vectors[4 + k]], indices(
                [lanes * v + 4 * (lane + 2 * h) + e for v in (0, 1) for h in (0, 1) for e in range(4)])), "int32x16"))
            word = out[-1].var
            b = tirx.Var("b", "int32")  # codes 0-2 (a loop: the decoder's TVMScript stays short), then code 3
            shared, value = low_codes(b)
            out += [panel_gemm.RunLoop(b, CODES_PER_WORD - 1, [
                *shared, panel_gemm.RunStore(w * CODES_PER_WORD + b, value(word))]), panel_gemm.RunStore(
                    w * CODES_PER_WORD + CODES_PER_WORD - 1, tirx.Cast("float32x16", word >> broadcast(24, "int32")))]
        return out

    def low_codes(b):
        """The loop's bindings and code ``b`` (0-2) of each lane's word (int32x16) as float32: codes 0 and 1 where
        they are, code 2 shifted down to code 1's byte, read as the low bits of a float's mantissa: 2 operations a
        vector where shifting the code to the top, back with its sign and converting took 3 (the mask and the
        float's other bits in one vpternlogd, then a subtract)."""
        at = tirx.min(b, 1)  # the code's byte in the word
        exponent = 23 - at * 8
        # the byte with its sign bit flipped (code + 128) as mantissa bits 8 at .. 8 at + 7 of a float of exponent
        # 23 - 8 at: the float is 2^(23 - 8 at) + code + 128, exact, and so is the difference
        shared = [bound("down", tirx.Broadcast(((b - at) * 8).astype("uint32"), lanes), "uint32x16"),
                  bound("mask", tirx.Broadcast(tirx.const(255, "int32") << at * 8, lanes), "int32x16"),
                  bound("high", tirx.Broadcast((exponent + 127) << 23 | tirx.const(128, "int32") << at * 8,
                                               lanes), "int32x16"),
                  bound("bias", tirx.Broadcast(((tirx.const(1, "int32") << exponent) + 128).astype("float32"),
                                               lanes), "float32x16")]
        down, mask, high, bias = (binding.var for binding in shared)

        def value(word):
            moved = tirx.reinterpret("int32x16", tirx.reinterpret("uint32x16", word) >> down)
            return tirx.reinterpret("float32x16", (moved & mask) ^ high) - bias

        return shared, value

    def runs(buffers, first, g):
        _, _, _, columns, meta, sensitive_words = buffers
        if count == 0:
            return pruned(columns, meta, first, g)
        if count == n:
            return sensitive(sensitive_words, first, g)
        return [panel_gemm.RunChoice(first < count, sensitive(sensitive_words, first, g),
                                     pruned(columns, meta, first, g))]

    return runs


@per_layout
def gemm(enc: Encoded, tables: str = "fp32") -> tirx.PrimFunc:
    """Scheduled ``f(x [m, K], scales, position, sensitive, columns, meta, out [m, N])`` for several rows: the panel
    GEMM in stored order, merged into the output channels (``columns`` as :func:`constants` lays
    them out for ``tables``). Where the CPU has the bit transposes (:func:`.lut.bit_transpose_supported`), decoded a
    run of rows at a time (:func:`run_weights`); else weight by weight (:func:`panel_value`)."""
    holders = placeholders(constants(enc, tables))
    scales, position, sensitive, columns, meta = holders
    views = [(panel_gemm.word_view(sensitive, "int32"), sensitive)]
    if lut.bit_transpose_supported(tvm.target.Target.current()):
        return panel_gemm.gemm(panel_gemm.ByRuns(run_weights(enc, tables), bbs.GROUP, views), holders, *enc.shape,
                               scale=lambda row: scales[row], position=position)
    if tables == "int8":
        views.append((panel_gemm.word_view(columns, "uint32"), columns))
    read = [scales, position, views[0][0], views[-1][0] if tables == "int8" else columns, meta]
    decode = panel_gemm.ByWeight(panel_value(enc, read, tables), group=bbs.GROUP, unroll=CODES_PER_WORD, views=views)
    return panel_gemm.gemm(decode, holders, *enc.shape, scale=lambda row: scales[row], position=position)


@register(bbs.NAME, ops=("matmul", "conv2d"), target="llvm")
def llvm_call(enc: Encoded, conv: ConvSpec | None, lut_tables: str = bbs.Config.lut_tables) -> KernelCall:
    """Matmul: the LUT bit-serial GEMV for one row (AVX-512; else the decode-once GEMV), the panel GEMM above;
    conv: decode. ``lut_tables`` (``bbs.Config.lut_tables``): the GEMV's tables as ``lut_tables.chosen`` picks them;
    int8 takes 4 kept columns (fp32 else) and needs AVX512-BW and VNNI too: on a CPU without them the exact fp32
    tables run (as do convs and CPUs without AVX-512: the encoding is the same)."""
    if conv is not None:  # the kept columns by channel where they fit a nibble
        channels = nibbles_fit(enc)
        tensors = channel_constants(enc) if channels else constants(enc)
        holders = placeholders(tensors, CHANNEL_NAMES if channels else NAMES)
        weight = output_weight(enc, holders, nibble_value if channels else pruned_value)
        decoder = decode.elementwise(weight, holders, *decode.destination(enc, conv))
        return decode.with_decoder(None, decoder, "bbs", tensors, conv)
    target = tvm.target.Target.current()  # kernel_for builds within its target
    if not lut.supported(target):
        return panel_gemm.with_gemm(KernelCall("bbs_decoded", matmul(enc), constants(enc)), gemm(enc), "bbs")
    tables = chosen(lut_tables, bbs_lut.int8_fits(enc), lut.int8_supported(target))
    kind = f"{bbs_lut.KIND}{INT8_KIND_SUFFIX if tables == 'int8' else ''}"
    small = KernelCall(kind, bbs_lut.gemv(enc, tables), constants(enc, tables))
    return panel_gemm.with_gemm(small, gemm(enc, tables), "bbs")

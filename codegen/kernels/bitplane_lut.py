"""The batch-1 ``bie-bitplane`` kernel: look-up-table bit-serial GEMV (AVX-512), 1 to 8 planes.

Each weight's integer ``q`` (sign and magnitude planes, :func:`.bitplane.integer_codes`)
is rewritten at compile time as two's complement over the planes it needs: with
``P`` magnitude planes kept (the lowest of them at significance ``2^shift``),
``q = 2^shift * r``, ``r`` in ``P + 1`` bits, plane 0 its sign bit of
significance ``-2^P``, plane ``b`` of significance ``2^(P - b)``. Every plane is
laid out as the look-ups of :mod:`.lut` read it (16 channels' words of one
group of 32 activations in one vector), so a group costs ``P + 1`` vectors of
look-ups (a sign-and-magnitude plane pair would cost two per magnitude plane).
Then per group ``dot += sum_b significance_b * colsum_b`` (in Horner form,
:func:`.lut.twos_complement_sum`; times the group's scales with ``group_size``,
a multiple of 32); ``2^shift`` and per-channel scales multiply the sum once.
The tables are exact float32 subset sums, so the result is the
reference decoder's up to float rounding.

One parallel loop over tasks of :func:`row_blocks` blocks of 16 channels,
computed group by group (the blocks share the group's table loads), each task
prefetching the next task's words into L2 while it computes (as in
:mod:`.bbs_lut`). Rows of activations are
processed one after the other (exact at any batch; meant for batch 1).

``tables="int8"`` (1 to 4 planes, the default there: ``lut_tables.chosen``) is
T-MAC's scheme: the tables quantized to int8 per group of 32 activations and
looked up 64 at a time with byte shuffles, see :func:`int8_gemv`; its error is
bounded by :func:`int8_error_bound`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tvm
from tvm import te, tirx
from tvm.script import tirx as T

from bie_compiler.codecs import bie_bitplane
from bie_compiler.codecs.lut_tables import INT8_KIND_SUFFIX

from ..kernel_registry import KernelCall
from ..layout_memo import KEPT
from . import column_runs, lut, panel_gemm

LANES, GROUP, NIBBLES = lut.LANES, lut.GROUP, lut.NIBBLES
FORM = "lut_planes"  # the progressive-precision form of the words (weights.PRECISION_ATTR)
TABLES = ("fp32", "int8")  # the look-up tables: exact float32 subset sums, or int8 quantized per group
QUAD = bie_bitplane.INT8_TABLE_PLANES  # planes of one channel in the 4 bytes that vpdpbusd sums: the int8 tables' most
TRIPLE = 3  # planes whose int8-table bytes are stored 3 a channel (int8_nibbles), read as vpdpbusd's 4 in registers
PAIRS = "llvm.x86.avx512.pmaddubs.w.512"  # vpmaddubsw zmm: int16 lanes = 2 products of unsigned and signed bytes


def twos_complement_planes(codes: np.ndarray, magnitude_planes: int) -> np.ndarray:
    """``codes`` [N, K] (int, ``|q| < 2^magnitude_planes``) as uint32 [P + 1, ceil(N / 16) * ceil(K / 32), 16]:
    plane ``b`` (0: the sign) of block ``blk`` and group ``g`` at row ``blk * KG + g``, lane = channel in the block,
    bit ``j`` of a word = weight ``32 g + j``; padding weights are zero."""
    n, k = codes.shape
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    bits = magnitude_planes + 1
    padded = np.zeros((blocks * LANES, kg * GROUP), np.int64)
    padded[:n, :k] = codes
    unsigned = padded & ((1 << bits) - 1)
    weights = np.left_shift(np.uint64(1), np.arange(GROUP, dtype=np.uint64))
    planes = []
    for b in range(bits):
        bit = ((unsigned >> (bits - 1 - b)) & 1).astype(np.uint64).reshape(blocks, LANES, kg, GROUP)
        words = (bit * weights).sum(axis=-1).astype(np.uint32)  # [blocks, 16, kg]
        planes.append(words.transpose(0, 2, 1).reshape(blocks * kg, LANES))
    return np.ascontiguousarray(np.stack(planes))


def codes_of_planes(words: np.ndarray, magnitude_planes: int) -> np.ndarray:
    """The integers ``r`` of :func:`twos_complement_planes`' words, int64 [blocks * KG, 16, 32] (its inverse, in the
    words' own order)."""
    bits = np.unpackbits(words.view(np.uint8).reshape(*words.shape, 4), axis=-1, bitorder="little").astype(np.int64)
    significance = np.array([-(1 << magnitude_planes)] + [1 << (magnitude_planes - b)
                                                          for b in range(1, magnitude_planes + 1)], np.int64)
    return np.tensordot(significance, bits, axes=(0, 0))


def lanes_of_scales(scales: np.ndarray) -> np.ndarray:
    """Scales [N, G] as float32 [ceil(N / 16), G, 16]: one vector of 16 channels' scales per group (padding 0)."""
    n, groups = scales.shape
    blocks = -(-n // LANES)
    padded = np.zeros((blocks * LANES, groups), np.float32)
    padded[:n] = scales
    return np.ascontiguousarray(padded.reshape(blocks, LANES, groups).transpose(0, 2, 1))


class Layout(NamedTuple):
    """What the kernels are built for: the weight [n, k], ``magnitude_planes`` (the words hold one more, the sign),
    the significance ``2^shift`` of the lowest, and ``groups`` scales per channel of ``scale_group`` weights along K
    (a multiple of GROUP, or the whole padded row when ``groups`` is 1)."""

    n: int
    k: int
    magnitude_planes: int
    shift: int
    scale_group: int
    groups: int


def words_of(codes: np.ndarray, magnitude_planes: int, tables: str = "fp32") -> np.ndarray:
    """The words the GEMV of ``tables`` reads for ``codes`` (:func:`twos_complement_planes` or :func:`int8_nibbles`)."""
    check_tables(tables, magnitude_planes)
    return (int8_nibbles if tables == "int8" else twos_complement_planes)(codes, magnitude_planes)


def check_tables(tables: str, magnitude_planes: int) -> None:
    if tables not in TABLES:
        raise ValueError(f"look-up tables must be one of {', '.join(TABLES)}, got {tables!r}")
    if tables == "int8" and magnitude_planes + 1 > QUAD:
        raise ValueError(f"int8 look-up tables take 1 to {QUAD} planes, not {magnitude_planes + 1}: use fp32 tables")


def kernel_call(layout: Layout, constants: list, kind: str, tables: str = "fp32") -> KernelCall:
    """The GEMV for one row over ``constants`` (words and scales, as :func:`words_of` and :func:`lanes_of_scales`
    lay them out) and, above one row, the panel GEMM over the same words. ``tables``: see the module docstring."""
    check_tables(tables, layout.magnitude_planes)
    words, scales = holders = [te.placeholder(c.shape, c.dtype.name, name)
                               for name, c in zip(("words", "scales"), constants)]
    build = int8_gemv if tables == "int8" else gemv
    gemv_kind = f"{kind}_lut{INT8_KIND_SUFFIX if tables == 'int8' else ''}"
    small = KernelCall(gemv_kind, build(**layout._asdict()), constants)
    return panel_gemm.with_gemm(small, panel_gemm_of(layout, words, scales, tables), kind)


def panel_gemm_of(layout: Layout, words: te.Tensor, scales: te.Tensor, tables: str = "fp32"):
    """The panel GEMM over the words: per-channel scales applied to the sums, grouped ones in the decode. Where the
    CPU has the bit transpose (:func:`.lut.bit_transpose_supported`) the words decode a run of channels at a time
    (:func:`int8_run_weights`, :func:`run_weights`), else weight by weight."""
    if lut.bit_transpose_supported(tvm.target.Target.current()):
        scale = None if layout.groups > 1 else (lambda c: scales[c // LANES, 0, c % LANES])
        runs = (int8_run_weights if tables == "int8" else run_weights)(**layout._asdict())
        return panel_gemm.gemm(panel_gemm.ByRuns(runs, GROUP), [words, scales], layout.n, layout.k, scale=scale)
    value_of, read, views = decoded_value, words, []
    if tables == "int8":
        read = int8_words(words, layout.magnitude_planes)
        value_of, views = int8_decoded_value, [(read, words)]
    if layout.groups == 1:
        value = panel_gemm.by_channel(value_of(read, **layout._asdict()), layout.n, LANES)
        return panel_gemm.gemm(panel_gemm.ByWeight(value, group=GROUP, views=views), [words, scales], layout.n,
                               layout.k, scale=lambda c: scales[c // LANES, 0, c % LANES])
    weight = panel_gemm.by_channel(decoded_weight(read, scales, **layout._asdict(), value_of=value_of),
                                   layout.n, LANES)
    return panel_gemm.gemm(panel_gemm.ByWeight(weight, group=GROUP, views=views), [words, scales], layout.n, layout.k)


def row_blocks(planes: int) -> int:
    """Blocks of 16 channels a parallel task of :func:`gemv` or :func:`int8_gemv` computes group by group, sharing each
    group's table loads: 2 up to 4 planes, where the loads are a larger share; above, the two blocks' sums and words
    spill registers (benchmarks/README.md, ``bitplane_gemv.py``, stop 18; the int8 tables: stop 21, 4 blocks no
    faster than 2)."""
    return 2 if planes <= 4 else 1


def task_blocks(n: int, planes: int) -> int:
    """Blocks of 16 channels the parallel tasks of :func:`task_loop` cover (whole tasks): its accumulators' rows."""
    blocks, per_task = -(-n // LANES), row_blocks(planes)
    return -(-blocks // per_task) * per_task


def task_loop(n: int, k: int, magnitude_planes: int, shift: int, scale_group: int, groups: int, lines: int):
    """A TIR macro ``(row, acc, out, scales, line, group_value, settled)``: the parallel loop of :func:`gemv` and
    :func:`int8_gemv` for row ``row`` of the output ``out`` [m, n], over tasks of :func:`row_blocks` blocks of 16
    channels computed group by group into ``acc`` [:func:`task_blocks`, 16] (the kernel's buffer: allocated once per
    call, not per parallel task), ``scales`` as :func:`lanes_of_scales` lays them out. The kernel gives the rest:

    * ``line(nxt, b)``: a load in the cache line of the ``b``-th of the ``lines`` vectors the kernel reads at row
      ``nxt`` (block * KG + group) of its words: the next task's, which the task prefetches into L2 as it computes;
    * ``group_value(blk, g)``: the float32x16 sums of block ``blk``'s 16 channels over group ``g`` before the
      scales (the group's scales multiply them here when ``groups`` > 1);
    * ``settled(total)``: a channel's accumulated sum made its sum before the per-channel scale and ``2^shift``
      (the int8 tables: less the codes' offset over the row)."""
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    per_task = row_blocks(magnitude_planes + 1)
    tasks = task_blocks(n, magnitude_planes + 1) // per_task
    unit = float(1 << shift)  # the significance of the lowest plane, applied to the sums at the end
    per_group = groups > 1
    assert not per_group or scale_group % GROUP == 0

    @T.macro
    def loop(row, acc, out, scales, line, group_value, settled):
        for task in T.parallel(tasks):
            for i in T.unroll(per_task):
                acc[task * per_task + i, T.Ramp(0, 1, LANES)] = T.Broadcast(T.float32(0), LANES)
            for g in range(kg):
                for i in T.unroll(per_task):
                    item: T.let = task * per_task + i
                    blk: T.let = T.min(item, blocks - 1)  # past the last block (odd blocks): its copy, not stored
                    nxt: T.let = T.min(blk + per_task, blocks - 1) * kg + g  # the next task's group
                    for b in T.unroll(lines):
                        lut.prefetch(line(nxt, b))
                    mixed: T.let = group_value(blk, g)
                    if per_group:
                        acc[item, T.Ramp(0, 1, LANES)] = acc[item, T.Ramp(0, 1, LANES)] + mixed * scales[
                            blk, g * GROUP // scale_group, T.Ramp(0, 1, LANES)]
                    else:
                        acc[item, T.Ramp(0, 1, LANES)] = acc[item, T.Ramp(0, 1, LANES)] + mixed
            for i in T.unroll(per_task):
                item: T.let = task * per_task + i
                for lane in range(LANES):
                    if item * LANES + lane < n:
                        if per_group:
                            out[row, item * LANES + lane] = settled(acc[item, lane]) * T.float32(unit)
                        else:
                            out[row, item * LANES + lane] = settled(acc[item, lane]) * T.float32(unit) * scales[
                                item, 0, lane]

    return loop


@functools.lru_cache(maxsize=KEPT)  # one build per layout (layout_memo)
def gemv(n: int, k: int, magnitude_planes: int, shift: int, scale_group: int, groups: int):
    """``f(x [m, K], words, scales, out [m, N])`` over :func:`twos_complement_planes` and :func:`lanes_of_scales`
    (see :class:`Layout`)."""
    planes = magnitude_planes + 1
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    kp = kg * GROUP
    fill_tables = lut.fill_wide_tables(k, kp)
    tasks = task_loop(n, k, magnitude_planes, shift, scale_group, groups, lines=planes)

    def plane_sums(table, words, blk, g):
        # the planes' look-ups of block blk's group g, summed with their significances
        return lut.twos_complement_sum([lut.column_sum(table, g * lut.FIELDS, T.reinterpret(
            "int32x16", words[b, blk * kg + g, T.Ramp(0, 1, LANES)])) for b in range(planes)])

    @T.prim_func(private=True)
    def main(
        var_x: T.handle,
        words: T.Buffer((planes, blocks * kg, LANES), "uint32"),
        scales: T.Buffer((blocks, groups, LANES), "float32"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        xpad = T.decl_buffer((kp,), "float32")
        table = T.decl_buffer((kg * lut.FIELDS, lut.WIDE), "float32")
        acc = T.decl_buffer((task_blocks(n, planes), LANES), "float32")
        for row in range(m):
            fill_tables(x, row, xpad, table)
            tasks(row, acc, out, scales, lambda nxt, b: words[b, nxt, 0],
                  lambda blk, g: plane_sums(table, words, blk, g), lambda total: total)

    return main


def decoded_value(words, *, n: int, k: int, magnitude_planes: int, shift: int, **_):
    """``f(n, kk)``: the integer the words (a TE tensor) hold for weight ``kk`` of channel ``n``, before its scale."""
    kg = -(-k // GROUP)
    significance = [-(1 << magnitude_planes) << shift] + [(1 << (magnitude_planes - b)) << shift
                                                          for b in range(1, magnitude_planes + 1)]

    def value(n, kk):
        row, lane = n // LANES * kg + kk // GROUP, n % LANES
        bit = tirx.const(1, "uint32") << (kk % GROUP).astype("uint32")
        zero = tirx.const(0, "int32")
        # each plane's bit selects its significance: a mask test and a blend per vector of words, fewer vector
        # operations than shifting the bit down and multiplying (the panel GEMM at 8 rows: 15 % faster)
        return lut.tree([tirx.Select(words[b, row, lane] & bit != tirx.const(0, "uint32"), tirx.const(s, "int32"),
                                     zero) for b, s in enumerate(significance)])

    return value


def run_weights(n: int, k: int, magnitude_planes: int, shift: int, scale_group: int, groups: int):
    """The panel GEMM's decode of :func:`twos_complement_planes`' words a run of 16 channels and a group at a time
    (a :data:`.panel_gemm.RunWeights`): a run's planes are bit columns as :mod:`.column_runs` decodes them (plane 0
    the sign, plane ``b`` of significance ``2^(P - b)``), the values of :func:`decoded_value` (times the group's
    scales when ``groups`` > 1)."""
    kg = -(-k // GROUP)

    def runs(holders, first, g):
        words, scales = holders
        row = first // LANES * kg + g
        scale = scales[first // LANES, g * GROUP // scale_group, tirx.Ramp(0, 1, LANES)] if groups > 1 else None
        return column_runs.decoded(lambda b: words[b, row, tirx.Ramp(0, 1, LANES)], magnitude_planes + 1,
                                   float(1 << shift), scale=scale)

    return runs


def decoded_weight(words, scales, *, n: int, k: int, magnitude_planes: int, shift: int, scale_group: int,
                   groups: int, value_of=decoded_value):
    """``f(n, kk)``: the float32 weight the words and scales (TE tensors) hold (``value_of``: the words' form)."""
    value = value_of(words, n=n, k=k, magnitude_planes=magnitude_planes, shift=shift)
    return lambda n, kk: value(n, kk).astype("float32") * scales[n // LANES, kk // scale_group if groups > 1 else 0,
                                                                 n % LANES]


# --- int8 tables ------------------------------------------------------------------------------------------------------


def int8_planes(magnitude_planes: int) -> int:
    """Planes a channel has in the bytes the int8-table GEMV's dot products sum: 2 (up to 2 planes: vpmaddubsw sums
    byte pairs) or QUAD (vpdpbusd; at 3 planes the first is zero, not stored: :func:`int8_stored_planes`)."""
    return 2 if magnitude_planes + 1 <= 2 else QUAD


def int8_stored_planes(magnitude_planes: int) -> int:
    """Vectors of 64 bytes in a row of :func:`int8_nibbles` (a channel's bytes per table, on average):
    :func:`int8_planes`, but 3 at 3 planes (the zero plane is not stored)."""
    return TRIPLE if magnitude_planes + 1 == TRIPLE else int8_planes(magnitude_planes)


def int8_nibbles(codes: np.ndarray, magnitude_planes: int) -> np.ndarray:
    """``codes`` [N, K] (``|q| < 2^P``, P = ``magnitude_planes`` < QUAD) as the int8-table GEMV's look-up indices, uint8
    [ceil(N / 16) * ceil(K / 32), B, 64] (B = :func:`int8_stored_planes`): row ``blk * KG + g`` for channel block
    ``blk`` and group ``g``.

    A code is stored offset binary, ``u = q + 2^P`` in [0, 2^(P + 1)), as S = :func:`int8_planes` planes (bit
    S - 1 - p of ``u`` in plane ``p``; with S = 4 and 3 planes the first is zero). Table ``t`` of a group is its
    weights ``4 t .. 4 t + 3`` (nibble bit ``i``: weight ``4 t + i``). A vector's 128-bit lane ``l`` looks up one
    table, ``l // S`` of those of the vector (4 / S of them), for the block's channels ``(l % S) * 16 / S`` on, each
    channel's S planes in S consecutive bytes (what vpdpbusd or vpmaddubsw sums); vector ``h``'s low nibbles are
    tables ``h * 4 / S`` on, its high nibbles the tables 4 further. Padding weights are zero (``u = 2^P``).

    B = S: a row is its S vectors. B = 3 (3 planes): the zero plane, byte 0 of each word, is not stored; a row is
    vectors 0 to 2, each with its planes in the bytes :func:`triple_bytes` of its words, and in the byte left free
    (byte ``h`` of vector ``h``) plane ``h + 1`` of vector 3 (read by :func:`int8_index_vector`)."""
    n, k = codes.shape
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    span = int8_planes(magnitude_planes)
    padded = np.zeros((blocks * LANES, kg * GROUP), np.int64)
    padded[:n, :k] = codes
    u = padded + (1 << magnitude_planes)
    bits = (u[..., None] >> (span - 1 - np.arange(span))) & 1  # [N, K, plane]
    # [blk, channel group, channel, g, high nibble, vector, table of the vector, weight, plane]
    bits = bits.reshape(blocks, span, LANES // span, kg, 2, span, QUAD // span, 4, span)
    nibble = (bits << np.arange(4)[:, None]).sum(axis=7)
    byte = nibble[:, :, :, :, 0] | (nibble[:, :, :, :, 1] << 4)  # [blk, group, channel, g, vector, table, plane]
    vectors = byte.transpose(0, 3, 4, 5, 1, 2, 6).reshape(blocks * kg, span, 64).astype(np.uint8)
    if int8_stored_planes(magnitude_planes) == TRIPLE:  # vector 3's plane h + 1 in byte h of vector h's words
        words = vectors.reshape(blocks * kg, QUAD, LANES, QUAD)
        vectors = np.empty_like(words[:, :TRIPLE])
        for h in range(TRIPLE):
            vectors[:, h][..., triple_bytes(h)] = words[:, h, :, 1:]
            vectors[:, h, :, h] = words[:, TRIPLE, :, h + 1]
    return np.ascontiguousarray(vectors.reshape(blocks * kg, int8_stored_planes(magnitude_planes), 64))


def int8_index_vector(rows: T.Buffer, r, h: int, magnitude_planes: int):
    """Index vector ``h`` (uint8x64) of row ``r`` of :func:`int8_nibbles`' bytes (``rows``: a TIR buffer [rows, 64 B]
    over them) and the weights of its words' bytes in the dot product (a uint32 pattern: plane ``p`` of S weighs
    ``2^(S - 1 - p)``, a byte of no plane of the vector 0).

    At 3 planes vectors 0 to 2 are the row's vectors, each with one byte of vector 3's in its words (weighing 0), and
    vector 3 is those bytes put together (LLVM: a vpandq and two vpternlogq): 192 bytes read per row, not 256, for
    3 more logic operations (a byte permutation a vector, vpermb, was slower: benchmarks/README.md,
    ``bitplane_gemv.py``, stop 22)."""
    stored = int8_stored_planes(magnitude_planes)
    if stored != TRIPLE:
        return rows[r, T.Ramp(64 * h, 1, 64)], 0x01020408 if stored == QUAD else 0x01020102
    if h < TRIPLE:
        return rows[r, T.Ramp(64 * h, 1, 64)], sum(w << 8 * q for w, q in zip((4, 2, 1), triple_bytes(h)))
    words = [T.reinterpret("uint32x16", rows[r, T.Ramp(64 * j, 1, 64)]) for j in range(TRIPLE)]
    mask = [T.Broadcast(T.uint32(255 << 8 * j), LANES) for j in range(TRIPLE)]
    return T.reinterpret("uint8x64", (words[0] & mask[0]) | (words[1] & mask[1]) | (words[2] & mask[2])), 0x00010204


def triple_bytes(h: int) -> list:
    """The bytes of its words that vector ``h`` < 3 of a 3-plane row holds its planes 1 to 3 in: all but byte ``h``,
    which holds plane ``h + 1`` of vector 3."""
    return [q for q in range(QUAD) if q != h]


def int8_words(nibbles: te.Tensor, magnitude_planes: int) -> te.Tensor:
    """:func:`int8_nibbles`' bytes (a TE tensor) as the words :func:`int8_decoded_value` reads (a
    :func:`.panel_gemm.word_view`): a channel's S planes are S consecutive bytes, one word (at 3 planes the word's
    4 bytes hold 3 planes of one vector and one of vector 3)."""
    return panel_gemm.word_view(nibbles, f"uint{8 * int8_planes(magnitude_planes)}")


def int8_decoded_value(words, *, n: int, k: int, magnitude_planes: int, shift: int, **_):
    """``f(n, kk)``: the integer :func:`int8_nibbles`' bytes hold for weight ``kk`` of channel ``n``, read from
    :func:`int8_words` (a TE tensor): the panel GEMM's decode where the CPU has no bit transpose (GFNI and VBMI, see
    :func:`int8_run_weights`). Word ``t % (4 / S) * 16 + c`` of vector ``t % 4 // (4 / S)`` is channel ``c``'s S
    planes for table ``t``, a vector along the channels; plane ``p``'s bit of the weight is bit ``8 p + b`` of it. At
    3 planes plane ``p`` (1 to 3) of vector ``h = t % 4`` is byte ``p - 1`` (below ``h``) or ``p`` of word ``c`` of
    vector ``h``, and of vector 3 byte ``p - 1`` of vector ``p - 1``'s (see :func:`triple_bytes`)."""
    kg = -(-k // GROUP)
    span = int8_planes(magnitude_planes)
    per_vector = QUAD // span  # tables of a vector's low nibbles
    dtype = words.dtype
    # plane p weighs 2^(S - 1 - p) in the offset-binary code u < 2^(P + 1): the planes above P + 1 are zero
    planes = range(span - 1 - magnitude_planes, span)
    triple = int8_stored_planes(magnitude_planes) == TRIPLE

    def value(n, kk):
        row, table, i = n // LANES * kg + kk // GROUP, kk % GROUP // 4, kk % 4
        bit = (table // QUAD * 4 + i).astype(dtype)
        h = table % QUAD
        if triple:  # vector 3's word put together from the byte it has in each of the row's 3 (the same for 32 weights)
            vector3 = lut.tree_of(lambda a, b: a | b, [words[row, j, n % LANES] & tirx.const(255 << 8 * j, dtype)
                                                       for j in range(TRIPLE)])
            word = tirx.Select(h < TRIPLE, words[row, tirx.min(h, TRIPLE - 1), n % LANES], vector3)
        else:
            word = words[row, h // per_vector, table % per_vector * LANES + n % LANES]

        def term(p):
            # plane p's byte: byte p of the word (at 3 planes byte p - 1 of vector 3's, and of vector h's below h)
            at = tirx.Select(h <= p - 1, 8 * p, 8 * (p - 1)).astype(dtype) if triple else tirx.const(8 * p, dtype)
            # as decoded_value: each plane's bit selects its significance (a mask test and a blend per vector)
            return tirx.Select(word & (tirx.const(1, dtype) << (bit + at)) != tirx.const(0, dtype),
                               tirx.const((1 << (span - 1 - p)) << shift, "int32"), tirx.const(0, "int32"))

        return lut.tree([term(p) for p in planes]) - tirx.const((1 << magnitude_planes) << shift, "int32")

    return value


def int8_run_weights(n: int, k: int, magnitude_planes: int, shift: int, scale_group: int, groups: int):
    """The panel GEMM's decode of :func:`int8_nibbles`' bytes a run of 16 channels and a group at a time (a
    :data:`.panel_gemm.RunWeights`, its items :class:`.panel_gemm.RunStore`): the values of :func:`int8_decoded_value`
    (times the group's scales when ``groups`` > 1), a vector of 16 channels' weights in 2 vector operations and one
    bit transpose per 8 weights (about 3 instructions a vector in LLVM's code; the per-weight decode: 30, with scalar
    shifts and broadcasts).

    A qword of an index vector is 2 channels' words (at 2 planes: 4 channels'; their 16-bit words first permuted so
    that a qword holds 2 channels of each of its two tables), its 8 bytes the channels' planes, bit ``j`` of each
    weight ``j`` of a table. vgf2p8affineqb with the vector as its matrices transposes each qword's 8 x 8 bits: byte
    ``j`` then holds weight ``j``'s planes of every channel of the qword, bit ``7 - b`` from byte ``b``. Per weight,
    vpmultishiftqb moves each lane's channel's bits to the bottom of the lane, and vpermps looks the lane's 4 low bits
    up in a register of the 16 values they can code (the bits of the other channel above them, or a plane of
    another vector at 3 planes, weigh 0 there)."""
    kg = -(-k // GROUP)
    span, stored = int8_planes(magnitude_planes), int8_stored_planes(magnitude_planes)
    planes = range(span - 1 - magnitude_planes, span)  # plane p weighs 2^(span - 1 - p) in the offset-binary code
    # each stored vector's planes' bytes in a channel's word (at 3 planes vector 3 is put together: byte p - 1)
    bytes_of = ([{p: p for p in planes}] * span if stored != TRIPLE
                else [dict(zip(planes, triple_bytes(h))) for h in range(TRIPLE)] + [{p: p - 1 for p in planes}])
    per_vector = QUAD // span  # tables of a vector's low nibbles

    def table(byte_of):
        # the values of the 4 index bits of a lane: bit span - 1 - b from its channel's byte b (bits span and up are
        # another channel's, weighing 0), the planes' code less the offset, times 2^shift
        ramp = tirx.Ramp(tirx.const(0, "int32"), tirx.const(1, "int32"), LANES)
        code = lut.tree([((ramp >> (span - 1 - byte_of[p])) & 1) << (span - 1 - p) for p in planes])
        return tirx.Cast("float32x16", (code - (1 << magnitude_planes)) << shift)

    def weights(bits, table_of, kk, at):
        # weight kk of the run: each lane's index bits from bit at of its qword (even lanes), at - span (odd lanes)
        return panel_gemm.RunStore(kk, tirx.call_llvm_pure_intrin("float32x16", lut.PERMUTE, table_of,
                                                                  lut.lane_bits(bits, at, at - span)))

    def runs(holders, first, g):
        nibbles, scales = holders
        row = first // LANES * kg + g
        vectors = [nibbles[row, h, tirx.Ramp(0, 1, LANES * QUAD)] for h in range(stored)]
        if stored == TRIPLE:  # vector 3: byte h of each word of vector h
            words = [tirx.reinterpret("uint32x16", v) for v in vectors]
            vectors.append(tirx.reinterpret("uint8x64", lut.tree_of(lambda a, b: a | b, [
                w & tirx.Broadcast(tirx.const(255 << 8 * h, "uint32"), LANES) for h, w in enumerate(words)])))
        if span == 2:  # qword q: the 16-bit words of channels 2q, 2q + 1 of the vector's two tables
            order = [i for q in range(LANES // 2) for i in (2 * q, 2 * q + 1, LANES + 2 * q, LANES + 2 * q + 1)]
            vectors = [tirx.reinterpret("uint8x64", tirx.Shuffle([tirx.reinterpret("uint16x32", v)],
                                                                  [tirx.IntImm("int32", i) for i in order]))
                       for v in vectors]
        out = []
        for h, vector in enumerate(vectors):
            bits, table_of = lut.bit_transposed(vector), table(bytes_of[h])
            for half in range(per_vector):  # the vector's tables h * per_vector + half (and 4 further)
                t = h * per_vector + half
                for j in range(8):  # index bit j: weight j % 4 of table t, or of table t + 4
                    kk = 4 * (t + 4 * (j // 4)) + j % 4
                    out.append(weights(bits, table_of, kk, 8 * j + 8 - span * (2 * half + 1)))
        if groups > 1:
            scale = scales[first // LANES, g * GROUP // scale_group, tirx.Ramp(0, 1, LANES)]
            out = [panel_gemm.RunStore(kk, value * scale) for kk, value in out]
        return out

    return runs


def int8_error_bound(x: np.ndarray, layout: Layout, scales: np.ndarray) -> np.ndarray:
    """The stated bound of the int8-table GEMV's error against the exact product, per output [m, n], for ``x``
    [m, k] and the per-channel or grouped ``scales`` [n, groups] (as the codec gives them; float rounding aside).

    A table entry rounded to the step ``s_g`` of its group is off by at most ``s_g / 2``; a channel looks up each of
    the group's 8 tables once per plane, the planes weighing ``2^(P - p)`` (at most ``2^(P + 1) - 1`` together), so
    the group contributes at most ``8 * (2^(P + 1) - 1) * s_g / 2 * 2^shift * |scale|``."""
    steps = lut.int8_table_steps(x, layout.k)  # [m, KG]
    weight = 4 * ((1 << (layout.magnitude_planes + 1)) - 1) * float(1 << layout.shift)
    kg = steps.shape[1]
    group_scale = np.abs(scales[:, np.arange(kg) * GROUP // layout.scale_group if layout.groups > 1 else [0] * kg])
    return weight * steps @ group_scale.T


@functools.lru_cache(maxsize=KEPT)  # one build per layout (layout_memo)
def int8_gemv(n: int, k: int, magnitude_planes: int, shift: int, scale_group: int, groups: int):
    """``f(x [m, K], nibbles, scales, out [m, N])`` over :func:`int8_nibbles` and :func:`lanes_of_scales`: the GEMV
    with int8 tables.

    Per row, each group's 8 float32 tables are quantized with one step ``s_g`` (the group's largest entry over
    TABLE_PEAK, rounded to nearest) and stored as the 128-bit lanes of vectors need them (see ``stored``). Per
    block of 16 channels and group: S vectors of 64 index bytes (:func:`int8_index_vector`), each split into its
    low and high nibbles (2 look-up vectors), each looked up with vpshufb and its channels' S planes summed with the
    planes' weights ``2^(S - 1 - p)`` as unsigned bytes: vpdpbusd into int32 (S = 4: 16 channels a vector), or
    vpmaddubsw into int16 (S = 2: 16 channels in each half, added at the end of the group). That is the group's
    exact integer sum for 16 channels in 2 S shuffles, times ``s_g`` into a float32 accumulator. The offset of the
    codes, ``2^P * sum(x)``, is subtracted with the exact activation sum."""
    check_tables("int8", magnitude_planes)
    blocks, kg = -(-n // LANES), -(-k // GROUP)
    kp = kg * GROUP
    span, stored_planes = int8_planes(magnitude_planes), int8_stored_planes(magnitude_planes)
    width = LANES * QUAD  # bytes in a vector
    # a vector of look-ups holds QUAD / span tables of 16 entries, each in span 128-bit lanes. Stored once each: a
    # quad vector's one table, loaded into its four lanes with a broadcast (64 KiB of tables at K = 4096 would not
    # stay in L1: the streamed GEMV waited on their reloads); a pair vector's [a, a, b, b] as the vector is (its two
    # tables stored once would cost an insert per vector: 1.2x the time in L2, benchmarks/README.md)
    per_vector = QUAD // span
    copies = 1 if span == QUAD else span
    stored = 16 * per_vector * copies
    offset = float(1 << magnitude_planes)
    per_group = groups > 1
    fill_tables = lut.fill_tables(k, kp)
    tasks = task_loop(n, k, magnitude_planes, shift, scale_group, groups, lines=stored_planes)

    def weights(pattern):
        # an index vector's byte weights (int8_index_vector's uint32 pattern) in every word
        return T.reinterpret("uint8x64", tirx.Broadcast(tirx.const(pattern, "uint32"), LANES))

    def looked_up(small, first, nibbles):
        # the vector of tables first .. first + QUAD / span - 1, each in span 128-bit lanes
        row = small[first // per_vector, T.Ramp(0, 1, stored)]
        lanes = row if stored == width else tirx.Shuffle([row] * (width // stored),
                                                         [tirx.IntImm("int32", i) for i in range(width)])
        return tirx.call_llvm_pure_intrin("int8x64", lut.SHUFFLE, lanes, T.reinterpret("int8x64", nibbles))

    def quad_sum(small, first, index):
        # the int32 sums of one index vector's 2 look-ups for 16 channels (vector h: table rows h and h + QUAD)
        v, pattern = index
        zero = T.Broadcast(T.int32(0), LANES)
        low = tirx.call_llvm_pure_intrin("int32x16", lut.DOT, zero, weights(pattern),
                                         looked_up(small, first, v & T.Broadcast(T.uint8(15), width)))
        return tirx.call_llvm_pure_intrin("int32x16", lut.DOT, low, weights(pattern),
                                          looked_up(small, first + 4, v >> T.Broadcast(T.uint8(4), width)))

    def pair_sum(small, first, index):
        # the int16 sums of one index vector's 2 look-ups: channels 0-15 of its tables h * 2 (words 0-15) and
        # h * 2 + 1 (words 16-31), h * 2 + 4 and h * 2 + 5 (table rows h and h + 2)
        v, pattern = index
        return (tirx.call_llvm_pure_intrin("int16x32", PAIRS, weights(pattern),
                                           looked_up(small, first, v & T.Broadcast(T.uint8(15), width)))
                + tirx.call_llvm_pure_intrin("int16x32", PAIRS, weights(pattern),
                                             looked_up(small, first + 4, v >> T.Broadcast(T.uint8(4), width))))

    def group_dot(small, first, words):
        # the group's int32 sums for 16 channels from its S index vectors
        if span == QUAD:
            return lut.tree([quad_sum(small, first + h, words(h)) for h in range(span)])
        total = lut.tree([pair_sum(small, first + 2 * h, words(h)) for h in range(span)])
        return (T.Cast("int32x16", tirx.Shuffle([total], [tirx.IntImm("int32", i) for i in range(LANES)]))
                + T.Cast("int32x16", tirx.Shuffle([total], [tirx.IntImm("int32", LANES + i) for i in range(LANES)])))

    def group_value(small, step, group_sum, rows, blk, g):
        # the group's look-up sums times its step; with grouped scales less the offset's share, 2^P * S_g (with
        # per-channel scales the whole row's is subtracted once, see settled)
        mixed = T.Cast("float32x16", group_dot(small, g * NIBBLES, lambda h: int8_index_vector(
            rows, blk * kg + g, h, magnitude_planes))) * T.Broadcast(step[g], LANES)
        return mixed - T.Broadcast(T.float32(offset) * group_sum[g], LANES) if per_group else mixed

    def settled(total, row_sum):
        return total if per_group else total - T.float32(offset) * row_sum

    @T.prim_func(private=True)
    def main(
        var_x: T.handle,
        nibbles: T.Buffer((blocks * kg, stored_planes, width), "uint8"),
        scales: T.Buffer((blocks, groups, LANES), "float32"),
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        out = T.match_buffer(var_out, (m, n), "float32")
        xpad = T.decl_buffer((kp,), "float32")
        table = T.decl_buffer((kp // 4, 16), "float32")
        small = T.decl_buffer((kp // 4 // per_vector, stored), "int8")  # the int8 tables, as the vectors repeat them
        step = T.decl_buffer((kg,), "float32")
        group_sum = T.decl_buffer((kg,), "float32")
        total = T.decl_buffer((1,), "float32")
        acc = T.decl_buffer((task_blocks(n, magnitude_planes + 1), LANES), "float32")
        rows = T.decl_buffer((blocks * kg, stored_planes * width), "uint8", data=nibbles.data)
        for row in range(m):
            fill_tables(x, row, xpad, table)
            total[0] = T.float32(0)
            for g in range(kg):
                peak: T.let = lut.table_peak(table, g * NIBBLES)
                step[g] = peak / T.float32(lut.TABLE_PEAK)
                scale: T.let = lut.int8_scale(peak)
                for t in T.unroll(NIBBLES):
                    entries: T.let = lut.int8_entries(table, g * NIBBLES + t, scale)
                    for copy in T.unroll(copies):
                        small[(g * NIBBLES + t) // per_vector, T.Ramp((t % per_vector * copies + copy) * 16, 1,
                                                                      16)] = entries
                group_sum[g] = lut.nibbles_total(table, g * NIBBLES)
                total[0] = total[0] + group_sum[g]
            tasks(row, acc, out, scales, lambda nxt, h: nibbles[nxt, h, 0],
                  lambda blk, g: group_value(small, step, group_sum, rows, blk, g),
                  lambda acc_total: settled(acc_total, total[0]))

    return main

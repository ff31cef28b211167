"""Matmuls over K-interleaved bit planes (``bie-bitplane``, ``bie-binary`` bitmap).

``compute`` is for one row of activations on the CPU: ``out[m, n] = sum_k
x[m, k] * w[n, k]``, each weight ``w = +-scale[n, k // group] * sum_b 2^(top - b)
plane_b[n, k]`` decoded from its bits where it is multiplied (16 at a time, one
vector per plane): the work and the bytes read scale with the planes kept.

``decoded_weight`` is that weight element by element, also for the decode
kernels of convs and of several rows where the planes are not rewritten as
look-up-table words or integer codes (:mod:`.decode`): there decoding per row
would be repeated, decoding once and a dense GEMM is cheaper.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from bie_compiler.codecs import Encoded, bie_bitplane
from bie_compiler.codecs.base import PACK_LANES, pack_bits, unpack_bits
from bie_compiler.codecs.lut_tables import INT8_KIND_SUFFIX, chosen

from ..kernel_registry import ConvSpec, KernelCall, register
from ..weights import PRECISION_ATTR
from . import bitplane_cuda, bitplane_lut, decode, int8, lut, warp_layout

BLOCK = "bitplane"
LUT_KIND = f"{BLOCK}_lut"  # the look-up-table GEMV's kind (:func:`bitplane_lut.kernel_call`): its symbols' suffix
INT8_LUT_KIND = f"{LUT_KIND}{INT8_KIND_SUFFIX}"  # that GEMV's with int8 tables
INT8_FORM = "int8_nibbles"  # the progressive-precision form of the int8 tables' bytes (bitplane_lut.int8_nibbles)


CHANNELS = 4  # channels interleaved in the inner loop: independent FMA chains (the FMA latency over its throughput)


def compute(x: te.Tensor, planes: te.Tensor, signs: te.Tensor, scales: te.Tensor, *, k: int, top_bit: int, group: int):
    """TE definition. x [M, K] float32; planes uint8 [P, N, KB]; signs uint8 [N, KB]; scales float32 [N, G].

    The reduction runs over (bit j, byte w) of the packed bytes (weight ``j * KB + w``) in vectors of
    :func:`vector_lanes` consecutive bytes, which hold as many consecutive weights' bits ``j``. KB follows K, not
    the vector width: when the vectors do not tile a row, the last one ends at the row's end, overlapping the one
    before, and its activations are zero where that one counted the weights already (block ``xpad``: the
    activations in the reduction's order, zero where a weight is padding or counted before).
    """
    kb = int(planes.shape[2])
    lanes = vector_lanes(kb)
    steps = -(-kb // lanes)
    first_byte = (lambda v: v * lanes) if kb % lanes == 0 else (lambda v: tirx.min(v * lanes, kb - lanes))

    def activation(m, kk):
        j, v, lane = kk // (steps * lanes), kk // lanes % steps, kk % lanes
        w = first_byte(v) + lane
        counted_here = tirx.all(w >= v * lanes, j * kb + w < k)
        return te.if_then_else(counted_here, x[m, j * kb + w], tirx.const(0, "float32"))

    xpad = te.compute((x.shape[0], 8 * steps * lanes), activation, name="xpad")
    weight = weight_at(planes, signs, scales, top_bit=top_bit, group=group)
    rj = te.reduce_axis((0, 8), "rj")
    rw = te.reduce_axis((0, steps * lanes), "rw")
    return te.compute((x.shape[0], int(planes.shape[1])), lambda m, n: te.sum(
        xpad[m, rj * steps * lanes + rw] * weight(n, rj, first_byte(rw // lanes) + rw % lanes), axis=[rj, rw]),
        name=BLOCK)


def vector_lanes(kb: int) -> int:
    """Bytes of a plane row the CPU kernel reads at once: 16, or a shorter row whole."""
    return min(PACK_LANES, kb)


def schedule_llvm(sch: s_tir.Schedule) -> None:
    """Tiles of CHANNELS channels in parallel; per tile, bit and vector of bytes, each channel's weights decoded
    (:func:`weight_at`, the planes summed apart from the accumulator) into one FMA on its accumulator.
    The accumulators (rfactor-ed over the lanes, lanes contiguous) stay in registers; their lanes are summed once."""
    block = sch.get_sblock(BLOCK)
    planes = next(r.source for r in sch.get(block).reads if r.source.name == "planes")
    lanes = vector_lanes(int(planes.shape[2]))
    m, n, rj, rw = sch.get_loops(block)
    rw_outer, rw_lane = sch.split(rw, [None, lanes])
    partial = sch.rfactor(rw_lane, factor_axis=2)
    sch.set_scope(partial, 0, "local")
    m, n, rj, rw_outer, lane = sch.get_loops(partial)
    channels = max(d for d in range(1, CHANNELS + 1) if int(sch.get(n).extent) % d == 0)
    tile, channel = sch.split(n, [None, channels])
    sch.reorder(tile, m, rj, rw_outer, channel, lane)
    sch.unroll(channel)
    sch.vectorize(lane)
    sch.parallel(tile)
    sch.reverse_compute_at(block, m)
    sch.decompose_reduction(partial, rj)
    _, kk = sch.get_loops(sch.get_sblock("xpad"))
    sch.vectorize(sch.split(kk, [None, lanes])[1])


def weight_at(planes: te.Tensor, signs: te.Tensor, scales: te.Tensor, *, top_bit: int, group: int):
    """``f(n, j, w)``: the float32 weight whose bits are bit ``j`` of byte ``w`` of channel ``n``'s planes and sign
    (weight ``j * KB + w``). Its signed magnitude is integer arithmetic on the bits (the planes OR-ed, negated in two's
    complement by the sign bit ``s``: ``(v ^ -s) + s``), converted to float once."""
    kb = int(planes.shape[2])
    one = tirx.const(1, "int32")

    def weight(n, j, w):
        shift = j.astype("int32")
        bit = lambda byte: (byte.astype("int32") >> shift) & one  # noqa: E731
        magnitude = functools.reduce(lambda a, b: a | b, [bit(planes[b, n, w]) << (top_bit - b)
                                                          for b in range(int(planes.shape[0]))])
        sign = bit(signs[n, w])
        signed = (magnitude ^ (tirx.const(0, "int32") - sign)) + sign
        return signed.astype("float32") * scales[n, (j * kb + w) // group]

    return weight


def integer_codes(planes: np.ndarray, signs: np.ndarray, k: int, top_bit: int) -> np.ndarray:
    """The signed integer weights [N, K] (int8) the planes and signs hold."""
    magnitude = np.zeros((planes.shape[1], k), np.int8)  # at most 7 magnitude bits: int8 throughout, so a
    for b, plane in enumerate(planes):  # large layer's temporaries are bytes, not words
        magnitude |= unpack_bits(plane, k).view(np.int8) << np.int8(top_bit - b)
    np.negative(magnitude, out=magnitude, where=unpack_bits(signs, k))
    return magnitude


def decoded_weight(planes: te.Tensor, signs: te.Tensor, scales: te.Tensor, *, top_bit: int, group: int):
    """``f(n, kk)``: weight ``kk`` of channel ``n`` (the decode kernels' element, :mod:`.decode`)."""
    kb = int(planes.shape[2])
    weight = weight_at(planes, signs, scales, top_bit=top_bit, group=group)
    return lambda n, kk: weight(n, kk // kb, kk % kb)  # pack_bits: weight kk is bit kk // kb of byte kk % kb


def compute_words(x: te.Tensor, planes: te.Tensor, signs: te.Tensor, scales: te.Tensor, *, k: int, top_bit: int,
                  group: int):
    """TE definition for the GPU: the planes and signs read as 32-bit words, each weight decoded without a branch.

    planes uint32 [P, N, KB / 4] and signs uint32 [N, KB / 4] are the packed bytes viewed as little-endian words
    (KB a multiple of 4, :func:`as_words`): weight ``j * KB + 4 * w + i`` is bit ``8 * i + j`` of word ``w``. Bit
    ``j`` of each byte of every plane word, shifted to the plane's significance and OR-ed, gives the four
    magnitudes of weights ``i = 0..3`` in the four bytes at once (shared by the four). A magnitude goes into the mantissa of 2^23 with
    its sign bit, and the same sign's 2^23 is subtracted: the signed weight as a float, without a branch or an
    int-to-float conversion (exact: magnitudes are below 2^7).
    """
    m_dim = x.shape[0]
    num_planes, n_dim, kw = (int(d) for d in planes.shape)
    kb = 4 * kw
    rw = te.reduce_axis((0, kw), "rw")
    ri = te.reduce_axis((0, 4), "ri")
    rj = te.reduce_axis((0, 8), "rj")
    one = tirx.const(1, "uint32")
    low_bit_of_each_byte = tirx.const(0x01010101, "uint32")
    exponent_of_2_23 = tirx.const(0x4B000000, "uint32")

    def body(m, n):
        kk = rj * kb + rw * 4 + ri
        j, byte = rj.astype("uint32"), (ri * 8).astype("uint32")
        planes_bit_j = [((planes[b, n, rw] >> j) & low_bit_of_each_byte) << tirx.const(top_bit - b, "uint32")
                        for b in range(num_planes)]
        magnitudes = functools.reduce(lambda a, b: a | b, planes_bit_j)
        sign = ((signs[n, rw] >> (byte + j)) & one) << tirx.const(31, "uint32")
        signed_2_23 = sign | exponent_of_2_23
        bits = ((magnitudes >> byte) & tirx.const(0xFF, "uint32")) | signed_2_23
        value = tirx.reinterpret("float32", bits) - tirx.reinterpret("float32", signed_2_23)
        xk = x[m, kk] if k == 8 * kb else te.if_then_else(kk < k, x[m, kk], tirx.const(0, "float32"))
        if group == 8 * kb:  # one scale per channel: applied to the sum, below
            return te.sum(xk * value, axis=[rw, ri, rj])
        return te.sum(xk * value * scales[n, kk // group], axis=[rw, ri, rj])

    dot = te.compute((m_dim, n_dim), body, name=BLOCK)
    if group != 8 * kb:
        return dot
    return te.compute((m_dim, n_dim), lambda m, n: dot[m, n] * scales[n, 0], name=SCALED)


SCALED = "bitplane_scaled"
WORD_STEPS_UNROLLED = 4  # a lane's loads of this many words per plane in flight at once


def schedule_cuda(sch: s_tir.Schedule) -> None:
    """:func:`compute_words` with one warp per channel (see ``warp_layout``) and a warp-shuffle sum at the end.

    Lane ``l`` reads words ``l, l + 32, ...`` of every plane and of the signs (a warp reads 128 contiguous bytes
    per plane), WORD_STEPS_UNROLLED steps at a time so that their loads overlap; it walks the 32 bits of each word
    and the planes unrolled, with the four activations of a word's bytes in one 16-byte load when K needs no
    padding (then a row of x starts 16-byte aligned). The reduction loop bound to the lanes becomes TVM's
    cross-thread (warp shuffle) reduction; a per-channel scale multiplies its result once.
    """
    block = sch.get_sblock(BLOCK)
    m, n, rw, ri, rj = sch.get_loops(block)
    n_group, n_warp = sch.split(n, [None, warp_layout.CHANNELS_PER_BLOCK])
    rw_step, lane = sch.split(rw, [None, warp_layout.WARP_SIZE])
    rw_outer, rw_inner = sch.split(rw_step, [None, WORD_STEPS_UNROLLED])
    sch.reorder(m, n_group, n_warp, lane, rw_outer, rw_inner, rj, ri)
    sch.bind(m, warp_layout.ROWS)
    sch.bind(n_group, warp_layout.CHANNEL_GROUPS)
    sch.bind(n_warp, warp_layout.CHANNEL)
    sch.bind(lane, warp_layout.LANE)
    sch.unroll(rw_inner)
    sch.unroll(rj)
    reads = [r.source for r in sch.get(block).reads]
    x_index = next(i for i, b in enumerate(reads) if b.name == "x")
    planes = next(b for b in reads if b.name == "planes")
    if int(reads[x_index].shape[1]) == 32 * int(planes.shape[2]):  # no padding: rows of x start 16-byte aligned
        # the four activations of a word's byte lanes (i = 0..3) are contiguous: one 16-byte load
        x_local = sch.cache_read(block, x_index, "local")
        sch.compute_at(x_local, rj)
        sch.vectorize(sch.get_loops(x_local)[-1])
    sch.unroll(ri)
    if any(sch.get(b).name_hint == SCALED for b in sch.get_child_blocks(sch.get_sblock("root"))):
        sch.set_scope(block, 0, "local")
        sch.reverse_compute_at(sch.get_sblock(SCALED), n_warp)


def as_words(packed: np.ndarray, k: int) -> np.ndarray:
    """The packed planes or signs of K weights as the uint32 words :func:`compute_words` reads: a row of KB bytes
    (KB = ceil(K / 8), :func:`pack_bits`) is packed again KB rounded up to whole words wide when it is not."""
    width = -(-packed.shape[-1] // 4) * 4
    if width != packed.shape[-1]:
        packed = pack_bits(unpack_bits(packed, k), width)
    return np.ascontiguousarray(packed).view("uint32")


class BitPlanes:
    """An encoding's planes as the kernels take them: its constants, the top bit and the scale group."""

    def __init__(self, enc: Encoded, words: bool):
        self.shape = enc.shape
        k = self.shape[1]
        self.planes, self.signs, self.scales = (enc.arrays[a] for a in ("planes", "signs", "scales"))
        # bie-binary bitmap: one plane of significance 1, one scale per channel
        self.top_bit = enc.header["bits"] - 2 if enc.codec == bie_bitplane.NAME else 0
        group_size = enc.header["group_size"] if enc.codec == bie_bitplane.NAME else 0
        self.constants = [self.planes, self.signs, self.scales]
        if words:  # the planes and signs as 32-bit words: a GPU warp reads 128 bytes of each per step
            self.constants = [as_words(self.planes, k), as_words(self.signs, k), self.scales]
        # per channel: the row with its padding (grouped rows are whole 16-byte vectors, never widened for words)
        self.group = group_size or 8 * self.constants[1].view(np.uint8).shape[-1]
        # bie-bitplane's planes, most significant first, may be cut at load (progressive precision, weights.py)
        self.progressive = enc.codec == bie_bitplane.NAME

    def holders(self) -> list[te.Tensor]:
        return [te.placeholder(a.shape, a.dtype.name, name) for name, a in zip(("planes", "signs", "scales"),
                                                                                self.constants)]

    def marked(self, func: tirx.PrimFunc) -> tirx.PrimFunc:
        if not self.progressive:
            return func
        return func.with_attr(PRECISION_ATTR, {"form": "planes", "magnitude_bits": self.planes.shape[0]})

    def scheduled(self, compute_fn, schedule) -> tirx.PrimFunc:
        """The one-kernel-per-batch matmul ``compute_fn`` over these planes, scheduled by ``schedule``."""
        k = self.shape[1]
        x = te.placeholder((te.var("m", "int64"), k), "float32", "x")
        holders = self.holders()
        out = compute_fn(x, *holders, k=k, top_bit=self.top_bit, group=self.group)
        sch = s_tir.Schedule(te.create_prim_func([x, *holders, out]))
        sch.work_on("main")
        schedule(sch)
        return self.marked(sch.mod["main"])


def _integer_call(enc: Encoded, planes: BitPlanes, conv: ConvSpec | None) -> KernelCall:
    """Sign and every magnitude plane of a 4- or 8-bit encoding fill an integer of as many bytes as the planes:
    the integer kernels of :mod:`.int8`, progressive precision cutting the codes' low bits instead."""
    bits = enc.header["bits"]
    codes = integer_codes(planes.planes, planes.signs, enc.shape[1], planes.top_bit)
    make = int8.Int8Weights.packed if conv is None else int8.Int8Weights.by_channel
    integers = make(codes, planes.scales[:, 0], bits)
    coded = lambda f: f.with_attr(PRECISION_ATTR, {  # noqa: E731
        "form": "nibbles" if bits == 4 else "codes", "magnitude_bits": bits - 1})
    return int8.kernel_call(integers, enc, conv, "bitplane", coded)


def _all_planes_in_bytes(enc: Encoded, planes: BitPlanes) -> bool:
    return enc.codec == bie_bitplane.NAME and enc.header["bits"] in (4, 8) \
        and planes.planes.shape[0] == enc.header["bits"] - 1 and planes.scales.shape[1] == 1


def _lut_applies(planes: BitPlanes, conv: ConvSpec | None) -> bool:
    """A matmul on a CPU with the look-up instruction, its scales per channel or per multiple of a look-up group."""
    per_channel = planes.scales.shape[1] == 1
    return conv is None and lut.supported(tvm.target.Target.current()) \
        and (per_channel or planes.group % bitplane_lut.GROUP == 0)


def lut_parts(enc: Encoded) -> tuple[bitplane_lut.Layout, np.ndarray, BitPlanes]:
    """What the look-up-table kernels (CPU and CUDA) are built from: their layout, the integer codes [N, K] (int8)
    counted from the lowest plane kept, and the planes (their scales, scale group and progressive precision)."""
    planes = BitPlanes(enc, words=False)
    n, k = enc.shape
    kept = int(planes.planes.shape[0])
    shift = planes.top_bit + 1 - kept  # the significance of the lowest plane kept
    codes = integer_codes(planes.planes, planes.signs, k, planes.top_bit) >> np.int8(shift)
    return bitplane_lut.Layout(n, k, kept, shift, planes.group, planes.scales.shape[1]), codes, planes


def lut_kernels(enc: Encoded, tables: str = "fp32") -> KernelCall:
    """The look-up-table GEMV for one row (:mod:`.bitplane_lut`, with ``tables`` of fp32 or int8 partial sums) and
    the decode kernel of its words above (a matmul; within the target, whose CPU must have AVX-512), over the
    encoding's planes as their words and scales. Not marked for progressive precision (:func:`lut_call` is): the
    words :mod:`.blocked_bitmap` writes at load are no stored planes to cut."""
    layout, codes, planes = lut_parts(enc)
    constants = [bitplane_lut.words_of(codes, layout.magnitude_planes, tables),
                 bitplane_lut.lanes_of_scales(planes.scales)]
    return bitplane_lut.kernel_call(layout, constants, "bitplane", tables)


def lut_call(enc: Encoded, tables: str = "fp32") -> KernelCall:
    """:func:`lut_kernels`, their words' magnitude planes marked for progressive precision (cut at load)."""
    call = lut_kernels(enc, tables)
    form = INT8_FORM if tables == "int8" else bitplane_lut.FORM  # either form can be cut
    magnitude_bits = int(enc.arrays["planes"].shape[0])  # lut_parts: the planes kept are the magnitude planes
    for variant in (call, call.large_batch):
        variant.func = variant.func.with_attr(PRECISION_ATTR, {"form": form, "magnitude_bits": magnitude_bits})
    return call


@register(bie_bitplane.NAME, ops=("matmul", "conv2d"), target="llvm")
def llvm_call(enc: Encoded, conv: ConvSpec | None, lut_tables: str = bie_bitplane.Config.lut_tables) -> KernelCall:
    """One row: the look-up-table GEMV where the CPU has it (measured faster than the integer GEMV at 4 and 8 bits
    too), its tables as ``lut_tables.chosen`` picks them for ``lut_tables`` (the option) and the planes, else the
    integer GEMV when the planes fill bytes, else the bit-serial matmul. More rows: the panel GEMM of the first two
    (:mod:`.panel_gemm`), the decode kernel of the planes. Convs: decode."""
    planes = BitPlanes(enc, words=False)
    if _lut_applies(planes, conv):
        fits = bie_bitplane.int8_tables_fit(planes.planes.shape[0] + 1)
        return lut_call(enc, chosen(lut_tables, fits, lut.int8_supported(tvm.target.Target.current())))
    if _all_planes_in_bytes(enc, planes):
        return _integer_call(enc, planes, conv)
    holders = planes.holders()
    weight = decoded_weight(*holders, top_bit=planes.top_bit, group=planes.group)
    decoder = planes.marked(decode.elementwise(weight, holders, *decode.destination(enc, conv)))
    small = None if conv else KernelCall("bitplane", planes.scheduled(compute, schedule_llvm), planes.constants)
    return decode.with_decoder(small, decoder, "bitplane", planes.constants, conv)


@register(bie_bitplane.NAME, ops=("matmul",), target="cuda")
def cuda_call(enc: Encoded, conv: ConvSpec | None, lut_tables: str = bie_bitplane.Config.lut_tables) -> KernelCall:
    """The look-up-table kernel of :mod:`.bitplane_cuda` for every batch (exact tables: ``lut_tables`` is the CPU's
    choice); scales grouped along K by other than a multiple of 32 weights: the bit-serial kernel (rows are thread
    blocks)."""
    layout, codes, planes = lut_parts(enc)
    per_channel = layout.groups == 1
    if not bitplane_cuda.applies(planes.group, per_channel):
        words = BitPlanes(enc, words=True)
        return KernelCall("bitplane", words.scheduled(compute_words, schedule_cuda), words.constants)
    return bitplane_cuda.kernel_call(codes, layout.magnitude_planes, layout.shift, 0 if per_channel else planes.group,
                                     planes.scales, planes.progressive)

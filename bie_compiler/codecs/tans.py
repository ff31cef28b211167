"""``tans``: zero-point quantization with an odd number of levels, entropy-coded with tANS.

Each weight becomes ``q = round(w / step)`` clipped to ``[-m, m]`` (``levels = 2m + 1``
odd, so the centre bin is exactly zero), with one step per output channel:
the one among ``STEP_RATIOS * max|w| / m`` with the least squared error. Trained
weights concentrate near zero, so the symbols ``q + m`` are peaked and a tANS
coder (:mod:`.tans_coder`, the format) stores them in about their empirical
entropy rather than ``log2(levels)`` bits.

Precision per layer (entropy-driven mixed precision): with
``bits_per_weight`` set, :func:`plan` picks each layer's levels so that all
the model's ``tans`` layers together fit the budget with the least distortion
(weighted by each layer's measured sensitivity when there is calibration
data), the rate of a layer being its measured coded size
(:attr:`Encoded.nbytes`: streams, table, offsets, steps and header). The plan
returns per-layer configs with fixed ``levels``, so re-encoding a layer from its
recorded config reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CodecError
from . import budget_split, bie_bitplane, feedback, lut_tables, rotation, tans_coder, uniform
from .base import Encoded, check_weight
from .parallel import SERIAL, Workers

NAME = "tans"
DEFAULT_LEVELS = 15
LEVEL_CHOICES = (3, 5, 7, 9, 11, 15, 19, 23, 31, 47, 63, 95, 127, 191, 255)  # what the budget planner tries
EXECUTIONS = ("load", "stream")  # how the CPU kernels run a layer: see Config.tans_execution
STEP_RATIOS = np.geomspace(1.0, 0.125, 16).astype(np.float32)  # of max|w| / m: from no clipping to clipping most


@dataclass(frozen=True)
class Config:
    levels: int = field(default=0, metadata={  # 0: chosen by bits_per_weight (default 15)
        "help": "odd number of quantization levels, zero in the centre (3..255; default 15)"})
    bits_per_weight: float = field(default=0.0, metadata={  # 0: fixed levels
        "help": "bits/weight budget over the whole model; each layer's precision chosen to meet it "
                "(instead of --levels, --bits or --quality)"})
    table_log: int = field(default=11, metadata={"help": "tANS table of 2^T states (5..15; default 11)"})
    # 16: one AVX-512 vector of states (the CPU kernels' vector decoder; 8 were best for the scalar one)
    states: int = field(default=16, metadata={"help": "interleaved tANS states per stream (default 16)"})
    stream_symbols: int = field(default=8192, metadata={  # a stream covers whole output channels
        "help": "weights per independently decoded stream, at least (default 8192)"})
    # the kernel, not the encoding: the stored bytes are the same either way
    tans_execution: str = field(default="load", metadata={"kernel": True,
        "help": "CPU: load (decode the streams once when the artefact is loaded, into the words of the "
                "bie-bitplane look-up-table GEMV: fast, the decoded planes in memory) or stream (decode on every "
                "call, fused with the GEMV: least memory); default load"})
    # the kernel, not the encoding: with tans_execution load, int8 tables up to 15 levels (4 planes), fp32 above
    lut_tables: str = lut_tables.option()
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given

    def __post_init__(self):
        lut_tables.check(NAME, self.lut_tables)
        if self.levels and self.bits_per_weight:
            raise CodecError(f"{NAME}: give either levels or bits_per_weight, not both")
        if self.bits_per_weight < 0:
            raise CodecError(f"{NAME}: bits_per_weight must be positive, got {self.bits_per_weight}")
        if self.levels and (not 3 <= self.levels <= 255 or self.levels % 2 == 0):
            raise CodecError(f"{NAME}: levels must be odd, in 3..255 (the centre level is zero), got {self.levels}")
        if self.tans_execution not in EXECUTIONS:
            raise CodecError(f"{NAME}: tans_execution must be one of {', '.join(EXECUTIONS)}, got {self.tans_execution!r}")
        if self.stream_symbols < 1:
            raise CodecError(f"{NAME}: stream_symbols must be >= 1, got {self.stream_symbols}")
        try:
            tans_coder.check_layout(self.table_log, self.states, 1)
        except CodecError as e:
            raise CodecError(f"{NAME}: {e}") from None
        if (self.levels or max(LEVEL_CHOICES)) > 1 << self.table_log:
            raise CodecError(f"{NAME}: {self.levels or max(LEVEL_CHOICES)} levels need table_log >= 8")

    @property
    def fixed_levels(self) -> int:
        return self.levels or (0 if self.bits_per_weight else DEFAULT_LEVELS)

    @property
    def kernel_fallbacks(self) -> dict[str, str]:
        """The kernel fields asked for that this layer's kernel cannot honour, each with what it does instead (a
        budget's config before the plan has no levels yet: its layers' planned configs say)."""
        if self.lut_tables != "int8" or not self.fixed_levels:
            return {}
        if self.tans_execution != "load":
            return {"lut_tables": "none: --tans-execution stream decodes in the GEMV, which has no look-up tables"}
        if int8_tables_fit(self.fixed_levels):
            return {}
        return {"lut_tables": f"fp32: int8 tables take at most {bie_bitplane.INT8_TABLE_PLANES} planes (up to "
                              f"{INT8_TABLE_LEVELS} levels), this layer has {self.fixed_levels} levels"}


INT8_TABLE_LEVELS = (1 << bie_bitplane.INT8_TABLE_PLANES) - 1  # the most levels whose codes fit the int8 tables: 15


def lut_planes(levels: int) -> int:
    """Magnitude planes of the codes of ``levels`` levels (|q| <= levels // 2) in the look-up-table kernels' words
    (the sign one more: 2 for 3 levels, 4 for 15)."""
    return (levels // 2).bit_length()


def int8_tables_fit(levels: int) -> bool:
    """Whether the codes of ``levels`` levels fit the int8 tables' bytes (``bie_bitplane.int8_tables_fit`` of their
    planes, sign included)."""
    return bie_bitplane.int8_tables_fit(lut_planes(levels) + 1)


def rows_per_stream(k: int, config: Config) -> int:
    return max(1, -(-config.stream_symbols // k))


def quantize(weight: np.ndarray, levels: int,
             calibration: feedback.Calibration | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes [N, K] in [-m, m] and float32 steps [N], the step per channel by least squared error.

    With ``calibration``, the codes come from error feedback (:mod:`.feedback`) and the step
    search weighs each column by the feedback's cost of rounding it.
    """
    w = check_weight(weight)
    m = levels // 2
    if calibration is not None:
        codes, steps = uniform.quantize_with_feedback(w, calibration, m, STEP_RATIOS, w.shape[1])
        return codes, steps[:, 0]
    steps = uniform.clip_search(w, m, STEP_RATIOS)
    safe = np.where(steps > 0, steps, np.float32(1))[:, None]
    return np.clip(np.rint(w / safe), -m, m).astype(np.int64), steps


def dequantize(codes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) * steps[:, None]).astype(np.float32)


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    if not config.fixed_levels:
        config = plan({"weight": weight}, {"weight": config})["weight"]
    return _entropy_code(*quantize(weight, config.fixed_levels, calibration), config)


def _entropy_code(codes: np.ndarray, steps: np.ndarray, config: Config) -> Encoded:
    """The encoding of quantized codes in [-m, m] (levels = config.fixed_levels) and their steps."""
    levels = config.fixed_levels
    n, k = codes.shape
    coded = tans_coder.encode(codes + levels // 2, levels, table_log=config.table_log, states=config.states,
                              rows_per_stream=rows_per_stream(k, config))
    return Encoded(
        codec=NAME,
        shape=(n, k),
        arrays={"counts": coded.counts, "offsets": coded.offsets, "words": coded.words, "steps": steps},
        header={"levels": levels, "table_log": coded.table_log, "states": coded.states,
                "rows_per_stream": coded.rows_per_stream, "crc32": coded.checksum},
    )


def streams(enc: Encoded) -> tans_coder.TansStreams:
    """The coded symbols of an encoding, as the coder's format."""
    h, a = enc.header, enc.arrays
    try:
        return tans_coder.TansStreams(tuple(enc.shape), int(h["table_log"]), int(h["states"]), int(h["rows_per_stream"]),
                                      a["counts"], a["offsets"], a["words"], int(h["crc32"]))
    except KeyError as e:
        raise CodecError(f"{NAME}: encoding lacks {e}") from None


def decode_symbols(enc: Encoded) -> np.ndarray:
    """The quantized codes q in [-m, m], int64 [N, K] (reference tANS decoding)."""
    levels = int(enc.header["levels"])
    return tans_coder.decode(streams(enc), levels) - levels // 2


def decode(enc: Encoded) -> np.ndarray:
    """Reference decoder: float32 [N, K] = q * step[n]."""
    steps = enc.arrays["steps"]
    if steps.dtype != np.float32 or steps.shape != (enc.shape[0],):
        raise CodecError(f"{NAME}: steps must be float32 [{enc.shape[0]}], got {steps.dtype} {list(steps.shape)}")
    return dequantize(decode_symbols(enc), steps)


def report(enc: Encoded) -> dict[str, int | float]:
    """Where the bits go: symbol payload, stream states, offsets, table, steps, header."""
    coded = streams(enc)
    n, k = enc.shape
    return {
        "levels": int(enc.header["levels"]),
        "streams": coded.num_streams,
        "payload_bits": coded.payload_bits,
        "payload_bits_per_weight": coded.payload_bits / (n * k),
        "overhead_bits": 8 * enc.nbytes - coded.payload_bits,
    }


# --- mixed precision ---------------------------------------------------------------------------------------------------


def plan(matrices: Mapping[str, np.ndarray], configs: dict[str, Config],
         calibrations: dict[str, feedback.Calibration] | None = None, workers: Workers = SERIAL) -> dict[str, Config]:
    """Per-layer levels for every layer given a budget; layers with fixed levels are kept as they are.

    Layers sharing one ``bits_per_weight`` are planned together (:func:`.budget_split.plan`): for
    each, every level count in ``LEVEL_CHOICES`` is encoded to measure its size in bits and its
    distortion (:func:`.feedback.distortion`: the relative squared weight error, times the layer's
    measured sensitivity with calibration). The distortions are those of round-to-nearest, also for
    layers then encoded with error feedback (feedback at every level would cost 15 encodings); the split
    is then lowered until the feedback's codes fit (:func:`.budget_split.fit`).
    """
    return budget_split.plan(NAME, matrices, configs, calibrations, _options,
                             lambda config, levels: replace(config, levels=levels, bits_per_weight=0.0), workers,
                             _coded_bits)


def _coded_bits(weight: np.ndarray, config: Config, calibration: feedback.Calibration) -> int:
    """The bits of a layer's encoding with error feedback, the rotation's signs included (the planner sees the
    rotated weight)."""
    enc = encode(weight, config, calibration)
    return 8 * (rotation.with_signs(enc) if config.rotate else enc).nbytes


def _options(weight: np.ndarray, config: Config,
             calibration: feedback.Calibration | None) -> list[tuple[int, int, float]]:
    """(levels, coded bits, distortion) for each level count, fewest bits first."""
    options = []
    for levels in LEVEL_CHOICES:
        if levels > 1 << config.table_log:
            break
        codes, steps = quantize(weight, levels)
        bits = 8 * _entropy_code(codes, steps, replace(config, levels=levels, bits_per_weight=0.0)).nbytes
        options.append((levels, bits, feedback.distortion(weight, dequantize(codes, steps), calibration)))
    return sorted(options, key=lambda o: (o[1], o[2]))

"""``nwc``: neural weight compression, a learned codec (analysis network, rounded latents, synthesis network).

The weight [N, K] is cut into normalised column chunks of 16 (:mod:`.nwc_network`: each column's std kept in
float16). The trained analysis network maps each chunk, at its column's quality level, to ``latent`` values
that are rounded to integers; those are entropy-coded with the project's tANS coder (:mod:`.tans_coder`),
one symbol matrix [J, K] per latent channel, with the channel's own table or, where that costs fewer bits, a
row of the shared table bank (:mod:`.nwc_tables`: one byte), and as few interleaved tANS states as the
channel's size needs (:func:`states_for`). The reference decoder tANS-decodes the latents and runs the
synthesis network. Every stored byte is counted: the latent streams, their own tables and bank indices, the
column scales, the per-column quality levels (uint8) and the header. The trained networks and the table bank
are shared by every layer and model (like a codebook) and are not counted per layer.

Quality per column: one level for every column; with calibration (error feedback) the columns are put into
``spread`` quantile groups of log diag(H), from one level below to one above the layer's base level (the
paper's importance levels), and the columns are rounded one at a time with error feedback (LDLQ, through
:mod:`.feedback`). With ``bits_per_weight``, :func:`plan` picks each layer's base level so that the model's
``nwc`` layers together fit the budget with the least weighted distortion, as ``tans`` does.

Scalar layers: where the plan measures a ``tans`` coding of a layer better (less weighted distortion for its
bits) than every quality level, typically a small layer, whose latent streams and per-column scales cost
more bits than it has weights, that layer is stored as ``tans`` would store it (``tans_levels``; header
``scalar: tans``) and decoded by ``tans``'s decoder and kernels. The plan's choice is in each layer's config.

Float16 layers: ``tans`` codes at most ``max(tans.LEVEL_CHOICES)`` levels (about 10 bits/weight), so a layer the
split would give more bits than that (a small sensitive conv) would otherwise stay there. The plan's table has one
more option per layer, the weight rounded to float16 (``float16``; header ``scalar: float16``, one float16 array
[N, K]: 16 bits/weight and the header), decoded by widening to float32. It is rounded to nearest, without error
feedback: float16's step is 2^-11 of each weight, so feedback has nothing to redistribute that the split would
notice, and the plan's option then measures exactly what the encode stores.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CodecError
from . import budget_split, feedback, nwc_network, nwc_tables, rotation, tans, tans_coder
from .base import Encoded, check_weight
from .nwc_network import CHUNK
from .parallel import SERIAL, Workers

NAME = "nwc"
FLOAT16 = "float16"  # a float16 layer's kind: the plan's choice and the header's ``scalar``
DEFAULT_QUALITY = 6
LATENT_LIMIT = 127  # latents are clipped to [-127, 127]: one channel's alphabet fits the coder's 256 symbols
STATES = 32  # interleaved tANS states per stream: the reference decoder steps 32 symbols per stream at a time
STREAM_SYMBOLS = 8192  # latent symbols per stream, at least


@dataclass(frozen=True)
class Config:
    quality: int = field(default=0, metadata={  # 0: chosen by bits_per_weight (default DEFAULT_QUALITY)
        "help": "quality level of the trained codec, 1 (fewest bits) to its number of levels (default 6)"})
    bits_per_weight: float = field(default=0.0, metadata={  # 0: fixed quality
        "help": "bits/weight budget over the whole model; each layer's precision chosen to meet it "
                "(instead of --levels, --bits or --quality)"})
    tans_levels: int = field(default=0, metadata={  # 0: the network codes the layer
        "help": "code the layer as tans does with this odd number of levels instead (the budget plan's choice "
                "where it measures that better)"})
    float16: bool = field(default=False, metadata={
        "help": "store the layer's weight as float16 instead (the budget plan's choice where a layer needs more "
                "bits than tans's most levels give)"})
    spread: int = field(default=3, metadata={
        "help": "with calibration: quality levels spread over the columns by Hessian-diagonal quantiles (1: uniform)"})
    table_log: int = field(default=11, metadata={"help": "tANS table of 2^T states (5..15; default 11)"})
    rotate: bool = rotation.option()  # codecs.encode rotates the weight; the codec encodes what it is given
    # the kernel, not the encoding
    nwc_decode: str = field(default="load", metadata={"kernel": True,
        "help": "CPU: load (the synthesis network decodes the weights into float32 once, when the artefact is "
                "loaded; the layers then run the dense kernels) or per-call (the artefact keeps only the coded "
                "bytes: every call decodes the weight, a matmul of one row multiplying it as it is made)"})

    def __post_init__(self):
        levels = nwc_network.load().levels
        if sum(bool(v) for v in (self.quality, self.bits_per_weight, self.tans_levels, self.float16)) > 1:
            raise CodecError(f"{NAME}: give one of quality, bits_per_weight, tans_levels and float16")
        if self.tans_levels:
            self.scalar_config()  # tans's checks
        if self.bits_per_weight < 0:
            raise CodecError(f"{NAME}: bits_per_weight must be positive, got {self.bits_per_weight}")
        if not 0 <= self.quality <= levels:
            raise CodecError(f"{NAME}: quality must be in 1..{levels}, got {self.quality}")
        if not 1 <= self.spread <= levels:
            raise CodecError(f"{NAME}: spread must be in 1..{levels}, got {self.spread}")
        try:
            tans_coder.check_layout(self.table_log, STATES, 1)
        except CodecError as e:
            raise CodecError(f"{NAME}: {e}") from None
        if self.nwc_decode not in ("load", "per-call"):
            raise CodecError(f"{NAME}: nwc_decode must be load or per-call, got {self.nwc_decode!r}")
        if 2 * LATENT_LIMIT + 1 > 1 << self.table_log:
            raise CodecError(f"{NAME}: latents of up to {2 * LATENT_LIMIT + 1} values need table_log >= 8")

    @property
    def fixed_quality(self) -> int:
        return self.quality or (0 if self.bits_per_weight else DEFAULT_QUALITY)

    def scalar_config(self) -> tans.Config:
        """The ``tans`` config of a scalar layer."""
        try:
            return tans.Config(levels=self.tans_levels, table_log=self.table_log)
        except CodecError as e:
            raise CodecError(f"{NAME}: tans_levels: {e}") from None


def network_id(network: nwc_network.Network) -> str:
    """A short digest of the trained parameters: an encoding decodes only with the network that made it."""
    h = hashlib.sha256()
    for name in sorted(network.params):
        h.update(name.encode())
        h.update(np.ascontiguousarray(network.params[name]).tobytes())
    return h.hexdigest()[:16]


def column_levels(k: int, quality: int, spread: int, hessian_diagonal: np.ndarray | None) -> np.ndarray:
    """0-based level per column: ``quality - 1`` everywhere, or with a Hessian diagonal, ``spread`` groups of
    columns by quantiles of log diag(H), the least important one level below and up from there."""
    levels = nwc_network.load().levels
    base = np.full(k, quality - 1, np.int64)
    if hessian_diagonal is None or spread == 1:
        return base
    logs = np.log(np.maximum(hessian_diagonal, np.finfo(np.float64).tiny))
    edges = np.quantile(logs, np.arange(1, spread) / spread)
    group = np.searchsorted(edges, logs, side="right")
    return np.clip(base + group - (spread - 1) // 2, 0, levels - 1)


def analyse(chunked: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Integer latents int64 [K, J, latent] of chunks [K, J, CHUNK] at per-column levels [K]."""
    network = nwc_network.load()
    k, j, _ = chunked.shape
    z = network.run("analysis", chunked.reshape(-1, CHUNK), np.repeat(levels, j))
    return np.clip(np.rint(z), -LATENT_LIMIT, LATENT_LIMIT).astype(np.int64).reshape(k, j, -1)


def synthesise(latents: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Chunks float32 [K, J, CHUNK] from integer latents [K, J, latent] at per-column levels [K]."""
    network = nwc_network.load()
    k, j, c = latents.shape
    return network.run("synthesis", latents.reshape(-1, c).astype(np.float32), np.repeat(levels, j)).reshape(k, j, CHUNK)


class _ColumnGrid:
    """A :class:`feedback.Grid` rounding one column at a time through the codec, recording scale and latents."""

    group = 1

    def __init__(self, n: int, k: int, levels: np.ndarray):
        self.n, self.levels = n, levels
        self.scales = np.ones(k, np.float16)
        self.latents: np.ndarray | None = None  # [K, J, latent], made at the first column

    def start_group(self, columns: np.ndarray, weights: np.ndarray, importance: np.ndarray) -> None:
        self.scales[columns] = nwc_network.column_scales(weights)

    def round(self, column: int, values: np.ndarray) -> np.ndarray:
        scale, level = self.scales[column:column + 1], self.levels[column:column + 1]
        latents = analyse(nwc_network.chunks(values[:, None].astype(np.float32), scale), level)
        if self.latents is None:
            self.latents = np.zeros((len(self.scales), *latents.shape[1:]), np.int64)
        self.latents[column] = latents[0]
        return nwc_network.unchunk(synthesise(latents, level), scale, self.n)[:, 0]


# With a budget a layer is encoded with feedback at its chosen config up to three times in one process:
# coding_by_feedback, budget_split.fit's measure, the final encode. Feedback is deterministic (feedback.py), so
# the same weight, config and statistics give the same bytes: the latest encodings are kept (least recently used
# dropped first). Workers forked for a map keep theirs only for that map.
FEEDBACK_KEPT_BYTES = 1 << 27
_FEEDBACK_ENCODINGS: OrderedDict[bytes, Encoded] = OrderedDict()


def _feedback_key(w: np.ndarray, config: Config, calibration: feedback.Calibration) -> bytes:
    """What a feedback encoding depends on: the weight, the config and the statistics with their settings
    (not the sensitivity: the plan's weight, not the encode's)."""
    h = hashlib.blake2b(repr((w.shape, w.dtype.str, config, calibration.rows, calibration.damping,
                              calibration.act_order, calibration.xtx.shape)).encode(), digest_size=20)
    h.update(np.ascontiguousarray(w))
    h.update(np.ascontiguousarray(calibration.xtx))
    return h.digest()


def encode(weight: np.ndarray, config: Config, calibration: feedback.Calibration | None = None) -> Encoded:
    w = check_weight(weight)
    if config.bits_per_weight:
        config = plan({"weight": w}, {"weight": config})["weight"]
    if calibration is None:
        return _encoded(w, config, None)
    key = _feedback_key(w, config, calibration)
    if key in _FEEDBACK_ENCODINGS:
        _FEEDBACK_ENCODINGS.move_to_end(key)
        return _FEEDBACK_ENCODINGS[key]
    enc = _FEEDBACK_ENCODINGS[key] = _encoded(w, config, calibration)
    while sum(e.nbytes for e in _FEEDBACK_ENCODINGS.values()) > FEEDBACK_KEPT_BYTES and len(_FEEDBACK_ENCODINGS) > 1:
        _FEEDBACK_ENCODINGS.popitem(last=False)
    return enc


def _encoded(w: np.ndarray, config: Config, calibration: feedback.Calibration | None) -> Encoded:
    """The encoding of a checked weight at a resolved config (a quality, ``tans`` levels or float16)."""
    if config.float16:
        return _float16_layer(w)
    if config.tans_levels:
        return _scalar_layer(tans.encode(w, config.scalar_config(), calibration))
    n, k = w.shape
    if calibration is None:
        latents, scales, levels = _rounded(w, config.fixed_quality)
    else:
        h = feedback.prepared_hessian(calibration, k)
        levels = column_levels(k, config.fixed_quality, config.spread, np.diag(h))
        grid = _ColumnGrid(n, k, levels)
        feedback.quantize(w, calibration, grid)
        scales, latents = grid.scales, grid.latents
    return _entropy_code(latents, scales, levels, n, config)


def _rounded(weight: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents, scales, levels) of a weight at one quality for every column, without error feedback."""
    levels = column_levels(weight.shape[1], quality, 1, None)
    scales = nwc_network.column_scales(weight)
    return analyse(nwc_network.chunks(weight, scales), levels), scales, levels


def states_for(symbols: int) -> int:
    """Interleaved tANS states per stream of a channel of ``symbols`` latents: ``STATES`` (the decoder's vector
    width) where a channel has 256 latents per state, fewer in a small layer, whose initial states
    (``table_log`` bits each) would otherwise cost it up to 1.4 bits per latent: a power of two, 1 to 32."""
    return min(STATES, 1 << max(0, int(np.log2(max(symbols, 1) / 256))))


def _entropy_code(latents: np.ndarray, scales: np.ndarray, levels: np.ndarray, n: int, config: Config) -> Encoded:
    """The encoding of integer latents [K, J, latent] with the column scales and levels of a weight [n, K]: each
    channel coded with a row of the shared table bank or with its own table (:func:`.nwc_tables.choose`)."""
    k, j, channels = latents.shape
    arrays = {"scales": scales.astype(np.float16), "levels": levels.astype(np.uint8)}
    tables, lowest, checksums = np.empty(channels, np.uint8), np.empty(channels, np.int16), []
    rows_per_stream = min(j, -(-STREAM_SYMBOLS // k))
    states = states_for(k * j)
    for c in range(channels):
        tables[c], lowest[c], _ = nwc_tables.choose(latents[:, :, c].ravel(), k * j, config.table_log)
        symbols = latents[:, :, c].T - int(lowest[c])  # [J, K]: the decoder's lanes run over the columns
        shared = None if tables[c] == nwc_tables.OWN else nwc_tables.bank()[tables[c]]
        coded = tans_coder.encode(symbols, nwc_tables.ALPHABET if shared is not None else int(symbols.max()) + 1,
                                  table_log=config.table_log, states=states, rows_per_stream=rows_per_stream,
                                  counts=shared)
        if shared is None:
            arrays[f"latent{c}.counts"] = coded.counts
        arrays.update({f"latent{c}.offsets": coded.offsets, f"latent{c}.words": coded.words})
        checksums.append(coded.checksum)
    arrays.update({"latent_tables": tables, "latent_lowest": lowest, "crc32": np.array(checksums, np.uint32)})
    header = {"table_log": config.table_log, "states": states, "rows_per_stream": rows_per_stream,
              "network": network_id(nwc_network.load())}
    if np.any(tables != nwc_tables.OWN):
        header["bank"] = nwc_tables.bank_id()
    return Encoded(NAME, (n, k), arrays, header)


def channel_counts(enc: Encoded, channel: int) -> np.ndarray:
    """The tANS counts of a latent channel: its own, or its row of the shared bank."""
    table = int(enc.arrays["latent_tables"][channel])
    if table == nwc_tables.OWN:
        return enc.arrays[f"latent{channel}.counts"]
    if enc.header.get("bank") != nwc_tables.bank_id():
        raise CodecError(f"{NAME}: encoded with table bank {enc.header.get('bank')}, not this codec's "
                         f"{nwc_tables.bank_id()}")
    if table >= len(nwc_tables.bank()):
        raise CodecError(f"{NAME}: latent table {table} beyond the bank's {len(nwc_tables.bank())} rows")
    return nwc_tables.bank()[table]


def _scalar_layer(inner: Encoded) -> Encoded:
    """A ``tans`` encoding as the ``nwc`` encoding of a scalar layer."""
    return Encoded(NAME, inner.shape, inner.arrays, {**inner.header, "scalar": tans.NAME})


def scalar(enc: Encoded) -> Encoded | None:
    """The ``tans`` encoding of a scalar layer (None: the network or float16 codes it)."""
    if enc.header.get("scalar") in (None, FLOAT16):
        return None
    if enc.header["scalar"] != tans.NAME:
        raise CodecError(f"{NAME}: unknown scalar coding {enc.header['scalar']!r}")
    return replace(enc, codec=tans.NAME, header={k: v for k, v in enc.header.items() if k != "scalar"})


def _float16_layer(w: np.ndarray) -> Encoded:
    """The float16 layer of a weight [N, K]: each weight rounded to the nearest float16."""
    return Encoded(NAME, w.shape, {"weight": w.astype(np.float16)}, {"scalar": FLOAT16})


def float16_weight(enc: Encoded) -> np.ndarray | None:
    """The stored float16 weight [N, K] of a float16 layer, checked (None: another kind of layer)."""
    if enc.header.get("scalar") != FLOAT16:
        return None
    weight = enc.arrays.get("weight")
    if weight is None or weight.dtype != np.float16 or weight.shape != tuple(enc.shape):
        raise CodecError(f"{NAME}: a float16 layer must store one float16 weight {list(enc.shape)}")
    return weight


def streams(enc: Encoded) -> list[tans_coder.TansStreams]:
    """The tANS streams of each latent channel (not yet checked), once the encoding's network is the installed one."""
    h, a = enc.header, enc.arrays
    n, k = enc.shape
    j = -(-n // CHUNK)
    try:
        if h["network"] != network_id(nwc_network.load()):
            raise CodecError(f"{NAME}: encoded with network {h['network']}, not the installed codec's "
                             f"{network_id(nwc_network.load())}")
        if a["latent_tables"].shape != a["crc32"].shape:
            raise CodecError(f"{NAME}: {a['latent_tables'].size} latent tables for {a['crc32'].size} channels")
        return [tans_coder.TansStreams((j, k), int(h["table_log"]), int(h["states"]), int(h["rows_per_stream"]),
                                       channel_counts(enc, c), a[f"latent{c}.offsets"], a[f"latent{c}.words"],
                                       int(checksum)) for c, checksum in enumerate(a["crc32"])]
    except KeyError as e:
        raise CodecError(f"{NAME}: encoding lacks {e}") from None


def latents(enc: Encoded) -> np.ndarray:
    """The integer latents int64 [K, J, latent] of an encoding (reference tANS decoding, checked)."""
    coded = streams(enc)
    try:
        lowest = enc.arrays["latent_lowest"].astype(np.int64)
    except KeyError as e:
        raise CodecError(f"{NAME}: encoding lacks {e}") from None
    return np.stack([tans_coder.decode(c, len(c.counts)).T + lowest[i] for i, c in enumerate(coded)], axis=-1)


def decode(enc: Encoded) -> np.ndarray:
    """Reference decoder: float32 [N, K], the synthesis of the decoded latents times each column's scale (a scalar
    layer: ``tans``'s; a float16 layer: its weight widened)."""
    if float16_weight(enc) is not None:
        return float16_weight(enc).astype(np.float32)
    if scalar(enc) is not None:
        return tans.decode(scalar(enc))
    n, k = enc.shape
    scales, levels = enc.arrays["scales"], enc.arrays["levels"]
    if scales.dtype != np.float16 or scales.shape != (k,) or levels.dtype != np.uint8 or levels.shape != (k,):
        raise CodecError(f"{NAME}: scales and levels must be float16 and uint8 [{k}]")
    if levels.max() >= nwc_network.load().levels:
        raise CodecError(f"{NAME}: quality level {int(levels.max()) + 1} beyond the codec's {nwc_network.load().levels}")
    return nwc_network.unchunk(synthesise(latents(enc), levels.astype(np.int64)), scales, n)


def report(enc: Encoded) -> dict[str, int | float]:
    """Where the bits go: latent streams (payload), everything else (tables, offsets, scales, levels, header); a
    scalar layer's as ``tans`` reports them; a float16 layer's 16 bits/weight and its header."""
    if float16_weight(enc) is not None:
        n, k = enc.shape
        return {"scalar": FLOAT16, "payload_bits_per_weight": 16.0, "overhead_bits": 8 * enc.nbytes - 16 * n * k}
    if scalar(enc) is not None:
        return {"scalar": tans.NAME, **tans.report(scalar(enc))}
    n, k = enc.shape
    payload = sum(int(enc.arrays[f"latent{c}.offsets"][-1]) for c in range(len(enc.arrays["crc32"])))
    return {"quality_levels": sorted({int(q) + 1 for q in enc.arrays["levels"]}),
            "payload_bits_per_weight": payload / (n * k), "overhead_bits": 8 * enc.nbytes - payload}


# --- quality per layer within a budget -------------------------------------------------------------------------------


def plan(matrices: Mapping[str, np.ndarray], configs: dict[str, Config],
         calibrations: dict[str, feedback.Calibration] | None = None, workers: Workers = SERIAL) -> dict[str, Config]:
    """Per-layer quality (or ``tans`` levels) for the layers given a budget (:func:`.budget_split.plan`) from each
    layer's measured options (:func:`level_options`); with error feedback the split is then lowered until the
    feedback's codes fit (:func:`.budget_split.fit`: they entropy-code larger than the round-to-nearest ones
    the options measure). With feedback each layer is first held to the network's or to ``tans``'s options,
    whichever the feedback serves better (:func:`coding_by_feedback`)."""
    return budget_split.plan(NAME, matrices, configs, calibrations, level_options, resolved, workers, _coded_bits,
                             coding_by_feedback)


def _coded_bits(weight: np.ndarray, config: Config, calibration: feedback.Calibration) -> int:
    """The bits of a layer's encoding with error feedback, the rotation's signs included (the planner sees the
    rotated weight)."""
    enc = encode(weight, config, calibration)
    return 8 * (rotation.with_signs(enc) if config.rotate else enc).nbytes


def coding_by_feedback(weight: np.ndarray, config: Config, calibration: feedback.Calibration, options: list,
                       choice: tuple[str, int]) -> list:
    """``options`` without the network's (``tans``'s and float16's kept) where the plan chose the network for the
    layer but ``tans``'s option of the most bits not above it has the smaller output error once both are encoded
    with error feedback (the whole layer: a sample of rows can miss the outlier rows where the network's codes
    fail); else ``options``.

    The options rank the two by round-to-nearest weight error, but feedback lowers the output error of the
    scalar grid's fine steps by more than the network's at high rates, and on some layers the network's codes
    with feedback come out far worse than round to nearest suggests."""
    bits = next(o[1] for o in options if o[0] == choice)
    rivals = [o for o in options if o[0][0] == tans.NAME and o[1] <= bits]
    if choice[0] != NAME or not rivals:
        return options
    rival = max(rivals, key=lambda o: (o[1], -o[2]))[0]
    w = check_weight(weight)
    errors = {c: feedback.output_error(w, decode(encode(w, resolved(config, c), calibration)), calibration.xtx)
              for c in (choice, rival)}
    return options if errors[choice] <= errors[rival] else [o for o in options if o[0][0] != NAME]


def resolved(config: Config, choice: tuple[str, int]) -> Config:
    """``config`` fixing a choice of :func:`level_options`: ("nwc", quality), ("tans", levels) or ("float16", 16)."""
    kind, value = choice
    return replace(config, quality=value if kind == NAME else 0, tans_levels=value if kind == tans.NAME else 0,
                   float16=kind == FLOAT16, bits_per_weight=0.0)


def estimated_bits(latents: np.ndarray, shape: tuple[int, int], config: Config) -> int:
    """The coded size of the latents of a weight of ``shape`` [n, K] from a sample of them, [chunks, latent] (or
    all of them, [K, J, latent]), from above: each channel's table and payload as :func:`.nwc_tables.choose`
    estimates them (an own table's entropy with the Miller-Madow term: a sample's entropy underestimates its
    source's) plus 2 % (tANS with 2^11 states codes within a fraction of a percent of it), and exactly what else
    it stores (stream states and offsets, padding, checksum, lowest latent, table index, scales, levels), and a
    generous header."""
    n, k = shape
    j = -(-n // CHUNK)
    sample = latents.reshape(-1, latents.shape[-1])
    streams = -(-j // min(j, -(-STREAM_SYMBOLS // k)))
    bits = k * (16 + 8) + 8 * 256
    for c in range(sample.shape[1]):
        _, _, coded = nwc_tables.choose(sample[:, c], k * j, config.table_log)
        bits += 1.02 * coded + streams * (32 + states_for(k * j) * config.table_log)
        bits += 32 * 5 + 32 + 32 + 16 + 8
    return int(np.ceil(bits))


PLAN_CHUNKS = 2048  # chunks of a layer rounded at each quality level to plan it (a smaller layer: all of them)


def level_options(weight: np.ndarray, config: Config,
                  calibration: feedback.Calibration | None) -> list[tuple[tuple[str, int], int, float]]:
    """(choice, estimated coded bits, distortion) per quality level, per ``tans`` level count and float16's, fewest
    bits first: the table :func:`.budget_split.allocate` chooses from (:func:`resolved` makes a choice a config)."""
    w = check_weight(weight)
    return sorted(_network_options(w, config, calibration) + _scalar_options(w, config, calibration)
                  + [_float16_option(w, calibration)], key=lambda o: (o[1], o[2]))


def _network_options(w: np.ndarray, config: Config, calibration: feedback.Calibration | None) -> list:
    """Each quality level's option, measured on a seeded sample of ``PLAN_CHUNKS`` of the layer's chunks: each
    chunk is coded on its own, so the sample's relative error and latent statistics stand for the layer's, and
    rounding every chunk of a large layer at every level would take most of the encoding time."""
    n, k = w.shape
    scales = nwc_network.column_scales(w)
    chunked = nwc_network.chunks(w, scales)
    j = chunked.shape[1]
    picked = np.sort(np.random.default_rng(0).choice(k * j, min(k * j, PLAN_CHUNKS), replace=False))
    column, row = np.divmod(picked, j)
    sample = chunked.reshape(-1, 1, CHUNK)[picked]  # [chunks, 1, CHUNK]: one chunk per "column" below
    real = row[:, None] * CHUNK + np.arange(CHUNK) < n  # not a column's zero padding
    scale = scales[column].astype(np.float32)[:, None]
    options = []
    for quality in range(1, nwc_network.load().levels + 1):
        levels = np.full(len(picked), quality - 1, np.int64)
        latents = analyse(sample, levels)
        decoded = synthesise(latents, levels)[:, 0] * scale
        options.append(((NAME, quality), estimated_bits(latents, (n, k), config),
                        feedback.distortion((sample[:, 0] * scale)[real], decoded[real], calibration)))
    return options


def _scalar_options(w: np.ndarray, config: Config, calibration: feedback.Calibration | None) -> list:
    """Each ``tans`` level count's option, measured on a seeded sample of whole rows (``tans`` steps per row) of
    about ``PLAN_CHUNKS * CHUNK`` weights, its coded bits scaled to the layer's rows (its table and stream states
    too: from above); a smaller layer's exactly."""
    n, k = w.shape
    rows = min(n, -(-PLAN_CHUNKS * CHUNK // k))
    sample = w[np.sort(np.random.default_rng(0).choice(n, rows, replace=False))]
    options = []
    for levels in tans.LEVEL_CHOICES:
        if levels > 1 << config.table_log:
            break
        coded = _scalar_layer(tans.encode(sample, tans.Config(levels=levels, table_log=config.table_log)))
        options.append(((tans.NAME, levels), int(np.ceil(8 * coded.nbytes * n / rows)),
                        feedback.distortion(sample, tans.dequantize(*tans.quantize(sample, levels)), calibration)))
    return options


def _float16_option(w: np.ndarray, calibration: feedback.Calibration | None) -> tuple[tuple[str, int], int, float]:
    """The float16 layer's option, exact: its stored bits and the distortion of its rounding (what the encode
    stores: no feedback)."""
    enc = _float16_layer(w)
    return (FLOAT16, 16), 8 * enc.nbytes, feedback.distortion(w, decode(enc), calibration)

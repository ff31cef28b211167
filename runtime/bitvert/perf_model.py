"""Cycle, stall and energy model of BitVert and four bit-serial baselines on the same layers.

All five accelerators are modelled as the same array ("BBS: Bi-Directional Bit-Level Sparsity for Deep
Learning Acceleration", Chen et al., MICRO 2024, sections IV-D and V-A):
32 x 16 processing elements (PEs), 32 weight channels (PE rows) by 16 outputs (PE
columns: pixels or tokens), output-stationary; each PE takes 16 weights and 16
activations and has 8 bit-serial multipliers, so every accelerator has
512 x 8 = 4096 bit-serial multipliers. A *tile* is 16 reduction elements x 32
weight channels x 16 outputs. The array runs in lockstep, so a tile takes as
many cycles as its slowest PE (at least one). A layer is ``ceil(N/32) x ceil(K/16)``
weight tiles, each run for ``ceil(M/16)`` output tiles; its compute cycles are
``ceil(M/16) x sum over weight tiles of the tile's cycles``.

Cycles of one PE (16 weights of one output channel, 8 bit-serial multipliers), per
accelerator. A baseline multiplier takes one weight at a time, so the 16 weights go
through it in two passes of 8 (lanes 0..7, then 8..15); BBS lets BitVert's 8
multipliers take a whole 16-weight column per cycle (at most 8 effectual bits):

- ``stripes``: 2 x 8 = 16 (every bit of every weight).
- ``pragmatic``: per pass, the most one-bits of any of its 8 weights, sign-magnitude,
  the sign bit counted; summed over the two passes.
- ``bitlet``: one multiplier per bit significance, two's complement (as the reference
  simulator): the most ones at any one significance among the 16 weights.
- ``bitwave``: per pass, the non-zero magnitude columns of its 8 weights in
  sign-magnitude after BitWave's bit-flip (non-zero sign-magnitude columns minus the
  sign column, which costs no cycle); summed over the two passes. The weights given
  must already be bit-flipped.
- ``bitvert``: its channel's kept bit columns: 8 for a sensitive channel, 8 - N for
  a binary-pruned one. Channels are reordered into a sensitive and a pruned chunk,
  each padded to whole tiles of 32 channels, as the program does.

So with all 4096 multipliers busy, BitVert's compute-only speedup over Stripes is
16 / (beta x 8 + (1 - beta) x (8 - N)): 2.58x for beta = 10 %, N = 2 and 3.33x for
beta = 20 %, N = 4, the paper's bounds.

Stalls (section V-D): per pass, the pass lasts as long as its slowest multiplier, and
the PE's cycles c_p are the sum of its passes. Per multiplier slot, in PE-cycles
(a PE-cycle split evenly over its 8 multipliers; one unit for BitWave and BitVert,
whose multipliers walk the same columns in lockstep):

- busy: the multiplier's work;
- intra-PE stall: the pass's length minus its work, a multiplier waiting for the
  slowest multiplier of its PE;
- inter-PE stall: T - c_p, a PE waiting for the slowest PE of the array (T the
  tile's cycles);
- padding: slots that hold no weight or no output (N not a multiple of 32, K of 16,
  M of 16);
- memory stall: when the layer is DRAM-bound, every PE waits the difference.

These add up to 512 x the layer's cycles; utilization is busy / (512 x cycles).

DRAM: 128 bits per cycle (64-bit DDR). Weight bytes are counted once (the
reference simulator multiplies the compressed bytes by the precision a second
time; that is a bug and is not reproduced). Activations are INT8; a layer whose
input and output fit together in the 256 KB activation buffer keeps them on chip,
otherwise its input is read and its output written once. A layer takes
max(compute, DRAM) cycles.

Energy (pJ), 28 nm, 800 MHz: PE energy per PE per compute cycle is the PE's power in
the BBS paper's Table V divided by the clock (e.g. BitVert 0.45 mW -> 0.5625 pJ;
the authors' reference code uses other per-cycle constants, times 1.5 for place and
route, that do not match the paper's table: the table is used); one weight-buffer read per
(weight tile, output tile) at 145 pJ for the full 32 x 16 x 8-bit width, scaled by
the bits actually stored (kept columns / 8; metadata left out); one input-buffer
read per (weight tile, output tile) at 97 pJ; DRAM 1000 pJ per 64-bit access.
Area: Table V's PE area times the number of PEs (the array alone; buffers are the
same for every accelerator). The array has ``pe_cols`` output columns (16 by
default; ``report(..., pe_cols=...)`` sweeps it as the paper's Fig. 14 does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ACCELERATORS = ("bitvert", "stripes", "pragmatic", "bitlet", "bitwave")
BASELINES = ACCELERATORS[1:]

PE_ROWS = 32  # weight channels in parallel
PE_COLS = 16  # outputs in parallel
PE_LANES = 16  # reduction elements per PE
MULTIPLIERS_PER_PE = 8
PASSES = PE_LANES // MULTIPLIERS_PER_PE  # a baseline multiplier takes one weight at a time: 2 passes per tile
NUM_PES = PE_ROWS * PE_COLS
BITS = 8
CLOCK_HZ = 800e6
DRAM_BITS_PER_CYCLE = 128
ACTIVATION_BUFFER_BYTES = 256 * 1024

TABLE_V = {  # per PE (8 bit-serial multipliers): area um^2, power mW at 800 MHz (BBS paper, Table V)
    "bitvert": (739.6, 0.45),
    "stripes": (532.8, 0.37),
    "pragmatic": (923.1, 0.51),
    "bitlet": (1665.6, 0.57),
    "bitwave": (702.4, 0.49),
}
PE_PJ_PER_CYCLE = {acc: power_mw * 1e-3 / CLOCK_HZ * 1e12 for acc, (_, power_mw) in TABLE_V.items()}
PE_AREA_UM2 = {acc: area for acc, (area, _) in TABLE_V.items()}
WEIGHT_SRAM_PJ = 145.0  # full-width read of the 288 KB weight buffer (CACTI, 28 nm)
INPUT_SRAM_PJ = 97.0  # full-width read of the 256 KB input buffer
DRAM_PJ_PER_ACCESS = 1000.0
DRAM_ACCESS_BITS = 64
SCALE_BYTES = 4  # one fp32 scale per output channel, stored by every accelerator


def sign_magnitude_ones(w: np.ndarray) -> np.ndarray:
    """One-bits of each weight in 8-bit sign-magnitude, the sign bit counted."""
    w = w.astype(np.int16)
    return np.bitwise_count(np.abs(w).astype(np.uint8)) + (w < 0)


def twos_complement_bits(w: np.ndarray) -> np.ndarray:
    """[..., 8] bits of each weight in 8-bit two's complement, column 0 the sign (-2^7)."""
    u = w.astype(np.int16).astype(np.uint8)
    return (u[..., None] >> np.arange(BITS - 1, -1, -1, dtype=np.uint8)) & 1


def magnitude_bits(w: np.ndarray) -> np.ndarray:
    """[..., 7] magnitude bits of each weight in sign-magnitude, most significant first."""
    mag = np.abs(w.astype(np.int16)).astype(np.uint8)
    return (mag[..., None] >> np.arange(BITS - 2, -1, -1, dtype=np.uint8)) & 1


def _tiles(w: np.ndarray) -> np.ndarray:
    """[N, K] -> [TN, TK, 32, 16] weight tiles, zero padded."""
    n, k = w.shape
    tn, tk = -(-n // PE_ROWS), -(-k // PE_LANES)
    padded = np.zeros((tn * PE_ROWS, tk * PE_LANES), w.dtype)
    padded[:n, :k] = w
    return padded.reshape(tn, PE_ROWS, tk, PE_LANES).transpose(0, 2, 1, 3)


def pe_work(accelerator: str, tiles: np.ndarray, columns: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Work in cycles of every multiplier of every PE per pass, [TN, TK, 32, passes, units],
    and whether a unit is a weight lane (so a padded lane leaves it idle).

    ``tiles`` are the accelerator's weights as [TN, TK, 32, 16] (BitWave's bit-flipped);
    ``columns`` (BitVert only) the kept bit columns per PE row, [TN, 32].
    """
    halves = tiles.reshape(*tiles.shape[:-1], PASSES, MULTIPLIERS_PER_PE)  # lanes 0..7, then 8..15
    if accelerator == "stripes":
        return np.full(halves.shape, BITS, np.int64), True
    if accelerator == "pragmatic":
        return sign_magnitude_ones(halves).astype(np.int64), True
    if accelerator == "bitlet":
        return twos_complement_bits(tiles).sum(axis=-2, dtype=np.int64)[..., None, :], False
    if accelerator == "bitwave":
        return magnitude_bits(halves).any(axis=-2).sum(axis=-1, dtype=np.int64)[..., None], False
    if accelerator == "bitvert":
        tn, tk = tiles.shape[:2]
        return np.broadcast_to(columns[:, None, :, None, None], (tn, tk, PE_ROWS, 1, 1)).astype(np.int64), False
    raise ValueError(f"unknown accelerator {accelerator!r}")


@dataclass
class LayerWorkload:
    """One offloaded layer: x [M, K] times W.T, W the INT8 weights [N, K] (values in [-127, 127]).

    ``bitvert_columns``: kept bit columns per output channel (8 sensitive, 8 - N pruned);
    ``bitvert_bytes``: the BBS encoding's bytes (bit columns, metadata, scales, channel index);
    ``bitwave_weight``: the weights after BitWave's bit-flip (None: use ``weight``);
    ``bitwave_bytes``: BitWave's compressed bytes (None: :func:`bitwave_bytes`).
    """

    name: str
    weight: np.ndarray
    m: int
    bitvert_columns: np.ndarray
    bitvert_bytes: int
    bitwave_weight: np.ndarray | None = None
    bitwave_bytes: int | None = None

    def __post_init__(self):
        n, _ = self.weight.shape
        if self.bitvert_columns.shape != (n,):
            raise ValueError(f"{self.name}: bitvert_columns has shape {self.bitvert_columns.shape}, expected ({n},)")
        if np.abs(self.weight.astype(np.int32)).max(initial=0) > 127:
            raise ValueError(f"{self.name}: INT8 weights must lie in [-127, 127]")

    def weights_for(self, accelerator: str) -> np.ndarray:
        return self.bitwave_weight if accelerator == "bitwave" and self.bitwave_weight is not None else self.weight

    def weight_bytes(self, accelerator: str) -> int:
        n, k = self.weight.shape
        if accelerator == "bitvert":
            return int(self.bitvert_bytes)
        if accelerator == "bitwave":
            return int(self.bitwave_bytes) if self.bitwave_bytes is not None else bitwave_bytes(self.weights_for("bitwave"))
        return n * k + SCALE_BYTES * n


def bitwave_bytes(flipped: np.ndarray) -> int:
    """BitWave's column-compressed size: per group of 8 weights of a channel (its 8-way PE), an
    8-bit column mask, the sign column and the non-zero magnitude columns (8 bits each); plus scales."""
    n, k = flipped.shape
    tiles = _tiles(flipped)
    halves = tiles.reshape(*tiles.shape[:-1], PASSES, MULTIPLIERS_PER_PE)
    kept = magnitude_bits(halves).any(axis=-2).sum(axis=-1)  # [TN, TK, 32, passes]
    real_lanes = (np.arange(tiles.shape[1] * PE_LANES) < k).reshape(tiles.shape[1], PASSES, MULTIPLIERS_PER_PE)
    real = _row_mask(n, tiles.shape[0])[:, None, :, None] & real_lanes.any(axis=-1)[None, :, None, :]
    bits = np.where(real, 8 + MULTIPLIERS_PER_PE * (1 + kept), 0).sum()
    return int(math.ceil(bits / 8)) + SCALE_BYTES * n


def _row_mask(n: int, tn: int) -> np.ndarray:
    return (np.arange(tn * PE_ROWS) < n).reshape(tn, PE_ROWS)


def bitvert_rows(columns: np.ndarray) -> np.ndarray:
    """Channel of each PE row in a BitVert program, -1 for padding: the sensitive chunk (most
    columns) first, then the pruned one, each padded to whole tiles of 32 channels."""
    chunks = []
    for kept in np.unique(columns)[::-1]:
        chunk = np.flatnonzero(columns == kept)
        chunks += [chunk, np.full(-chunk.size % PE_ROWS, -1)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


@dataclass
class WeightProfile:
    """What an accelerator's cycles and energy on a layer owe to its weights alone, per output.

    A layer with M outputs runs every weight tile ceil(M/16) times; ``busy``, ``intra``
    and ``inter`` are PE-cycles for one output (one PE column). JSON-able, so a
    compiled artefact stores it and the report scales it by the M seen at run time.
    """

    accelerator: str
    n: int
    k: int
    tile_cycles_sum: int  # sum over weight tiles of the tile's cycles
    weight_tiles: int
    busy: float
    intra: float
    inter: float
    weight_bytes: int
    weight_reads: float  # weight-buffer reads in full-width units, per output tile
    tile_cycles: np.ndarray | None = field(default=None, repr=False, compare=False)  # [TN, TK]

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "tile_cycles"}

    @classmethod
    def from_json(cls, data: dict) -> "WeightProfile":
        return cls(**data)


def profile(layer: LayerWorkload, accelerator: str) -> WeightProfile:
    """The weight-dependent part of ``layer`` on ``accelerator`` (see the module docstring)."""
    n, k = layer.weight.shape
    weights, columns = layer.weights_for(accelerator), layer.bitvert_columns
    channel = bitvert_rows(columns) if accelerator == "bitvert" else np.arange(n)
    real_row = channel >= 0
    weights = np.where(real_row[:, None], weights[np.maximum(channel, 0)], 0)
    tiles = _tiles(weights)
    tn, tk = tiles.shape[:2]
    rows = _row_mask(channel.size, tn) & np.pad(real_row, (0, tn * PE_ROWS - channel.size)).reshape(tn, PE_ROWS)
    lanes = (np.arange(tk * PE_LANES) < k).reshape(tk, PE_LANES)  # [TK, 16]
    padded_columns = np.zeros(tn * PE_ROWS, np.int64)
    padded_columns[: channel.size] = np.where(real_row, columns[np.maximum(channel, 0)], 0)
    work, per_lane = pe_work(accelerator, tiles, padded_columns.reshape(tn, PE_ROWS))

    lane_valid = lanes.reshape(tk, PASSES, MULTIPLIERS_PER_PE)
    unit_valid = np.broadcast_to(lane_valid[None, :, None] if per_lane else True, work.shape)
    unit_valid = unit_valid & rows[:, None, :, None, None]
    pass_cycles = np.where(unit_valid, work, 0).max(axis=-1)  # [TN, TK, 32, passes]
    pe_cycles = pass_cycles.sum(axis=-1)  # c_p
    tile_cycles = np.maximum(pe_cycles.max(axis=-1), 1)  # [TN, TK]
    share = work.shape[-1]  # a PE's cycle is split evenly over its multipliers
    busy = np.where(unit_valid, work, 0).sum(axis=(-2, -1)) / share
    intra = np.where(unit_valid, pass_cycles[..., None] - work, 0).sum(axis=(-2, -1)) / share
    inter = np.where(rows[:, None, :], tile_cycles[..., None] - pe_cycles, 0)

    if accelerator == "bitvert":
        stored = padded_columns.reshape(tn, 1, PE_ROWS)  # kept columns per weight of each PE row
    elif accelerator == "bitwave":
        stored = 1 + work[..., 0].mean(axis=-1)  # the sign column and the non-zero magnitude columns
    else:
        stored = np.full((1, 1, PE_ROWS), BITS)
    read_fraction = np.where(rows[:, None, :], stored, 0).sum(axis=-1) / (PE_ROWS * BITS)
    return WeightProfile(
        accelerator, n, k, int(tile_cycles.sum()), tn * tk, float(busy.sum()), float(intra.sum()), float(inter.sum()),
        layer.weight_bytes(accelerator), float(np.broadcast_to(read_fraction, (tn, tk)).sum()), tile_cycles)


@dataclass
class LayerPerf:
    """One accelerator on one layer. ``pe_cycles`` splits 512 x cycles into busy and stalls."""

    accelerator: str
    compute_cycles: int
    dram_cycles: int
    dram_bytes: dict[str, int]
    pe_cycles: dict[str, float]
    energy_pj: dict[str, float]
    tile_cycles: np.ndarray | None = field(default=None, repr=False)  # [TN, TK] cycles per weight tile
    num_pes: int = NUM_PES

    @property
    def cycles(self) -> int:
        return max(self.compute_cycles, self.dram_cycles)

    @property
    def seconds(self) -> float:
        return self.cycles / CLOCK_HZ

    @property
    def utilization(self) -> float:
        return self.pe_cycles["busy"] / (self.num_pes * self.cycles) if self.cycles else 0.0

    def to_json(self) -> dict:
        total_pe = self.num_pes * self.cycles or 1
        return {
            "cycles": int(self.cycles), "compute_cycles": int(self.compute_cycles), "dram_cycles": int(self.dram_cycles),
            "time_s": self.seconds, "utilization": self.utilization,
            "stalls": {k: v / total_pe for k, v in self.pe_cycles.items() if k != "busy"},
            "dram_bytes": dict(self.dram_bytes),
            "energy_pj": {**self.energy_pj, "total": sum(self.energy_pj.values())},
        }


def layer_perf(prof: WeightProfile, m: int, pe_cols: int = PE_COLS) -> LayerPerf:
    """The layer with ``m`` outputs (pixels or tokens) on the profiled accelerator with ``pe_cols`` PE columns."""
    num_pes = PE_ROWS * pe_cols
    out_tiles = -(-m // pe_cols)
    compute_cycles = out_tiles * prof.tile_cycles_sum
    pe_cycles = {"busy": m * prof.busy, "intra_pe_stall": m * prof.intra, "inter_pe_stall": m * prof.inter}
    pe_cycles["padding"] = float(num_pes * compute_cycles - sum(pe_cycles.values()))
    activations = m * (prof.k + prof.n)
    dram_bytes = {"weights": prof.weight_bytes,
                  "activations": activations if activations > ACTIVATION_BUFFER_BYTES else 0}
    dram_cycles = math.ceil(8 * sum(dram_bytes.values()) / DRAM_BITS_PER_CYCLE)
    pe_cycles["memory_stall"] = float(num_pes * max(0, dram_cycles - compute_cycles))
    energy = {
        "pe": PE_PJ_PER_CYCLE[prof.accelerator] * num_pes * compute_cycles,
        "weight_sram": WEIGHT_SRAM_PJ * out_tiles * prof.weight_reads,
        "input_sram": INPUT_SRAM_PJ * out_tiles * prof.weight_tiles,
        "dram": DRAM_PJ_PER_ACCESS * 8 * sum(dram_bytes.values()) / DRAM_ACCESS_BITS,
    }
    return LayerPerf(prof.accelerator, compute_cycles, dram_cycles, dram_bytes, pe_cycles, energy, prof.tile_cycles,
                     num_pes)


def simulate_layer(layer: LayerWorkload, accelerator: str) -> LayerPerf:
    """Cycles, PE-cycle breakdown, DRAM traffic and energy of ``layer`` on ``accelerator``."""
    return layer_perf(profile(layer, accelerator), layer.m)


def profiles(layer: LayerWorkload) -> dict[str, WeightProfile]:
    return {acc: profile(layer, acc) for acc in ACCELERATORS}


def simulate(layers: list[LayerWorkload]) -> dict:
    """Every accelerator on every layer (see :func:`report`)."""
    return report([(layer.name, layer.m, profiles(layer)) for layer in layers])


def report(runs: list[tuple[str, int, dict[str, WeightProfile]]], pe_cols: int = PE_COLS) -> dict:
    """Per layer and total figures for runs of (layer name, M, profile per accelerator) on an array of
    ``pe_cols`` PE columns: ``{"layers": [...], "accelerators": {name: totals}, "bitvert_vs": {baseline: ratios}}``."""
    num_pes = PE_ROWS * pe_cols
    per_layer = []
    totals = {a: {"cycles": 0, "compute_cycles": 0, "energy_pj": 0.0, "energy_by_component_pj": {},
                  "dram_bytes": 0, "pe_cycles": {}} for a in ACCELERATORS}
    for name, m, profs in runs:
        first = profs[ACCELERATORS[0]]
        entry = {"name": name, "shape": [first.n, first.k], "m": int(m)}
        for acc in ACCELERATORS:
            perf = layer_perf(profs[acc], m, pe_cols)
            entry[acc] = perf.to_json()
            t = totals[acc]
            t["cycles"] += perf.cycles
            t["compute_cycles"] += perf.compute_cycles
            t["dram_bytes"] += sum(perf.dram_bytes.values())
            for part, pj in perf.energy_pj.items():
                t["energy_by_component_pj"][part] = t["energy_by_component_pj"].get(part, 0.0) + pj
                t["energy_pj"] += pj
            for part, c in perf.pe_cycles.items():
                t["pe_cycles"][part] = t["pe_cycles"].get(part, 0.0) + c
        entry["bitvert_speedup"] = {b: entry[b]["cycles"] / entry["bitvert"]["cycles"] for b in BASELINES}
        per_layer.append(entry)
    for acc, t in totals.items():
        pe_total = num_pes * t["cycles"] or 1
        t["pe_array_area_mm2"] = PE_AREA_UM2[acc] * num_pes / 1e6
        t["time_s"] = t["cycles"] / CLOCK_HZ
        t["utilization"] = t["pe_cycles"].get("busy", 0.0) / pe_total
        t["stalls"] = {k: v / pe_total for k, v in t.pop("pe_cycles").items() if k != "busy"}
    bv = totals["bitvert"]
    versus = {b: {"speedup": totals[b]["cycles"] / bv["cycles"] if bv["cycles"] else 0.0,
                  "compute_speedup": totals[b]["compute_cycles"] / bv["compute_cycles"] if bv["compute_cycles"] else 0.0,
                  "energy_ratio": totals[b]["energy_pj"] / bv["energy_pj"] if bv["energy_pj"] else 0.0,
                  "area_ratio": PE_AREA_UM2[b] / PE_AREA_UM2["bitvert"]}
              for b in BASELINES}
    return {"clock_hz": CLOCK_HZ, "pe_cols": pe_cols, "multipliers": num_pes * MULTIPLIERS_PER_PE, "layers": per_layer,
            "accelerators": totals, "bitvert_vs": versus}

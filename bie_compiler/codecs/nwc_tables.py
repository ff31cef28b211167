"""Shared latent tables of the ``nwc`` codec: a fixed bank of tANS count tables that a latent channel names by index.

A channel's own table costs 16 bits per symbol of its alphabet: more than a small layer's weights can carry
(16 channels of 20-40 symbols each: 5-10 kbit). A bank row instead costs the channel one byte. The bank holds
zero-centred discretized Laplace tables, ``SCALES`` scales (geometric, in latent units) times ``HALF_WIDTHS``
supports [-m, m] (every symbol of the support codable, none outside it): the latents' shape at every quality
level is close to one of them (the codec was trained with a Laplace prior per channel). Row ``r`` codes symbol
``s`` (0..2m) as latent ``lowest + s``: the channel stores its own ``lowest`` (its centre minus m), as with its
own table. The bank is made by this module's code, identically for every layer and model, like the trained
networks it is shared and not counted per layer; an encoding records its digest and decodes only with the
same bank.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from . import tans_coder

TABLE_LOG = 11  # the bank is made for tables of 2^11 states (nwc's default); other table sizes use own tables only
ALPHABET = 255  # symbols of a bank row: latents within +-127 (nwc.LATENT_LIMIT)
SCALES = np.geomspace(0.1, 40.0, 18)
HALF_WIDTHS = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 127)
OWN = 255  # a channel's table index meaning: its own counts are stored


@functools.cache
def bank() -> np.ndarray:
    """uint16 [rows, ALPHABET]: row ``i * len(HALF_WIDTHS) + w`` is scale ``SCALES[i]`` on support
    ``[-HALF_WIDTHS[w], HALF_WIDTHS[w]]`` (symbols ``0..2m``), counts summing to ``2^TABLE_LOG``."""
    rows = []
    for scale in SCALES:
        for m in HALF_WIDTHS:
            edges = np.arange(-m, m + 2) - 0.5
            tail = 0.5 * np.exp(-np.abs(edges) / scale)
            cdf = np.where(edges < 0, tail, 1 - tail)
            mass = np.diff(cdf)
            histogram = np.zeros(ALPHABET, np.int64)
            histogram[:2 * m + 1] = np.maximum(1, np.rint(mass / mass.sum() * 2**30)).astype(np.int64)
            rows.append(tans_coder.normalize_counts(histogram, TABLE_LOG))
    return np.stack(rows)


@functools.cache
def bank_id() -> str:
    """A short digest of the bank: an encoding that names bank rows decodes only with this bank."""
    return hashlib.sha256(bank().tobytes()).hexdigest()[:16]


def choose(latents: np.ndarray, symbols: int, table_log: int) -> tuple[int, int, float]:
    """(table index, lowest latent, estimated bits) of one channel whose ``symbols`` latents are sampled by
    ``latents`` (int, 1-D; all of them or a sample): a bank row centred on the latents' median where its bits
    (``symbols`` times the sample's cross-entropy against the row, plus the index byte) are fewer than with an
    own table (the Miller-Madow corrected entropy plus 16 bits per symbol of the alphabet); else ``OWN``."""
    values, counts = np.unique(latents, return_counts=True)
    total = len(latents)
    entropy = float(-(counts * np.log2(counts / total)).sum() + (len(values) - 1) / (2 * np.log(2)))
    alphabet = int(values[-1] - values[0]) + 1
    best = (OWN, int(values[0]), entropy * symbols / total + 16 * alphabet)
    if table_log != TABLE_LOG:
        return best
    centre = int(np.rint(np.median(latents)))
    reach = max(centre - int(values[0]), int(values[-1]) - centre)
    table = bank()
    for w, m in enumerate(HALF_WIDTHS):
        if m < reach:
            continue
        rows = np.arange(len(SCALES)) * len(HALF_WIDTHS) + w
        probabilities = table[rows][:, values - centre + m].astype(np.float64) / (1 << TABLE_LOG)
        bits = -(np.log2(probabilities) * counts).sum(axis=1) * symbols / total + 8
        i = int(np.argmin(bits))
        if bits[i] < best[2]:
            best = (int(rows[i]), centre - m, float(bits[i]))
    return best

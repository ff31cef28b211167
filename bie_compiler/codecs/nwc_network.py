"""The NWC codec network in numpy: weight columns cut into normalised chunks, analysis and synthesis networks.

Preprocessing (as the paper): the weight [N, K] is taken column by column (column k: the N weights one input
feature k meets), each column divided by its standard deviation (the factor kept in float16, as stored), and
cut into chunks of ``CHUNK`` consecutive weights (the last one zero-padded when N is not a multiple).

Networks: ``analysis`` maps a chunk to ``latent`` channels, ``synthesis`` maps rounded latents back to a
chunk. Both are residual MLPs: an input layer to ``width``, ``blocks`` residual blocks
``h + W2 relu(W1 h + b1) + b2``, each followed by an element-wise product with the chunk's quality-level
embedding, and an output layer. The parameters are the trained codec's (:func:`load`, shipped as
``nwc_codec.npz``, written by ``tools/train_nwc.py``, which defines the same forward pass in torch).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CodecError

CHUNK = 16
BATCH = 4096  # rows per pass through a network: its activations stay in the caches
CODEC_FILE = Path(__file__).with_name("nwc_codec.npz")
NETS = ("analysis", "synthesis")


@dataclass(frozen=True)
class Network:
    """The trained codec: parameters by name, the quality levels' lambdas, and how it was trained."""

    params: dict[str, np.ndarray]
    lambdas: np.ndarray  # float64 [levels]: distortion weight of each quality level, increasing
    config: dict  # width, blocks, latent, training settings, data sha256

    @property
    def levels(self) -> int:
        return len(self.lambdas)

    @property
    def latent(self) -> int:
        return int(self.config["latent"])

    def run(self, net: str, x: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """``net`` (analysis or synthesis) on float32 rows ``x`` [M, in], each at its quality level [M]."""
        p = self.params
        out = np.empty((len(x), p[f"{net}.out.b"].shape[0]), np.float32)
        for start in range(0, len(x), BATCH):
            out[start:start + BATCH] = self._run_batch(net, x[start:start + BATCH], levels[start:start + BATCH])
        return out

    def _run_batch(self, net: str, x: np.ndarray, levels: np.ndarray) -> np.ndarray:
        p = self.params
        embedding = p[f"{net}.embedding"]  # [levels, blocks, width]
        one_level = len(levels) and levels.min() == levels.max()  # one embedding row broadcast, not gathered per row
        h = x.astype(np.float32) @ p[f"{net}.in.w"]
        h += p[f"{net}.in.b"]
        for b in range(int(self.config["blocks"])):
            inner = h @ p[f"{net}.block{b}.w1"]
            inner += p[f"{net}.block{b}.b1"]
            np.maximum(inner, np.float32(0), out=inner)
            h += inner @ p[f"{net}.block{b}.w2"] + p[f"{net}.block{b}.b2"]
            h *= embedding[levels[0], b] if one_level else embedding[levels, b]
        return h @ p[f"{net}.out.w"] + p[f"{net}.out.b"]


def from_arrays(arrays: dict[str, np.ndarray]) -> Network:
    """The network from the arrays of a codec file (parameters, ``lambdas``, ``config`` as JSON bytes)."""
    try:
        config = json.loads(bytes(arrays["config"]).decode())
        params = {k: np.asarray(v, np.float32) for k, v in arrays.items() if k.split(".")[0] in NETS}
        return Network(params, np.asarray(arrays["lambdas"], np.float64), config)
    except KeyError as e:
        raise CodecError(f"nwc: the codec file lacks {e}") from None


@functools.cache
def load(path: str | Path = CODEC_FILE) -> Network:
    """The shipped trained codec (or another codec file)."""
    if not Path(path).is_file():
        raise CodecError(f"nwc: no trained codec at {path}; train one with tools/train_nwc.py")
    with np.load(path) as f:
        return from_arrays(dict(f))


def column_scales(weight: np.ndarray) -> np.ndarray:
    """Each column's standard deviation as stored: float16 [K]; an all-zero column's is 0 (it decodes to exact
    zeros: the network's output at any latents is not), a constant column's 1 (its values coded as they are), and
    one below float16's smallest normal number takes that number (such a column codes as about zero)."""
    std = weight.astype(np.float64).std(axis=0)
    if std.max() > np.finfo(np.float16).max:
        raise CodecError(f"nwc: a column's standard deviation {std.max():.3g} does not fit float16 (65504)")
    tiny = float(np.finfo(np.float16).tiny)
    return np.where(std > 0, np.maximum(std, tiny), np.where(weight.any(axis=0), 1.0, 0.0)).astype(np.float16)


def chunks(weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Normalised chunks [K, J, CHUNK] of a weight [N, K] (J = ceil(N / CHUNK), the last one zero-padded)."""
    n, k = weight.shape
    j = -(-n // CHUNK)
    cols = np.zeros((k, j * CHUNK), np.float32)
    cols[:, :n] = weight.T / np.where(scales == 0, 1, scales).astype(np.float32)[:, None]  # 0: an all-zero column
    return cols.reshape(k, j, CHUNK)


def unchunk(chunked: np.ndarray, scales: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`chunks`: the weight [N, K] from chunks [K, J, CHUNK] and the column scales."""
    k = chunked.shape[0]
    cols = chunked.reshape(k, -1)[:, :n] * scales.astype(np.float32)[:, None]
    return np.ascontiguousarray(cols.T, dtype=np.float32)

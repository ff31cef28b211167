"""The nwc synthesis network compiled by TVM equals the numpy reference decoder."""

import numpy as np
import pytest

from bie_compiler.codecs import nwc, nwc_network
from bie_compiler.codegen.nwc_synthesis import Synthesis
from bie_compiler.codegen.target import make_target


@pytest.fixture(scope="module")
def synthesis():
    return Synthesis(nwc_network.load(), make_target())


@pytest.mark.parametrize("rows", [1, 37, 4096])
def test_tvm_synthesis_equals_numpy_at_every_level(synthesis, rows):
    network = nwc_network.load()
    rng = np.random.default_rng(rows)
    latents = rng.integers(-40, 41, (rows, network.latent))
    levels = np.arange(rows) % network.levels
    expected = network.run("synthesis", latents.astype(np.float32), levels)
    got = synthesis(latents, levels)
    assert got.shape == (rows, nwc_network.CHUNK)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_tvm_synthesis_decodes_an_encoding_as_the_reference_decoder(synthesis):
    rng = np.random.default_rng(0)
    w = (rng.standard_t(5, (100, 40)) * 0.05).astype(np.float32)
    enc = nwc.encode(w, nwc.Config(quality=7))
    latents = nwc.latents(enc)
    levels = np.repeat(enc.arrays["levels"].astype(np.int64), latents.shape[1])
    chunks = synthesis(latents.reshape(-1, latents.shape[-1]), levels).reshape(latents.shape[0], -1, nwc_network.CHUNK)
    decoded = nwc_network.unchunk(chunks, enc.arrays["scales"], 100)
    reference = nwc.decode(enc)
    assert np.abs(decoded - reference).max() <= 1e-5 * np.abs(reference).max()

"""Error feedback (codecs/feedback.py) against references, and every codec that plugs into it."""

import itertools
import json

import numpy as np
import pytest

from bie_compiler import codecs
from bie_compiler.cli import main
from bie_compiler.codecs import bbs, bie_binary, bie_bitplane, bitwave, feedback, int8, tans, uniform
from bie_compiler.errors import CodecError


def layer(n, k, rows=64, seed=0, correlated=True):
    """A weight [n, k] and X^T X of inputs with correlated features (where feedback has something to gain)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k))
    if correlated:
        x = x @ (np.eye(k) + 0.8 * rng.standard_normal((k, k)) / np.sqrt(k))
    w = (rng.standard_t(4, (n, k)) * 0.05).astype(np.float32)
    return w, x.T @ x


def objective(w, q, xtx):
    e = np.asarray(w, np.float64) - q
    return float(np.einsum("nk,kl,nl->", e, xtx, e))


class FixedGrid:
    """Integers times a fixed scale per row, |code| <= qmax (the simplest codec grid)."""

    def __init__(self, scales, qmax, k):
        self.scales, self.qmax, self.group = np.asarray(scales, np.float64).reshape(-1), qmax, k

    def start_group(self, columns, weights, importance):
        pass

    def round(self, column, values):
        return np.clip(np.rint(values / self.scales), -self.qmax, self.qmax) * self.scales


def obs_reference(w, xtx, grid, damping):
    """Unblocked GPTQ as the paper states it: round column k, w_rest -= e / Hinv[k,k] * Hinv[k, rest], then drop
    k from H^-1 by its Schur complement (no Cholesky, no lazy blocks)."""
    h = feedback.prepared_hessian(feedback.Calibration(xtx, 1, damping), w.shape[1])
    hinv = np.linalg.inv(h)
    w = np.array(w, np.float64)
    out = np.zeros_like(w)
    for k in range(w.shape[1]):
        out[:, k] = grid.round(k, w[:, k])
        e = (w[:, k] - out[:, k]) / hinv[k, k]
        w[:, k + 1:] -= np.outer(e, hinv[k, k + 1:])
        hinv = hinv - np.outer(hinv[:, k], hinv[k, :]) / hinv[k, k]
    return out


@pytest.mark.parametrize("block", [1, 2, 3, 128])
def test_blocked_lazy_feedback_is_the_unblocked_obs_update(block):
    w, xtx = layer(6, 9, seed=1)
    grid = FixedGrid(np.abs(w).max(axis=1) / 3, 3, 9)
    reference = obs_reference(w, xtx, grid, 0.01)
    got = feedback.quantize(w, feedback.Calibration(xtx, 64, 0.01), grid, block=block)
    assert np.array_equal(got, reference) or np.allclose(got, reference, atol=1e-12)


def test_feedback_beats_rounding_and_brute_force_bounds_it():
    """On X (W - Q)^T: the best grid point per row (all 7^5 of them) <= feedback on every row, and on a larger
    layer feedback < round-to-nearest (greedy feedback is not better on every tiny row)."""
    w, xtx = layer(16, 5, rows=12, seed=2)
    scales = (np.abs(w).max(axis=1) / 3).astype(np.float64)
    fed = feedback.quantize(w, feedback.Calibration(xtx, 12, 0.0), FixedGrid(scales, 3, 5))
    codes = np.array(list(itertools.product(range(-3, 4), repeat=5)), np.float64)
    best_total = 0.0
    for n in range(16):
        e = w[n].astype(np.float64) - codes * scales[n]
        best = np.einsum("ck,kl,cl->c", e, xtx, e).min()
        assert best - 1e-12 <= objective(w[n:n + 1], fed[n:n + 1], xtx)
        assert np.allclose(fed[n] / scales[n], np.rint(fed[n] / scales[n]), atol=1e-9)  # on the grid
        assert np.abs(np.rint(fed[n] / scales[n])).max() <= 3
        best_total += best
    assert best_total <= objective(w, fed, xtx)
    w, xtx = layer(32, 96, rows=200, seed=7)
    scales = (np.abs(w).max(axis=1) / 7).astype(np.float64)
    fed = feedback.quantize(w, feedback.Calibration(xtx, 200), FixedGrid(scales, 7, 96))
    rtn = np.clip(np.rint(w / scales[:, None]), -7, 7) * scales[:, None]
    assert objective(w, fed, xtx) < 0.8 * objective(w, rtn, xtx)


def test_dead_inputs_keep_their_weights_rounded_to_nearest_and_act_order():
    w, xtx = layer(8, 16, seed=3)
    # an input the calibration data never showed (a post-ReLU channel of few samples): other data may use it, so
    # its weights are rounded to nearest, not zeroed, and no other column's error is fed into them
    xtx[5, :] = xtx[:, 5] = 0
    grid = FixedGrid(np.abs(w).max(axis=1) / 7, 7, 16)
    got = feedback.quantize(w, feedback.Calibration(xtx, 64, 0.01), grid)
    rtn = grid.round(0, w.T).T
    np.testing.assert_array_equal(got[:, 5], rtn[:, 5])
    assert np.any(got[:, 5] != 0)
    live = np.delete(np.arange(16), 5)  # the others: feedback on the live inputs alone
    alone = feedback.quantize(w[:, live], feedback.Calibration(xtx[np.ix_(live, live)], 64, 0.01), grid)
    np.testing.assert_allclose(got[:, live], alone, rtol=0, atol=1e-12)
    ordered = feedback.quantize(w, feedback.Calibration(xtx, 64, 0.01, act_order=True), grid)
    assert objective(w, ordered, xtx) < objective(w, rtn, xtx)
    with pytest.raises(CodecError, match="act_order needs one scale per output channel"):
        bie_bitplane.encode(w, bie_bitplane.Config(bits=4, group_size=8), feedback.Calibration(xtx, 64, 0.01, True))


CODEC_CASES = [
    ("bie-bitplane", {"bits": 4}),
    ("bie-bitplane", {"bits": 3, "group_size": 32}),
    ("bie-bitplane", {"bits": 4, "group_size": 48}),  # groups that do not divide the lazy block
    ("int8", {}),
    ("tans", {"levels": 7}),
    ("bbs", {"preset": "moderate"}),
    ("bbs", {"preset": "conservative"}),
    ("bie-binary", {"layout": "index"}),
    ("bie-binary", {"layout": "bitmap", "density": 0.3}),
    ("bie-blocked", {"threshold": 0.05}),
    ("bitwave", {}),
    ("bitwave", {"pruned_columns": 2}),
]


@pytest.mark.parametrize("codec,options", CODEC_CASES)
def test_each_codec_stores_exactly_what_feedback_rounded(codec, options, monkeypatch):
    """decode(encoding) is bit for bit the feedback's rounded weights, encoding again reproduces the encoding,
    and the output error on the calibration objective is below round-to-nearest's."""
    w, xtx = layer(40, 100, rows=256, seed=4)
    calibration = feedback.Calibration(xtx, 256)
    rounded = []
    real = feedback.quantize
    monkeypatch.setattr(feedback, "quantize", lambda *a, **k: rounded.append(real(*a, **k)) or rounded[-1])
    config = codecs.make_config(codec, options)
    enc = codecs.encode(codec, w, config, calibration)
    module = codecs.get_codec(codec)
    decoded = module.decode(enc)
    assert np.array_equal(rounded[0].astype(np.float32), decoded)
    assert codecs.encode(codec, w, config, calibration).sha256() == enc.sha256()
    rtn = module.decode(module.encode(w, config))
    assert feedback.output_error(w, decoded, xtx) < feedback.output_error(w, rtn, xtx)


def test_grids_hold_the_format_ranges():
    w, xtx = layer(48, 64, rows=128, seed=5)
    w[3] *= 40  # an outlier channel: feedback pushes values to the edge of every grid
    calibration = feedback.Calibration(xtx, 128)
    codes, scales = bie_bitplane.quantize(w, bie_bitplane.Config(bits=3, group_size=32), calibration)
    assert np.abs(codes).max() <= 3 and scales.shape == (48, 4)  # K padded to 128: four groups of 32
    codes, _ = int8.quantize(w, calibration)
    assert np.abs(codes).max() <= 127
    codes, _ = tans.quantize(w, 5, calibration)
    assert np.abs(codes).max() <= 2
    enc = bbs.encode(w, bbs.Config(preset="moderate", sensitive_channels=0), calibration)
    kept = bbs.unpack_columns(enc.arrays["columns"], 48)
    assert np.abs(kept).max() <= (1 << (7 - 4)) - 1
    enc = bitwave.encode(w, bitwave.Config(pruned_columns=4), calibration)
    kept, z = bbs.unpack_columns(enc.arrays["columns"], 48), bbs.from_lanes(enc.arrays["meta"], 48)
    assert np.abs(kept).max() <= (1 << (7 - 4)) - 1 and z.max() <= 4
    keep, negative, scales = bie_binary.ternarize(w, bie_binary.Config(), calibration)
    assert not np.any(negative & ~keep) and np.all(scales >= 0) and keep[3].any()


def test_data_free_scale_search_is_unchanged():
    """clip_search without importance is the weight-error search the codecs always did (ties keep the larger)."""
    w = np.clip(np.round(np.random.default_rng(6).standard_normal((5, 40)) * 4), -7, 7).astype(np.float32)
    w[:, 0] = 7  # on the full-range grid exactly
    scales = uniform.clip_search(w, 7, bie_bitplane.CLIP_RATIOS)
    assert np.array_equal(scales, np.ones(5, np.float32))


@pytest.mark.parametrize("weighted", [False, True])
def test_scale_search_in_row_blocks_equals_each_row_alone(weighted, monkeypatch):
    """Searching rows in blocks (a last short block, grouped rows) picks each row's scale as a search of that row alone."""
    rng = np.random.default_rng(7)
    w = (rng.standard_t(4, size=(11, 3, 40)) * 0.05).astype(np.float32)
    importance = rng.random(40).astype(np.float32) if weighted else None
    alone = np.array([[uniform.clip_search(w[i, j][None], 7, tans.STEP_RATIOS, importance)[0] for j in range(3)]
                      for i in range(11)])
    monkeypatch.setattr(uniform, "BLOCK_ELEMENTS", 4 * 40)  # 4 rows a block: 33 rows end in a short block
    blocked = uniform.clip_search(w, 7, tans.STEP_RATIOS, importance)
    assert blocked.shape == (11, 3) and blocked.dtype == np.float32
    assert np.array_equal(blocked, alone) and len(np.unique(blocked)) > 3


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["bie-binary", "bie-blocked", "bitwave"])
def test_compile_with_calibration_passes_check(codec, model_dir, tmp_path, capsys):
    """Feedback encodings are ones the kernels compute exactly (check's parity on the decoded weights)."""
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32))
    out = tmp_path / "fb"
    assert main(["compile", str(model_dir["mlp"]), "--codec", codec, "-q", "-o", str(out),
                 "--calibration", str(tmp_path / "calib.npz")]) == 0
    layers = [layer for layer in json.loads((out / "manifest.json").read_text())["layers"]
              if not layer["fallback_reason"]]
    assert layers and all(layer["details"]["feedback"] == "gptq" for layer in layers)
    capsys.readouterr()
    # ternary weights may move the outputs below check's fidelity floor; parity is what is checked here
    assert main(["check", str(out), "--batch", "2", "--json", "--min-cosine", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["decoded_max_rel_err"] < 1e-4

"""Train the NWC weight codec on the zoo models' weights and write it as bie_compiler/codecs/nwc_codec.npz.

    BIE_ZOO_CACHE=/tmp/zoo_analyze/cache .venv/bin/python tools/train_nwc.py   (needs the ``nwc`` extra: torch)

Data: every matmul and conv weight the compiler would encode, of the zoo models named by ``--models`` (built
with ``bie-compiler zoo NAME``), preprocessed as the codec does (:mod:`bie_compiler.codecs.nwc_network`:
columns normalised to unit std, chunks of 16); ``ppocr-det`` is held out by default to measure generalisation.

Training (the paper's recipe, sized for two CPU cores): each chunk gets a quality level drawn uniformly at
random; the loss per chunk is ``(rate + lambda_q * MSE) / sqrt(lambda_q)``: the rate in bits per weight under a
factorized prior (one zero-mean Laplace per quality level and latent channel, its scale learned) of the
latent plus uniform noise, the MSE of the synthesis of the rounded latent (straight-through). The division
by sqrt(lambda_q) keeps the high-quality chunks from drowning the gradient of the others. Deterministic for a
given seed, data and thread count: the same command reproduces the shipped codec.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from bie_compiler.codecs.layout import codec_matrix
from bie_compiler.codecs.nwc_network import CHUNK, CODEC_FILE, column_scales, chunks
from bie_compiler.decoded_weights import initializer_arrays, weight_layers

DEFAULT_MODELS = ("minilm", "digits-mlp", "digits-cnn")


def training_chunks(models: list[str], cache: Path) -> np.ndarray:
    """Every normalised chunk of the models' encodable weights, float32 [M, CHUNK], in model and layer order."""
    out = []
    for name in models:
        entry = json.loads((cache / name / "entry.json").read_text())
        model = onnx.load(str(cache / name / entry["model"]))
        layers = [r for r in weight_layers(model) if r.fallback_reason is None]
        arrays = initializer_arrays(model, [r.name for r in layers])
        for r in layers:
            matrix = codec_matrix(arrays[r.name], r.op, r.transposed)
            out.append(chunks(matrix, column_scales(matrix)).reshape(-1, CHUNK))
    return np.concatenate(out)


def synthetic_conv_chunks(count: int, seed: int) -> np.ndarray:
    """``count`` normalised chunks of synthetic conv-shaped weights [O, I*kh*kw] (float32 [count, CHUNK]): Student-t
    values (3 to 8 degrees of freedom: heavy tails) times a log-normal scale per output channel, the scale a folded
    batch norm leaves on each row, so that a column (one input channel and kernel position over the outputs) mixes
    rows of very different size, as the held-out detector's do and MiniLM's do not."""
    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < count:
        rows = int(rng.choice([16, 24, 32, 48, 96, 192, 384]))
        cols = int(rng.choice([1, 9, 25])) * int(rng.choice([8, 16, 24, 48, 96]))
        row_scale = np.exp(rng.normal(0.0, rng.uniform(0.3, 1.2), (rows, 1)))
        matrix = (rng.standard_t(rng.choice([3, 4, 5, 8]), (rows, cols)) * row_scale).astype(np.float32)
        part = chunks(matrix, column_scales(matrix)).reshape(-1, CHUNK)
        out.append(part)
        total += len(part)
    return np.concatenate(out)[:count]


class Codec(torch.nn.Module):
    """The networks of :class:`bie_compiler.codecs.nwc_network.Network` plus the training prior."""

    def __init__(self, width: int, blocks: int, latent: int, lambdas: np.ndarray):
        super().__init__()
        self.blocks = blocks
        self.register_buffer("lambdas", torch.tensor(lambdas, dtype=torch.float32))
        # Initial embeddings put the latent step near the one a unit-variance source wants at each lambda
        # (ECSQ: D = 1 / (2 ln 2 lambda), step sqrt(12 D)); training moves them.
        gain = torch.sqrt(self.lambdas * 2 * math.log(2) / 12)
        self.nets = torch.nn.ModuleDict()
        for net, (n_in, n_out), first in (("analysis", (CHUNK, latent), gain), ("synthesis", (latent, CHUNK), 1 / gain)):
            layers = torch.nn.ModuleDict({"in": torch.nn.Linear(n_in, width), "out": torch.nn.Linear(width, n_out)})
            for b in range(blocks):
                layers[f"block{b}"] = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                                          torch.nn.Linear(width, width))
            emb = torch.ones(len(lambdas), blocks, width)
            emb[:, -1 if net == "analysis" else 0] *= first[:, None]
            layers["embedding"] = torch.nn.Embedding(len(lambdas), blocks * width, _weight=emb.reshape(len(lambdas), -1))
            self.nets[net] = layers
        self.log_scale = torch.nn.Parameter(torch.zeros(len(lambdas), latent))  # Laplace prior per level, channel

    def run(self, net: str, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        layers = self.nets[net]
        h = layers["in"](x)
        emb = layers["embedding"](levels).reshape(len(x), self.blocks, -1)
        for b in range(self.blocks):
            h = (h + layers[f"block{b}"](h)) * emb[:, b]
        return layers["out"](h)

    def loss(self, x: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.run("analysis", x, levels)
        noisy = z + torch.rand_like(z) - 0.5
        scale = torch.exp(self.log_scale[levels])
        mass = _laplace_cdf(noisy + 0.5, scale) - _laplace_cdf(noisy - 0.5, scale)
        rate = -torch.log2(mass.clamp_min(1e-9)).sum(1) / CHUNK  # bits per weight
        rounded = z + (torch.round(z) - z).detach()
        mse = ((self.run("synthesis", rounded, levels) - x) ** 2).mean(1)
        lam = self.lambdas[levels]
        return ((rate + lam * mse) / torch.sqrt(lam)).mean(), rate, mse

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters as nwc_network names them (weights [in, out])."""
        out = {}
        for net, layers in self.nets.items():
            for part in ("in", "out"):
                out[f"{net}.{part}.w"] = layers[part].weight.detach().numpy().T.copy()
                out[f"{net}.{part}.b"] = layers[part].bias.detach().numpy().copy()
            for b in range(self.blocks):
                seq = layers[f"block{b}"]
                for i, lin in (("1", seq[0]), ("2", seq[2])):
                    out[f"{net}.block{b}.w{i}"] = lin.weight.detach().numpy().T.copy()
                    out[f"{net}.block{b}.b{i}"] = lin.bias.detach().numpy().copy()
            out[f"{net}.embedding"] = layers["embedding"].weight.detach().numpy().reshape(len(self.lambdas), self.blocks, -1)
        return {k: v.astype(np.float32) for k, v in out.items()}


def _laplace_cdf(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.5 * torch.sign(x) * (1 - torch.exp(-x.abs() / scale))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BIE_ZOO_CACHE", "~/.cache/bie-compiler/zoo")).expanduser())
    p.add_argument("--out", type=Path, default=CODEC_FILE)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--levels", type=int, default=12)
    p.add_argument("--lambda-min", type=float, default=4.0)
    p.add_argument("--lambda-max", type=float, default=2048.0)
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--synthetic-conv", type=int, default=0,
                   help="add this many chunks of synthetic conv-shaped weights (synthetic_conv_chunks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = training_chunks(args.models, args.cache)
    if args.synthetic_conv:
        data = np.concatenate([data, synthetic_conv_chunks(args.synthetic_conv, args.seed)])
    sha256 = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    print(f"{len(data)} chunks from {', '.join(args.models)}; sha256 {sha256}", flush=True)
    lambdas = np.geomspace(args.lambda_min, args.lambda_max, args.levels)
    codec = Codec(args.width, args.blocks, args.latent, lambdas)
    optimizer = torch.optim.Adam(codec.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    x_all = torch.from_numpy(data)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(x_all), (args.batch,), generator=gen)
        levels = torch.randint(args.levels, (args.batch,), generator=gen)
        loss, rate, mse = codec.loss(x_all[idx], levels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == args.steps - 1:
            lo, hi = levels == 0, levels == args.levels - 1
            print(f"step {step} loss {loss.item():.4f}  level 0: {rate[lo].mean():.2f} b/w mse {mse[lo].mean():.4f}"
                  f"  level {args.levels - 1}: {rate[hi].mean():.2f} b/w mse {mse[hi].mean():.6f}"
                  f"  {time.perf_counter() - start:.0f} s", flush=True)
    config = {"width": args.width, "blocks": args.blocks, "latent": args.latent, "chunk": CHUNK,
              "models": args.models, "synthetic_conv": args.synthetic_conv, "data_sha256": sha256, "steps": args.steps, "batch": args.batch,
              "lr": args.lr, "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
              "prior": "factorized: zero-mean Laplace per quality level and latent channel (training only)",
              "loss": "(rate_bits_per_weight + lambda_q * mse) / sqrt(lambda_q)"}
    np.savez_compressed(args.out, lambdas=lambdas, config=np.frombuffer(json.dumps(config).encode(), np.uint8),
                        **codec.arrays())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

"""The per-layer compile report, as stored in the manifest and printed by ``inspect``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class LayerRecord:
    name: str  # the ONNX initializer holding the weight
    op: str  # "matmul" (MatMul and Gemm) or "conv2d"; for other weights, the ONNX op reading them
    shape: list[int]  # the weight's ONNX shape
    codec: str  # codec name, or "dense" for a fallback
    bytes_dense: int
    bytes_encoded: int
    fallback_reason: str | None = None
    transposed: bool = False  # the ONNX weight is [N, K] (Gemm transB=1), not MatMul's [K, N]
    config: dict | None = None
    encoded_sha256: str | None = None
    details: dict = field(default_factory=dict)  # codec-specific figures (e.g. index savings)

    @property
    def num_weights(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_encoded / self.num_weights

    def to_json(self) -> dict:
        return {**asdict(self), "bits_per_weight": round(self.bits_per_weight, 4)}

    @classmethod
    def from_json(cls, data: dict) -> "LayerRecord":
        return cls(**{k: v for k, v in data.items() if k != "bits_per_weight"})


def totals(layers: list[LayerRecord]) -> dict:
    """Sums over ``layers``; ``bytes_source``: what the source model stores them in (integers for the weights
    it dequantizes in its graph, see ``dequantization``), where ``bytes_dense`` counts float32."""
    dense = sum(r.bytes_dense for r in layers)
    encoded = sum(r.bytes_encoded for r in layers)
    weights = sum(r.num_weights for r in layers)
    return {
        "layers": len(layers),
        "encoded_layers": sum(r.fallback_reason is None for r in layers),
        "weights": weights,
        "bytes_dense": dense,
        "bytes_source": sum(r.details.get("source", {}).get("bytes", r.bytes_dense) for r in layers),
        "bytes_encoded": encoded,
        "bits_per_weight": round(8.0 * encoded / weights, 4) if weights else 0.0,
        "compression": round(dense / encoded, 3) if encoded else 0.0,
    }


def node_labels(consumers: list[tuple[str, str, int]]) -> list[str]:
    """How ``inspect`` names the nodes reading a weight: ``node_MatMul_4 (MatMul)``."""
    return [f"{node} ({op})" for node, op, _ in consumers]


def other_weights(weights: dict, consumers: dict, recorded: set[str]) -> list[LayerRecord]:
    """Records of the float initializers no matmul or conv record covers (embedding tables, 1-D convs, biases,
    norms): stored dense, each with the reason, so the report and its totals cover the whole model."""
    records = []
    for name, array in weights.items():
        users = consumers.get(name, [])
        if name in recorded or not users or array.dtype.kind != "f" or not math.prod(array.shape):
            continue  # reported already; unused; an integer constant (shapes, indices) or an empty one (a Resize's
            # roi), not a weight
        node, op, position = users[0]
        if op == "Conv" and position == 1 and array.ndim != 4:
            reason = f"{array.ndim - 2}-D Conv weight: only 2-D convs are encoded"
        elif op == "Gather" and position == 0:
            reason = "Gather table: encoded by the codecs with a gather kernel (int8, bitwave), as a 2-D table"
        else:
            reason = f"input {position} of {op}: only the weights of MatMul, Gemm and 2-D Conv are encoded"
        records.append(LayerRecord(name=name, op=op, shape=list(array.shape), codec="dense",
                                   bytes_dense=int(array.nbytes), bytes_encoded=int(array.nbytes),
                                   fallback_reason=reason, details={"nodes": node_labels(users)}))
    return records

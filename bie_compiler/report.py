"""The per-layer compile report, as stored in the manifest and printed by ``inspect``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerRecord:
    name: str  # the ONNX initializer holding the weight
    op: str  # "matmul" (MatMul and Gemm) or "conv2d"
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
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_encoded / self.num_weights

    def to_json(self) -> dict:
        return {**asdict(self), "bits_per_weight": round(self.bits_per_weight, 4)}

    @classmethod
    def from_json(cls, data: dict) -> "LayerRecord":
        return cls(**{k: v for k, v in data.items() if k != "bits_per_weight"})


def totals(layers: list[LayerRecord]) -> dict:
    dense = sum(r.bytes_dense for r in layers)
    encoded = sum(r.bytes_encoded for r in layers)
    weights = sum(r.num_weights for r in layers)
    return {
        "layers": len(layers),
        "encoded_layers": sum(r.fallback_reason is None for r in layers),
        "weights": weights,
        "bytes_dense": dense,
        "bytes_encoded": encoded,
        "bits_per_weight": round(8.0 * encoded / weights, 4) if weights else 0.0,
        "compression": round(dense / encoded, 3) if encoded else 0.0,
    }

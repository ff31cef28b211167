"""Relax passes that rewrite weights into encoded constants."""

from .encode_weights import EncodeWeights
from .nan_semantics import PropagateNaN
from .policy import EncodingPolicy

__all__ = ["EncodeWeights", "EncodingPolicy", "PropagateNaN"]

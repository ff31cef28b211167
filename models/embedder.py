"""`embedder`: the front of a sentence encoder and a speech model in one small graph, with what real
exports hold and the bundled models do not: integer token ids indexing embedding tables (`Gather`,
a token-type table of 2 rows), a 1-D convolution, and a pooled classifier.

`input_ids` [batch, seq] (int64, < 100) and `token_type_ids` [batch, seq] (int64, 0 or 1) give
`logits` [batch, 10].
"""

import onnx
from onnx import TensorProto

from .common import GraphBuilder

VOCAB, TYPES, HIDDEN = 100, 2, 64


def build(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed)
    words = g.op("Gather", [g.weight("embeddings.word", (VOCAB, HIDDEN), HIDDEN, 1), "input_ids"], "embeddings.words")
    kinds = g.op("Gather", [g.weight("embeddings.token_type", (TYPES, HIDDEN), HIDDEN, 1), "token_type_ids"],
                 "embeddings.types")
    h = g.op("Add", [words, kinds], "embeddings.add")
    h = g.op("Transpose", [h], "to_channels", perm=[0, 2, 1])
    h = g.op("Conv", [h, g.weight("conv.weight", (HIDDEN, HIDDEN, 3), 3 * HIDDEN, 0), g.bias("conv.bias", HIDDEN)],
             "conv", pads=[1, 1])
    h = g.op("Relu", [h], "conv.relu")
    h = g.op("ReduceMean", [h], "pool", axes=[2], keepdims=0)
    g.gemm_linear(h, "head", HIDDEN, 10, trans_b=True, output="logits")
    shape = ["batch", "seq"]
    return g.model("embedder", __doc__, {"input_ids": shape, "token_type_ids": shape}, {"logits": ["batch", 10]},
                   {"input_ids": TensorProto.INT64, "token_type_ids": TensorProto.INT64})

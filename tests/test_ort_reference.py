"""onnxruntime's weight-only modes as reference points: what each mode stores is counted byte for byte (4-bit
tensors packed two to a byte), and each quantized model computes close to fp32."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bie_compiler.ort_reference import NbitsMode, matmul_nbits, nbits_bytes
from bie_compiler.parity import run_onnxruntime

pytest.importorskip("onnx_ir")  # the quantizer needs it (the bench extra)

K, N, ROWS, COLS = 128, 48, 64, 128  # the MatMul weight [K, N] and the Gather table [ROWS, COLS]


def _model() -> onnx.ModelProto:
    """Token ids -> table rows [B, COLS] -> MatMul [COLS = K, N]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((ROWS, COLS)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], name="lookup"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("mode, matmul_bytes, table_bytes", [
    # per block of 32 along K: packed integers and a float32 scale; asymmetric: a packed zero point per block too
    (NbitsMode(4, 32), N * K // 2 + N * K // 32 * 4, None),
    (NbitsMode(4, 32, symmetric=False), N * K // 2 + N * K // 32 * 4 + N * (K // 32) // 2, None),
    (NbitsMode(2, 128), N * K // 4 + N * 4, None),
    (NbitsMode(8, 32), N * K + N * K // 32 * 4, None),
    # the table in 4-bit blocks of 32 along its rows' axis, packed two to a byte (onnx's view holds one a byte)
    (NbitsMode(4, 32, gather=True), N * K // 2 + N * K // 32 * 4, ROWS * COLS // 2 + ROWS * COLS // 32 * 4),
])
def test_each_mode_stores_what_is_counted_and_computes_close_to_fp32(mode, matmul_bytes, table_bytes):
    model = _model()
    quantized, why = matmul_nbits(model, mode=mode)
    assert why is None
    dense = {"w": K * N * 4, "table": ROWS * COLS * 4}
    assert nbits_bytes(quantized, mode.bits, dense) == matmul_bytes + (table_bytes or dense["table"])
    ids = {"ids": np.array([0, 5, 17, 33, 63, 5])}
    reference, approx = run_onnxruntime(model, ids)[0], run_onnxruntime(quantized, ids)[0]
    rel = np.linalg.norm(approx - reference) / np.linalg.norm(reference)
    assert rel < {2: 0.7, 4: 0.2, 8: 0.02}[mode.bits]  # rounding error of about 2^-bits of each block's range
    assert rel > 1e-4  # and the weights were rounded


def test_modes_onnxruntime_has_not_are_reasons():
    assert matmul_nbits(_model(), mode=NbitsMode(8, 32, gather=True)) == (
        None, "onnxruntime quantizes Gather tables with 4-bit round-to-nearest only")
    assert NbitsMode(4, 128, symmetric=False).label == "onnxruntime MatMulNBits 4-bit block 128 (RTN, asymmetric)"
    assert NbitsMode(4, 32).label == "onnxruntime MatMulNBits 4-bit block 32 (RTN)"  # the README tables' label

"""BitVert programs executed bit-serially, bit-exact against a plain integer matmul."""

import numpy as np
import pytest

from bie_compiler.errors import CodecError
from bie_compiler.runtime.bitvert import program as bp
from bie_compiler.runtime.bitvert import simulator


def _bbs_weights(rng, n, k, group, pruned_columns, sensitive):
    """Integer weights with the BBS structure by construction: per pruned group a zero point,
    r redundant columns and a low value shared by the group in the N - r low columns."""
    groups = -(-k // group)
    w = rng.integers(-127, 128, (n, k))
    offsets = np.zeros((n, groups), np.int64)
    for row in np.flatnonzero(~sensitive):
        for g in range(groups):
            lanes = slice(g * group, min(k, (g + 1) * group))
            width = lanes.stop - lanes.start
            r = int(rng.integers(0, min(3, pruned_columns) + 1))
            low_cols = pruned_columns - r
            high = rng.integers(-(1 << (7 - r - low_cols)), 1 << (7 - r - low_cols), width)
            v = (high << low_cols) | int(rng.integers(0, 1 << low_cols))
            offsets[row, g] = rng.integers(-32, 32) if (v.min() + 32 >= -127 and v.max() - 32 <= 127) else 0
            w[row, lanes] = v - offsets[row, g]
    return w, offsets


@pytest.mark.parametrize("n, k, m, pruned_columns", [(70, 80, 37, 4), (40, 64, 16, 2), (32, 16, 5, 4)])
def test_bit_serial_execution_is_bit_exact(n, k, m, pruned_columns):
    rng = np.random.default_rng(n + k)
    sensitive = rng.random(n) < 0.3
    w, offsets = _bbs_weights(rng, n, k, 32, pruned_columns, sensitive)
    prog = bp.build(w, np.ones(n, np.float32), sensitive, pruned_columns, 32, offsets, x_scale=0.5)
    assert prog.sensitive_bits.shape[2] == 8 and prog.pruned_bits.shape[2] == 8 - pruned_columns
    assert prog.kept_columns().tolist() == np.where(sensitive, 8, 8 - pruned_columns).tolist()
    xq = rng.integers(-127, 128, (m, k)).astype(np.int8)
    expected = xq.astype(np.int64) @ w.T
    assert np.array_equal(simulator.execute(prog, xq), expected)
    # the program survives its trip through the artefact's constants
    again = bp.Program.from_arrays(*prog.arrays())
    assert again.x_scale == 0.5 and np.array_equal(simulator.execute(again, xq), expected)


def test_extreme_values_and_redundancy_beyond_what_is_pruned():
    # every sensitive weight -127 or 127, activations at both ends: the largest partial sums
    n, k = 32, 32
    sensitive = np.zeros(n, bool)
    sensitive[:16] = True
    w = np.where(np.arange(k) % 2 == 0, 127, -127)[None, :].repeat(n, 0)
    w[16:] = np.where(np.arange(k) % 3 == 0, -2, 1)  # 5 redundant columns; only N = 2 are used
    prog = bp.build(w, np.ones(n, np.float32), sensitive, 2, 32, None, x_scale=1.0)
    assert prog.redundant.tolist() == [[2]] * 16 and prog.constant.tolist() == [[0]] * 16
    xq = np.array([[127] * k, [-127] * k, [127, -127] * (k // 2)], np.int8)
    assert np.array_equal(simulator.execute(prog, xq), xq.astype(np.int64) @ w.T)


def test_rounded_averaging_constant_from_the_notes():
    # notes' example: [-57, 12, 33, -20] with N = 4 becomes [-60, 12, 36, -20]: r = 1, low 3 bits = 4
    w = np.array([[-60, 12, 36, -20]])
    prog = bp.build(w, np.ones(1, np.float32), np.zeros(1, bool), 4, 4, None, x_scale=1.0)
    assert prog.redundant.tolist() == [[1]] and prog.constant.tolist() == [[4]]
    xq = np.array([[3, -1, 2, 7]], np.int8)
    assert simulator.execute(prog, xq).tolist() == [[-60 * 3 - 12 + 72 - 140]]


def test_a_group_without_bbs_structure_is_refused():
    w = np.array([[1, 2, 3, 4] * 8])  # low columns differ across the group
    with pytest.raises(CodecError, match="lacks the BBS structure"):
        bp.build(w, np.ones(1, np.float32), np.zeros(1, bool), 4, 32, None, x_scale=1.0, name="fc")


def test_run_layer_quantizes_and_dequantizes():
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (32, 16))
    scales = rng.random(32).astype(np.float32)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    x_scale = simulator.calibrate_scale([x])
    prog = bp.build(w, scales, np.ones(32, bool), 4, 32, None, x_scale)
    xq = simulator.quantize_activations(x, x_scale)
    assert np.abs(xq).max() == 127
    expected = (xq.astype(np.int64) @ w.T) * x_scale * scales.astype(np.float64)
    assert np.allclose(simulator.run_layer(prog, x), expected, rtol=1e-6, atol=0)


def _structured_layer(rng, n, k, pruned_columns=4):
    sensitive = np.zeros(n, bool)
    sensitive[: n // 4] = True
    w, offsets = _bbs_weights(rng, n, k, 32, pruned_columns, sensitive)
    return w, sensitive, offsets


def test_compiled_program_calls_the_device(tmp_path):
    """A Relax program with an offloaded matmul and conv, built for the bitvert target, exported,
    reloaded and run: bit-exact against the integer reference of the quantized layers."""
    import tvm
    from tvm import relax

    from bie_compiler.codegen import ConvSpec, bitvert
    from bie_compiler.codegen.target import make_target
    from bie_compiler.runtime.bitvert import device

    rng = np.random.default_rng(3)
    w_fc, s_fc, o_fc = _structured_layer(rng, 48, 64)
    conv = ConvSpec(strides=(2, 1), padding=(1, 0, 1, 2), dilation=(1, 1), kernel_shape=(40, 32, 3, 2))
    w_cv, s_cv, o_cv = _structured_layer(rng, 40, 3 * 2 * 32)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    img = rng.standard_normal((2, 32, 7, 6)).astype(np.float32)
    sx, simg = simulator.calibrate_scale([x]), simulator.calibrate_scale([img])
    fc_scales, cv_scales = rng.random(48).astype(np.float32), rng.random(40).astype(np.float32)
    fc = bp.build(w_fc, fc_scales, s_fc, 4, 32, o_fc, sx)
    sx = fc.x_scale  # float32-rounded, as the device uses it
    cv = bp.build(w_cv, cv_scales, s_cv, 4, 32, o_cv, simg)
    simg = cv.x_scale

    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType([tvm.tirx.Var("m", "int64"), 64], "float32"))
    iv = relax.Var("img", relax.TensorType([2, 32, 7, 6], "float32"))
    with bb.function("main", [xv, iv]):
        with bb.dataflow():
            y = bb.emit(bitvert.offload(xv, fc, layer=0))
            z = bb.emit(bitvert.offload(iv, cv, layer=1, conv=conv, out_ty=relax.TensorType([2, 40, 4, 7], "float32")))
            out = bb.emit_output(relax.Tuple([y, z]))
        bb.emit_func_output(out)
    target = bitvert.make_target(make_target("llvm"))
    assert bitvert.is_bitvert(target) and target.kind.name == "llvm"
    tvm.compile(bb.get(), target).export_library(str(tmp_path / "m.so"))

    device.register()
    device.RUN_LOG.clear()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "m.so")), tvm.cpu())
    y, z = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(img))
    assert device.RUN_LOG == [(0, 5), (1, 2 * 4 * 7)]

    xq = simulator.quantize_activations(x, sx).astype(np.int64)
    expected_y = (xq @ w_fc.T) * np.float64(sx) * fc_scales.astype(np.float64)
    assert np.array_equal(y.numpy(), expected_y.astype(np.float32))
    # conv reference: integer conv of the quantized image with the integer weights (OIHW from [O, kh*kw*I])
    iq = simulator.quantize_activations(img, simg).astype(np.int64)
    w4 = w_cv.reshape(40, 3, 2, 32).transpose(0, 3, 1, 2)
    ip = np.pad(iq, ((0, 0), (0, 0), (1, 1), (0, 2)))
    acc = np.zeros((2, 40, 4, 7), np.int64)
    for oy in range(4):
        for ox in range(7):
            acc[:, :, oy, ox] = np.einsum("bchw,ochw->bo", ip[:, :, 2 * oy: 2 * oy + 3, ox: ox + 2], w4)
    expected_z = acc * np.float64(simg) * cv_scales.astype(np.float64)[None, :, None, None]
    assert np.array_equal(z.numpy(), expected_z.astype(np.float32))


def test_activation_calibration(model_dir):
    from bie_compiler.calibration import activation_scales, calibration_inputs
    from onnx import numpy_helper

    from bie_compiler.errors import BieWarning
    from bie_compiler.frontend import load_model, value_info

    model = load_model(model_dir["mlp"])
    with pytest.warns(BieWarning, match="seeded random inputs"):
        [inputs] = calibration_inputs(value_info(model.graph.input), None, seed=1, batch=4)
    scales = activation_scales(model, ["fc1.weight", "fc2.weight"], inputs)
    assert scales["fc1.weight"] == pytest.approx(np.abs(inputs["x"]).max() / 127, rel=1e-7)
    # fc2 reads relu(x @ fc1 + b1)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    h = np.maximum(inputs["x"] @ init["fc1.weight"] + init["fc1.bias"], 0)
    assert scales["fc2.weight"] == pytest.approx(np.abs(h).max() / 127, rel=1e-5)
    with pytest.raises(Exception, match="no MatMul/Gemm/Conv reads"):
        activation_scales(model, ["nope"], inputs)


def test_weight_profiles_of_a_program():
    from bie_compiler.codegen import bitvert
    from bie_compiler.runtime.bitvert import perf_model as pm

    rng = np.random.default_rng(5)
    w, sensitive, offsets = _structured_layer(rng, 64, 32)  # 16 sensitive and 48 pruned channels
    prog = bp.build(w, np.ones(64, np.float32), sensitive, 4, 32, offsets, 1.0)
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    profiles = bitvert.weight_profiles("fc", weight, prog, bitvert_bytes=1000)
    assert set(profiles) == set(pm.ACCELERATORS)
    # chunks padded separately, as the program lays them out: 1 sensitive tile row (8 cycles) and
    # 2 pruned ones (4 cycles), over 2 k tiles
    assert prog.sensitive_bits.shape[0] == 1 and prog.pruned_bits.shape[0] == 2
    assert profiles["bitvert"]["tile_cycles_sum"] == 2 * (8 + 4 + 4)
    assert profiles["stripes"]["tile_cycles_sum"] == 4 * 16 and profiles["bitvert"]["weight_bytes"] == 1000

"""codegen/tir_nodes: variables substituted by identity, nodes collected in post order."""

import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.tirx import stmt as s

from bie_compiler.codegen.tir_nodes import collected, substituted


def test_substitutes_the_variable_itself_not_its_namesakes():
    i, namesake = tirx.Var("i", "int32"), tirx.Var("i", "int32")
    five = tirx.const(5, "int32")
    result = substituted(i + namesake, {i: five})
    assert result.a.same_as(five) and result.b.same_as(namesake)


def test_substitutes_a_buffer_and_every_variable_given():
    x, y = tirx.decl_buffer((8,), "float32", "x"), tirx.decl_buffer((8,), "float32", "y")
    i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
    store = s.BufferStore(x, tirx.BufferLoad(x, [i]) + 1.0, [i])
    result = substituted(store, {x: y, i: j})
    assert tvm_ffi.structural_equal(result, s.BufferStore(y, tirx.BufferLoad(y, [j]) + 1.0, [j]))


def test_nothing_to_substitute_is_the_node_itself():
    expr = tirx.Var("i", "int32") + 1
    assert substituted(expr, {}).same_as(expr)
    assert substituted(expr, {tirx.Var("k", "int32"): tirx.const(0, "int32")}).same_as(expr)


def test_collects_nodes_of_the_types_children_first():
    x = tirx.decl_buffer((8,), "float32", "x")
    i = tirx.Var("i", "int32")
    inner = tirx.BufferLoad(x, [i])
    outer = tirx.BufferLoad(x, [tirx.Cast("int32", inner)])
    body = s.BufferStore(x, outer, [i])
    loop = s.For(i, 0, 8, s.ForKind.SERIAL, body)
    loads = collected(loop, TensorLoad)
    assert [ld.same_as(n) for ld, n in zip(loads, (inner, outer))] == [True, True] and len(loads) == 2
    assert [type(n) for n in collected(loop, (s.For, s.BufferStore))] == [s.BufferStore, s.For]
    assert collected(loop, s.AllocBuffer) == []

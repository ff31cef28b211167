"""TIR nodes read and rewritten the two ways the schedules and kernels keep needing: variables substituted, and
the nodes of some types collected. Imports TVM only, so that any module of codegen can use it."""

from __future__ import annotations

import tvm_ffi
from tvm import tirx


def substituted(node, values: dict):
    """``node`` (an expression, statement or function) with each variable that is a key of ``values`` replaced by
    its value; ``node`` itself where ``values`` is empty.

    A variable is matched by identity (``same_as``: a Var hashes and compares by its handle, so the dict lookup
    is by identity), not by structural equality: two variables of one name and type are structurally equal but
    stand for different things (the loop variables of two nests, a parameter and a block iterator), and only the
    one meant is replaced. A buffer is a variable too: ``values`` may map one to another buffer."""
    if not values:
        return node
    return tvm_ffi.structural_map(node, (tirx.Var, lambda var: values.get(var, var)), order="post")


def collected(node, types) -> list:
    """The nodes in ``node`` of ``types`` (a type or a tuple of types), in post order (a node after its children)."""
    found = []
    tvm_ffi.structural_map(node, (types, lambda n: found.append(n) or n), order="post")
    return found

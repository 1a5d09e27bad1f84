"""Split fused projections into the separate linears the analysis reads (Phi-3).

Phi-3 computes q, k and v with one ``qkv_proj`` (weight rows [Q heads | K groups | V
groups]) whose output is cut by three slices of the last axis at literal offsets, and the
MLP's gate and up with one ``gate_up_proj`` (rows [gate | up]) whose output is
``chunk(2, -1)``. Rule: ``slice(linear(x, W), -1, a, b)`` equals ``linear(x, W[a:b])``
(and chunk i of n equals the i-th n-th of W's rows), so each slice / chunk item is replaced
by a linear on its own rows, registered as ``<attention>.{q,k,v}_proj.weight`` /
``<mlp>.{gate,up}_proj.weight`` with the matching ``nn_module_stack`` entry. Afterwards
every family's graph has Llama's layout: the width passes cut q/k/v and gate/up rows
independently, and no literal offset is left to rewrite. The fused linear and its weight
leave the graph (the model's own tensor is never written). The ONNX graph then has three
(two) MatMuls where the model had one: the same arithmetic, in smaller pieces.
Runs inside ``passes.capture.capture``, so every consumer of a captured graph sees it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Node

from prunec.passes.analysis import get_tensor, module_path, role
from prunec.passes.reference import FUSED_PARTS

# fused projection -> its parts in row order (from the one table, passes.reference)
FUSED = {fused: tuple(n for n, (_, f, _) in sorted(FUSED_PARTS.items(), key=lambda i: i[1][2])
                      if f == fused) for _, fused, _ in FUSED_PARTS.values()}
_LAST = 9223372036854775807  # a slice to the end


def unfuse_projections(gm: GraphModule) -> int:
    """Split every fused projection of ``gm`` in place; returns how many were split."""
    fused = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default
             and (role(n) or (0, ""))[1] in FUSED]
    for node in fused:
        _split(gm, node)
    if fused:
        gm.graph.lint()
        gm.recompile()
    return len(fused)


def _split(gm: GraphModule, linear: Node) -> None:
    parts = _parts(linear, get_tensor(gm, str(_weight(linear).target)).shape[0])
    names = FUSED[module_path(linear).rsplit(".", 1)[1]]
    if len(parts) != len(names):
        raise ValueError(f"{linear.name}: {len(parts)} slices of a fused projection, "
                         f"expected {len(names)}")
    for name, (user, start, end) in zip(names, sorted(parts, key=lambda p: p[1])):
        _replace(gm, linear, user, name, (start, end))
    weight = _weight(linear)
    gm.graph.erase_node(linear)
    gm.graph.erase_node(weight)


def _weight(linear: Node) -> Node:
    weight = linear.args[1]
    if not isinstance(weight, Node) or weight.op != "get_attr" or len(linear.args) > 2 and (
            linear.args[2] is not None):
        raise ValueError(f"{linear.name}: a fused projection with a bias or a computed weight")
    return weight


def _parts(linear: Node, rows: int) -> list[tuple[Node, int, int]]:
    """(user, first row, end row) of every slice / chunk item reading ``linear``."""
    found: list[tuple[Node, int, int]] = []
    for user in linear.users:
        if user.target is torch.ops.aten.slice.Tensor and user.args[1] in (-1, 2):
            start, end = int(user.args[2]), int(user.args[3])  # type: ignore[arg-type]
            found.append((user, start, rows if end == _LAST else min(end, rows)))
        elif user.target is torch.ops.aten.chunk.default and user.args[2] in (-1, 2):
            n = int(user.args[1])  # type: ignore[arg-type]
            found += [(item, rows // n * int(item.args[1]),  # type: ignore[arg-type]
                       rows // n * (int(item.args[1]) + 1))  # type: ignore[arg-type]
                      for item in user.users if item.target is operator.getitem]
        else:
            raise ValueError(f"{linear.name}: read by {user.target}, not a slice of its "
                             "last axis")
    return found


def _replace(gm: GraphModule, linear: Node, user: Node, name: str,
             rows: tuple[int, int]) -> None:
    """Read ``user``'s rows from a linear of their own, named ``name`` in the same module."""
    owner = module_path(linear).rsplit(".", 1)[0]
    fused_target = str(_weight(linear).target)
    holder = nn.Module()
    weight = get_tensor(gm, fused_target)[rows[0]:rows[1]].detach().clone()
    holder.weight = nn.Parameter(weight, requires_grad=False)
    attn_target = fused_target.rsplit(".", 2)[0]
    gm.get_submodule(attn_target).add_module(name, holder)
    with gm.graph.inserting_before(user):
        get = gm.graph.get_attr(f"{attn_target}.{name}.weight")
        new = gm.graph.call_function(torch.ops.aten.linear.default, (linear.args[0], get))
    new.meta.update(user.meta)
    new.meta["nn_module_stack"] = _stack(linear, f"{owner}.{name}")
    user.replace_all_uses_with(new)
    _erase_chain(gm, user)


def _stack(linear: Node, path: str) -> dict[str, Any]:
    stack = dict(linear.meta.get("nn_module_stack") or {})
    key, (_, kind) = list(stack.items())[-1]
    stack[f"{key}.{path.rsplit('.', 1)[1]}"] = (path, kind)
    del stack[key]
    return stack


def _erase_chain(gm: GraphModule, user: Node) -> None:
    """Erase ``user`` and, for a chunk item, the chunk once its last item is gone."""
    parent = user.args[0]
    gm.graph.erase_node(user)
    if isinstance(parent, Node) and parent.target is torch.ops.aten.chunk.default and (
            not parent.users):
        gm.graph.erase_node(parent)

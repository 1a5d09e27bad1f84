"""Rewrite the graph constants that encode head counts after heads were kept or dropped.

In a captured HF Llama attention, the q/k/v views use -1 for the head axis and the output
reshape uses -1 for the hidden axis, so they adapt to narrower projections by themselves.
The one place with literal head counts is repeat_kv (when SDPA is not asked for native
GQA): ``expand(x[:, :, None], [b, n_kv, n_rep, s, d])`` then ``reshape([b, n_kv*n_rep, s,
d])``. Rule: with kept heads K and kept KV groups G in a layer, set n_kv = |G|,
n_rep = |K| / |G| (both expand entries) and n_kv * n_rep = |K| (the reshape's head axis).
An entry that is not the expected old literal is a compiler bug (the analysis found a
pattern it does not understand) and raises. MLP widths need no rewrite (no constants).
Counts: expands and reshapes rewritten.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import LayerPlan
from prunec.passes.analysis import RepeatKV, node_map
from prunec.passes.infra import Counts, FunctionPass, PassContext


def set_entries(node: Node, updates: dict[int, tuple[int, int]]) -> None:
    """Replace ``args[1][i]`` (expected ``old``) by ``new`` for each ``i: (old, new)``."""
    sizes = list(node.args[1])  # type: ignore[arg-type]
    for i, (old, new) in updates.items():
        if sizes[i] != old:
            raise ValueError(f"{node.name}: size[{i}] is {sizes[i]}, expected {old}")
        sizes[i] = new
    node.args = (node.args[0], sizes) + tuple(node.args[2:])


def rewrite_repeat_kv(nodes: dict[str, Node], site: RepeatKV, lp: LayerPlan,
                      shape: ModelShape) -> None:
    assert lp.kept_heads is not None
    n_kv = len(lp.kv_groups_kept(shape))
    n_rep = len(lp.kept_heads) // n_kv
    set_entries(nodes[site.expand], {1: (shape.n_kv_heads, n_kv), 2: (shape.group_size, n_rep)})
    set_entries(nodes[site.reshape], {1: (shape.n_heads, n_kv * n_rep)})


def fix_head_shapes(gm: GraphModule, ctx: PassContext) -> Counts:
    nodes = node_map(gm)
    counts = {"repeat_kv expands rewritten": 0, "repeat_kv reshapes rewritten": 0}
    for lp, layer in zip(ctx.plan.layers, ctx.structure.layers):
        if lp.attn_removed or lp.kept_heads is None or len(lp.kept_heads) == ctx.shape.n_heads:
            continue
        for site in layer.attention.repeat_kv:
            rewrite_repeat_kv(nodes, site, lp, ctx.shape)
            counts["repeat_kv expands rewritten"] += 1
            counts["repeat_kv reshapes rewritten"] += 1
    return counts


FIX_HEAD_SHAPES = FunctionPass("fix_head_shapes", fix_head_shapes)

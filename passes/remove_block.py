"""Remove whole residual blocks: ``x + f(norm(x))`` becomes ``x``.

Rule (per layer, per block the plan removes): every user of the block's residual add
reads the add's skip argument instead. The add, the block's norms (Gemma's post-block
norm too: it sits between the projection and the add, so the block's whole residual
contribution goes), projections and attention are left without users; ``eliminate_dead_code`` deletes them afterwards and
``drop_unused_weights`` their weights. Counts: attention / MLP blocks removed.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from prunec.passes.analysis import Residual, node_map
from prunec.passes.infra import Counts, FunctionPass, PassContext


def bypass(nodes: dict[str, Node], residual: Residual) -> None:
    add = nodes[residual.add]
    skip = add.args[residual.skip_arg]
    assert isinstance(skip, Node)
    add.replace_all_uses_with(skip)


def remove_blocks(gm: GraphModule, ctx: PassContext) -> Counts:
    nodes = node_map(gm)
    counts = {"attention blocks removed": 0, "mlp blocks removed": 0}
    for lp, layer in zip(ctx.plan.layers, ctx.structure.layers):
        if lp.attn_removed:
            bypass(nodes, layer.attention.residual)
            counts["attention blocks removed"] += 1
        if lp.mlp_removed:
            bypass(nodes, layer.mlp.residual)
            counts["mlp blocks removed"] += 1
    return counts


REMOVE_BLOCKS = FunctionPass("remove_blocks", remove_blocks)

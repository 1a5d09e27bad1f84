"""Keep a given set of MLP intermediate channels per layer.

Rule: channel k of a SwiGLU MLP ``down(act(gate(x)) * up(x))`` is row k of gate_proj and
up_proj (and their biases) and column k of down_proj; the elementwise act/mul between them
is channel-wise, so keeping channels ``K`` in all three gives exactly the sum over ``K``
of the dense MLP's per-channel terms. Shapes downstream of down_proj are unchanged, and
nothing in the graph holds the intermediate width as a constant. Counts: MLP layers
narrowed, channels removed, weight elements removed.
"""

from __future__ import annotations

from torch.fx import GraphModule

from prunec.passes.infra import Counts, FunctionPass, PassContext
from prunec.passes.slicing import keep_group


def keep_channels(gm: GraphModule, ctx: PassContext) -> Counts:
    counts = {"mlp layers narrowed": 0, "mlp channels removed": 0, "weight elements removed": 0}
    for lp, layer in zip(ctx.plan.layers, ctx.structure.layers):
        if lp.mlp_removed or lp.kept_channels is None:
            continue
        if len(lp.kept_channels) == ctx.shape.intermediate:
            continue
        removed = keep_group(gm, layer.channel_group(), lp.kept_channels)
        counts["mlp layers narrowed"] += 1
        counts["mlp channels removed"] += ctx.shape.intermediate - len(lp.kept_channels)
        counts["weight elements removed"] += removed
    return counts


KEEP_CHANNELS = FunctionPass("keep_channels", keep_channels)

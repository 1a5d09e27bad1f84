"""Keep a given set of attention heads per layer (grouped-query aware).

Rule: query head h is rows [h*d, (h+1)*d) of q_proj (and its bias) and the same columns
of o_proj; softmax attention is per head, so keeping heads ``K`` computes exactly the dense
sum over ``K`` of o_proj's per-head terms. Under GQA query head h reads KV head
h // group_size. The plan keeps the same number of query heads in every kept KV group
(``Plan.validate``); k_proj/v_proj rows of a KV group go only when none of its query heads
stays, so new query head j reads new KV head j // n_rep' with n_rep' = |K| / |kept groups|,
which is the old pairing. The head-count constants of repeat_kv are rewritten by
``fix_shapes``. Counts: attention layers narrowed, query / KV heads removed, elements.
"""

from __future__ import annotations

from torch.fx import GraphModule

from prunec.passes.infra import Counts, FunctionPass, PassContext
from prunec.passes.slicing import keep_group


def keep_heads(gm: GraphModule, ctx: PassContext) -> Counts:
    shape = ctx.shape
    counts = {"attention layers narrowed": 0, "query heads removed": 0, "kv heads removed": 0,
              "weight elements removed": 0}
    for lp, layer in zip(ctx.plan.layers, ctx.structure.layers):
        if lp.attn_removed or lp.kept_heads is None or len(lp.kept_heads) == shape.n_heads:
            continue
        removed = keep_group(gm, layer.head_group(shape.head_dim), lp.kept_heads)
        kv_kept = lp.kv_groups_kept(shape)
        if len(kv_kept) < shape.n_kv_heads:
            removed += keep_group(gm, layer.kv_group(shape.head_dim), kv_kept)
        counts["attention layers narrowed"] += 1
        counts["query heads removed"] += shape.n_heads - len(lp.kept_heads)
        counts["kv heads removed"] += shape.n_kv_heads - len(kv_kept)
        counts["weight elements removed"] += removed
    return counts


KEEP_HEADS = FunctionPass("keep_heads", keep_heads)

"""Shrink the KV-cache inputs/outputs of a captured cache graph to what the plan keeps.

A cache graph (``passes.capture`` with ``kv_cache``) has placeholders ``input_ids``,
``attention_mask``, ``position_ids``, then ``past_key_values_{2i}`` (key) and
``past_key_values_{2i+1}`` (value) for every layer i, and outputs ``(logits, key 0,
value 0, ...)``. Rules:
- a layer whose attention the plan removes has no cache: ``drop_cache_outputs`` drops its
  two outputs (before dead-code elimination erases what only they needed) and
  ``drop_cache_inputs`` erases its two placeholders (after it);
- a placeholder's size may still be read for the past length (transformers reads one
  layer's cache to size the mask); such a ``sym_size(past, 2)`` becomes
  ``attention_mask.size(1) - input_ids.size(1)`` (and ``sym_size(past, 0)`` becomes
  ``input_ids.size(0)``) before the placeholder is erased;
- kept layers keep their cache with the kept KV groups: the width follows k/v_proj, which
  ``keep_heads`` sliced, so only the re-export's example inputs change (``layout``).
Counts: cache outputs dropped; cache inputs dropped, size reads rewritten. A logits-only graph is left alone.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.passes.infra import Counts, FunctionPass, PassContext

PAST_PREFIX = "past_key_values_"


@dataclass(frozen=True)
class CacheLayer:
    layer: int  # the original layer index
    kv_heads: int


@dataclass(frozen=True)
class CacheLayout:
    """The cache a plan leaves: one entry per layer that keeps its attention."""

    layers: tuple[CacheLayer, ...]
    head_dim: int

    def shapes(self) -> list[tuple[int, int]]:
        """(kv_heads, head_dim) per past tensor's layer (for ``capture.cache_examples``)."""
        return [(c.kv_heads, self.head_dim) for c in self.layers]


def cache_layout(plan: Plan, shape: ModelShape) -> CacheLayout:
    kept = tuple(CacheLayer(lp.index, len(lp.kv_groups_kept(shape)))
                 for lp in plan.layers if not lp.attn_removed)
    return CacheLayout(kept, shape.head_dim)


def _placeholders(gm: GraphModule) -> dict[str, Node]:
    return {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}


def _rewrite_size_reads(gm: GraphModule, past: Node, ph: dict[str, Node]) -> int:
    """Replace ``sym_size(past, 0 | 2)`` by sizes of input_ids / attention_mask."""
    rewritten = 0
    for user in list(past.users):
        if user.target is not torch.ops.aten.sym_size.int or user.args[1] not in (0, 2):
            continue
        with gm.graph.inserting_before(user):
            seq_or_batch = 1 if user.args[1] == 2 else 0
            ids_len = gm.graph.call_function(torch.ops.aten.sym_size.int,
                                             (ph["input_ids"], seq_or_batch))
            if user.args[1] == 0:
                new = ids_len
            else:
                total = gm.graph.call_function(torch.ops.aten.sym_size.int,
                                               (ph["attention_mask"], 1))
                new = gm.graph.call_function(operator.sub, (total, ids_len))
        new.meta.update(user.meta)
        user.replace_all_uses_with(new)
        gm.graph.erase_node(user)
        rewritten += 1
    return rewritten


def _dropped(ctx: PassContext) -> list[int]:
    """Indices (0 = first past tensor) of the cache tensors of layers without attention."""
    return [2 * lp.index + j for lp in ctx.plan.layers if lp.attn_removed for j in (0, 1)]


def drop_cache_outputs(gm: GraphModule, ctx: PassContext) -> Counts:
    drop = set(_dropped(ctx)) if PAST_PREFIX + "0" in _placeholders(gm) else set()
    if drop:
        output = next(n for n in gm.graph.nodes if n.op == "output")
        outs = list(output.args[0])
        output.args = (tuple(o for k, o in enumerate(outs) if k - 1 not in drop),)
    return {"cache outputs dropped": len(drop)}


def drop_cache_inputs(gm: GraphModule, ctx: PassContext) -> Counts:
    ph = _placeholders(gm)
    counts = {"cache inputs dropped": 0, "cache size reads rewritten": 0}
    if PAST_PREFIX + "0" not in ph:
        return counts
    for k in _dropped(ctx):
        past = ph[f"{PAST_PREFIX}{k}"]
        counts["cache size reads rewritten"] += _rewrite_size_reads(gm, past, ph)
        if past.users:
            raise ValueError(f"{past.name} is still read after its layer's attention went")
        gm.graph.erase_node(past)
        counts["cache inputs dropped"] += 1
    return counts


DROP_CACHE_OUTPUTS = FunctionPass("drop_cache_outputs", drop_cache_outputs)
DROP_CACHE_INPUTS = FunctionPass("drop_cache_inputs", drop_cache_inputs)

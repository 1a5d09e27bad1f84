"""Tiny random Llama variants for the graph-pass tests, each captured once per session.

The two variants cover SmolLM2's features and Qwen2's: GQA (6 query heads on 2 KV heads)
with tied embeddings; GQA (8 on 4) with q/k/v/o biases (``attention_bias=True``) and
untied embeddings.
"""

from __future__ import annotations

import copy

from tinymodels import TinyConfig, tiny_llama
from torch import nn
from torch.fx import GraphModule

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.passes.capture import capture
from prunec.passes.reference import apply_plan_, shape_of

VARIANTS = {
    "gqa-tied": TinyConfig(layers=4),
    "gqa-bias-untied": TinyConfig(layers=3, heads=8, kv_heads=4, attention_bias=True,
                                  tied=False),
}


class Captured:
    """A tiny model, its shape and its captured graph (copy ``graph()`` before pruning)."""

    def __init__(self, config: TinyConfig, seed: int) -> None:
        self.model: nn.Module = tiny_llama(seed, config)
        self.shape: ModelShape = shape_of(self.model)
        self._gm = capture(self.model)

    def graph(self) -> GraphModule:
        return copy.deepcopy(self._gm)

    def reference(self, plan: Plan) -> nn.Module:
        return apply_plan_(copy.deepcopy(self.model), plan, self.shape)

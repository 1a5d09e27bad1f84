"""Fixtures for the graph-pass tests: tiny random Llama variants, captured once per session.

The three variants cover SmolLM2's features and Qwen2's: GQA with tied embeddings; GQA
with q/k/v/o biases (``attention_bias=True``) and untied embeddings; and a variant with
one query head per KV group in some tests (n_rep = 1 is handled by the same rewrite).
"""

from __future__ import annotations

import copy

import pytest
from torch import nn
from torch.fx import GraphModule

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.passes.capture import capture
from prunec.passes.reference import apply_plan_, shape_of
from prunec.passes.tiny import TinyConfig, tiny_llama

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


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def captured(request: pytest.FixtureRequest) -> Captured:
    return Captured(VARIANTS[request.param], seed=len(request.param))


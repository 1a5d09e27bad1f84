"""Tiny random-initialised Llama models (with grouped-query attention) for tests and examples.

Deterministic for a given seed; float32; eval mode. Shapes are small enough that a forward
pass takes milliseconds, yet keep every structural feature of SmolLM2 (GQA, tied or untied
embeddings, rotary embeddings, RMSNorm, SwiGLU MLP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyConfig:
    layers: int = 4
    hidden: int = 96
    intermediate: int = 128
    heads: int = 6
    kv_heads: int = 2
    head_dim: int = 16
    vocab: int = 160
    tied: bool = True
    attention_bias: bool = False


def tiny_llama(seed: int = 0, config: TinyConfig = TinyConfig()) -> nn.Module:
    """A random LlamaForCausalLM; weights scaled up so pruning changes logits visibly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=config.vocab,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        tie_word_embeddings=config.tied,
        attention_bias=config.attention_bias,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model.eval()

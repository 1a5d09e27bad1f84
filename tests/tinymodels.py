"""Tiny random-initialised decoders (Llama, and the other supported families built from
their own transformers config classes: ``tiny_model``) for tests and benchmarks.

Test-only, not part of the shipped ``prunec`` package: tests import it as ``tinymodels``
(``tests/`` is on pytest's path through ``tests/conftest.py``); bench scripts put ``tests/``
on ``sys.path`` first.

Deterministic for a given seed; float32; eval mode. Shapes are small enough that a forward
pass takes milliseconds, yet keep every structural feature of SmolLM2 (GQA, tied or untied
embeddings, rotary embeddings, RMSNorm, SwiGLU MLP). ``random_plan`` draws valid random
plans (blocks, channel subsets, GQA-respecting head subsets) for property tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import LayerPlan, Plan


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
    model: Any = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    evaluated: nn.Module = model.eval()
    return evaluated


# model_type -> (transformers config class, causal-LM class) of the non-Llama families
FAMILY_CLASSES = {
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}
# what each family's tiny config sets beyond the sizes: the features that set it apart from
# Llama, made visible at tiny sizes (a 4-token sliding window, a query scale != head_dim)
FAMILY_EXTRAS: dict[str, dict[str, Any]] = {
    "mistral": {"sliding_window": 4},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
    "phi3": {"partial_rotary_factor": 0.5},
    "gemma2": {"sliding_window": 4, "query_pre_attn_scalar": 12,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    "gemma3_text": {"sliding_window": 4, "query_pre_attn_scalar": 12,
                    "layer_types": ["sliding_attention", "full_attention"] * 4},
}


def family_config(family: str, config: TinyConfig = TinyConfig(),
                  extras: dict[str, Any] | None = None) -> Any:
    """The family's own transformers config for ``config``'s sizes; ``extras`` (default
    ``FAMILY_EXTRAS[family]``) are the further config arguments."""
    import transformers

    config_class = getattr(transformers, FAMILY_CLASSES[family][0])
    given = FAMILY_EXTRAS.get(family, {}) if extras is None else extras
    arguments = {key: value[:config.layers] if key == "layer_types" else value
                 for key, value in given.items()}
    return config_class(
        vocab_size=config.vocab, hidden_size=config.hidden,
        intermediate_size=config.intermediate, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim, tie_word_embeddings=config.tied,
        attention_bias=config.attention_bias, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, **arguments)


def tiny_model(family: str, seed: int = 0, config: TinyConfig = TinyConfig(),
               extras: dict[str, Any] | None = None) -> nn.Module:
    """A random causal LM of ``family`` ("llama" or a ``FAMILY_CLASSES`` key; ``extras`` as
    ``family_config``'s). Matrices are scaled like ``tiny_llama``'s; norm weights (1-d) are
    perturbed too, so a rule that drops or misplaces a norm changes the logits."""
    if family == "llama":
        return tiny_llama(seed, config)
    import transformers

    torch.manual_seed(seed)
    model: Any = getattr(transformers, FAMILY_CLASSES[family][1])(
        family_config(family, config, extras))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    evaluated: nn.Module = model.eval()
    return evaluated


def every_rule_plan(shape: ModelShape) -> Plan:
    """Layer 0: attention removed, channel subset; 1: a whole KV group kept alone, MLP
    removed; 2: one query head dropped per KV group, channel subset."""
    g = shape.group_size
    return Plan((
        LayerPlan(0, attn_removed=True, kept_channels=tuple(range(1, shape.intermediate, 3))),
        LayerPlan(1, mlp_removed=True, kept_heads=tuple(range(g, 2 * g))),
        LayerPlan(2, kept_heads=tuple(h for h in range(shape.n_heads) if h % g),
                  kept_channels=tuple(range(shape.intermediate // 2))),
    ))


def random_plan(shape: ModelShape, seed: int, p_remove: float = 0.25) -> Plan:
    """A random valid plan: blocks removed with probability ``p_remove``; random MLP channel
    subsets; random head subsets with the same count in every kept KV group (sometimes
    fewer KV groups, so whole groups go). For tests of the passes and the export."""
    rng = random.Random(seed)
    return Plan(tuple(_random_layer(rng, shape, i, p_remove) for i in range(shape.n_layers)),
                method="random")


def _random_layer(rng: random.Random, shape: ModelShape, i: int, p: float) -> LayerPlan:
    attn_removed, mlp_removed = rng.random() < p, rng.random() < p
    channels = None
    if not mlp_removed and rng.random() < 0.6:
        n = rng.randint(1, shape.intermediate - 1)
        channels = tuple(sorted(rng.sample(range(shape.intermediate), n)))
    heads = None
    if not attn_removed and rng.random() < 0.6:
        heads = _random_heads(rng, shape)
    return LayerPlan(i, attn_removed, mlp_removed, heads, channels)


def _random_heads(rng: random.Random, shape: ModelShape) -> tuple[int, ...]:
    g = shape.group_size
    groups = sorted(rng.sample(range(shape.n_kv_heads), rng.randint(1, shape.n_kv_heads)))
    per_group = rng.randint(1, g)
    return tuple(sorted(kv * g + j for kv in groups for j in rng.sample(range(g), per_group)))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, then restore the previous count.

    Tiny models are fastest single-threaded, and on a busy machine multi-threaded kernels of
    microsecond ops wait on each other; scope the setting, never set it process-wide."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

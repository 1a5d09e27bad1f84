"""Module-level application of a static ``Plan`` to a Llama-style Hugging Face model.

This is the *reference* semantics of a plan, written against ``nn.Module``s rather than the
graph: the graph passes must reproduce its logits, and the search methods use it (or its
per-layer pieces) to score candidates. Rules (docs/algorithms.md §1):
- a removed attention / MLP block contributes nothing: x + f(norm(x)) becomes x;
- MLP channel k is row k of gate_proj and up_proj and column k of down_proj;
- query head h is rows [h*d, (h+1)*d) of q_proj and the same columns of o_proj; under GQA
  query head h reads KV head h // group_size. Kept heads are equal per kept KV group; the
  k/v rows of a KV group go only when none of its query heads is kept;
- fused projections (Phi-3's qkv_proj, gate_up_proj) keep the same rows of each part;
  per-head norms (Qwen3's q_norm/k_norm, over head_dim) and post-block norms (Gemma) stay.
Weights shrink physically (new ``nn.Linear``s); the model is modified in place.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import LayerPlan, Plan
from prunec.compiler.shape import shape_from_config_dict

M = TypeVar("M", bound=nn.Module)


class ZeroAttention(nn.Module):
    """Stands in for a removed attention block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[
        torch.Tensor, None
    ]:
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """Stands in for a removed MLP block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def select_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` of the weight (0 = outputs, 1 = inputs)."""
    index = index.to(linear.weight.device)
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_f, in_f = weight.shape
    bias = linear.bias is not None
    new = nn.Linear(in_f, out_f, bias=bias, dtype=weight.dtype, device=weight.device)
    new.weight = nn.Parameter(weight, requires_grad=False)
    if linear.bias is not None:
        b = linear.bias.detach()
        new.bias = nn.Parameter(b.index_select(0, index).clone() if dim == 0 else b.clone(),
                                requires_grad=False)
    return new


def head_rows(heads: tuple[int, ...], head_dim: int) -> torch.Tensor:
    """Row indices of q_proj (or columns of o_proj) for the given heads, in order."""
    return torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)],
                        dtype=torch.long)


def prune_attention_(attn: Any, lp: LayerPlan, shape: ModelShape) -> None:
    """Keep ``lp.kept_heads`` in a LlamaAttention-like module (q/k/v/o_proj), in place."""
    assert lp.kept_heads is not None
    d = shape.head_dim
    kv_kept = lp.kv_groups_kept(shape)
    rows = head_rows(lp.kept_heads, d)
    attn.o_proj = select_linear(attn.o_proj, rows, 1)
    kv_rows = head_rows(kv_kept, d)
    if hasattr(attn, "qkv_proj"):
        prune_fused_qkv_(attn, rows, kv_rows, shape)
    else:
        attn.q_proj = select_linear(attn.q_proj, rows, 0)
        attn.k_proj = select_linear(attn.k_proj, kv_rows, 0)
        attn.v_proj = select_linear(attn.v_proj, kv_rows, 0)
    attn.num_key_value_groups = len(lp.kept_heads) // len(kv_kept)


def prune_fused_qkv_(attn: Any, rows: torch.Tensor, kv_rows: torch.Tensor,
                     shape: ModelShape) -> None:
    """Phi-3's ``qkv_proj`` (rows [Q heads | K groups | V groups]): keep the kept heads' rows
    of each part. Phi-3 finds the parts from ``config.num_attention_heads`` and
    ``num_key_value_heads``, so the layer gets its own copy of the config with its counts."""
    q, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    attn.qkv_proj = select_linear(attn.qkv_proj, torch.cat([rows, kv_rows + q,
                                                            kv_rows + q + kv]), 0)
    attn.config = copy.copy(attn.config)
    attn.config.num_attention_heads = len(rows) // shape.head_dim
    attn.num_key_value_heads = len(kv_rows) // shape.head_dim


def prune_mlp_(mlp: Any, channels: tuple[int, ...]) -> None:
    """Keep ``channels`` of a gate/up/down MLP, in place."""
    index = torch.tensor(channels, dtype=torch.long)
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: rows [gate | up], split by chunk(2)
        both = torch.cat([index, index + mlp.down_proj.in_features])
        mlp.gate_up_proj = select_linear(mlp.gate_up_proj, both, 0)
    else:
        mlp.gate_proj = select_linear(mlp.gate_proj, index, 0)
        mlp.up_proj = select_linear(mlp.up_proj, index, 0)
    mlp.down_proj = select_linear(mlp.down_proj, index, 1)


# projection -> (block, the fused projection holding it, its part in row order): Phi-3's
# layout, the one table ``passes.unfuse`` and ``runtime.models`` read too
FUSED_PARTS = {"q_proj": ("self_attn", "qkv_proj", 0), "k_proj": ("self_attn", "qkv_proj", 1),
               "v_proj": ("self_attn", "qkv_proj", 2), "gate_proj": ("mlp", "gate_up_proj", 0),
               "up_proj": ("mlp", "gate_up_proj", 1)}


def projection_weight(layer: Any, name: str) -> torch.Tensor:
    """The weight of projection ``name`` (q/k/v_proj, gate/up_proj) of a decoder layer; for
    Phi-3 its rows of the fused ``qkv_proj`` / ``gate_up_proj`` (a view, not a copy)."""
    block_name, fused_name, part = FUSED_PARTS[name]
    block = getattr(layer, block_name)
    if not hasattr(block, fused_name):
        weight: torch.Tensor = getattr(block, name).weight
        return weight
    fused: torch.Tensor = getattr(block, fused_name).weight
    if fused_name == "gate_up_proj":
        return fused.chunk(2, dim=0)[part]
    q = int(block.config.num_attention_heads * block.head_dim)
    kv = int(block.num_key_value_heads * block.head_dim)
    return fused.narrow(0, (0, q, q + kv)[part], (q, kv, kv)[part])


def apply_layer_plan_(layer: Any, lp: LayerPlan, shape: ModelShape) -> None:
    """Apply one layer's plan to a decoder layer (self_attn / mlp children), in place."""
    if lp.attn_removed:
        layer.self_attn = ZeroAttention()
    elif lp.kept_heads is not None:
        prune_attention_(layer.self_attn, lp, shape)
    if lp.mlp_removed:
        layer.mlp = ZeroMLP()
    elif lp.kept_channels is not None:
        prune_mlp_(layer.mlp, lp.kept_channels)


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a Llama-style causal LM (``model.model.layers``), in order.

    Hugging Face decoder layers are untyped (``transformers`` ships no stubs), so their
    children (``self_attn.o_proj``, ``mlp.down_proj``, ...) are read as ``Any``."""
    layers = model.model.layers
    assert isinstance(layers, nn.ModuleList)
    return list(layers)


def apply_plan_(model: M, plan: Plan, shape: ModelShape) -> M:
    """Apply ``plan`` to every decoder layer of ``model`` in place; returns ``model``."""
    problems = plan.validate(shape)
    if problems:
        raise ValueError("invalid plan: " + "; ".join(problems))
    with torch.no_grad():
        for layer, lp in zip(decoder_layers(model), plan.layers):
            apply_layer_plan_(layer, lp, shape)
    return model


def shape_of(model: Any) -> ModelShape:
    """The ``ModelShape`` of a loaded Llama-style Hugging Face causal LM: its config read by
    ``compiler.shape.shape_from_config_dict``, the same rules as a config.json on disk
    (``ShapeProblem`` for an unsupported model type)."""
    return shape_from_config_dict(model.config.to_dict(), f"{type(model).__name__} config")


def reference_logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of a (possibly pruned) HF causal LM, no cache, no gradient."""
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=input_ids, use_cache=False).logits
    return logits


def sequence_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL per sequence (float64 [batch]) from logits [batch, T, vocab].

    The one definition behind every perplexity prunec reports or searches with: logits at t
    predict ``ids[:, t + 1]``; log-softmax runs in float32 (whatever the model's dtype), the
    mean accumulates in float64."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return -picked.double().mean(dim=1)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: how prunec measures that two logit tensors agree.

    One number per comparison, scaled by the largest reference logit so that it is
    independent of the model's logit scale; exactness checks require <= 1e-4 (float32)."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def add_output_bias_(linear: nn.Linear, bias: torch.Tensor) -> None:
    """Add ``bias`` to ``linear``'s output (creating the bias parameter if absent), in place."""
    add = bias.detach().to(dtype=linear.weight.dtype, device=linear.weight.device)
    old = linear.bias.detach() if linear.bias is not None else torch.zeros_like(add)
    linear.bias = nn.Parameter(old + add, requires_grad=False)


def set_kept_columns_(linear: nn.Linear, cols: torch.Tensor, weight: torch.Tensor) -> None:
    """Put ``weight`` [out, len(cols)] in ``linear``'s kept columns, in place: the whole
    weight when the linear is already cut to ``cols``, else columns ``cols`` of its dense
    weight (a width pass cuts the others later)."""
    new = weight.detach().to(dtype=linear.weight.dtype, device=linear.weight.device)
    if linear.in_features != len(cols):
        full = linear.weight.detach().clone()
        full[:, cols] = new
        new = full
    linear.weight = nn.Parameter(new.clone(), requires_grad=False)


def refit_layer_(layer: Any, refit: Any, lp: LayerPlan, shape: ModelShape) -> None:
    """Apply one layer's reconstruction (``LayerRefit``) for the plan ``lp``, in place; a
    removed block takes none (its projection is gone)."""
    o_proj = getattr(layer.self_attn, "o_proj", None)
    down_proj = getattr(layer.mlp, "down_proj", None)
    if isinstance(o_proj, nn.Linear) and lp.kept_heads is not None:
        if refit.attn_weight is not None:
            set_kept_columns_(o_proj, head_rows(lp.kept_heads, shape.head_dim),
                              refit.attn_weight)
        if refit.attn is not None:
            add_output_bias_(o_proj, refit.attn)
    if isinstance(down_proj, nn.Linear) and lp.kept_channels is not None:
        if refit.mlp_weight is not None:
            set_kept_columns_(down_proj, torch.tensor(lp.kept_channels, dtype=torch.long),
                              refit.mlp_weight)
        if refit.mlp is not None:
            add_output_bias_(down_proj, refit.mlp)


def apply_refit_(model: M, refit: Mapping[int, Any], plan: Plan, shape: ModelShape) -> M:
    """Apply a method's reconstruction (``{layer: LayerRefit}``, ``passes.methods.
    reconstruct``) for ``plan``, in place; returns ``model``. Works before or after
    ``apply_plan_``: biases are added to o_proj's / down_proj's output, refit weights go
    into the kept columns (``set_kept_columns_``)."""
    layers = decoder_layers(model)
    with torch.no_grad():
        for index, layer_refit in refit.items():
            refit_layer_(layers[index], layer_refit, plan.layers[index], shape)
    return model

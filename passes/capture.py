"""Capture the causal-LM forward of a Llama-style Hugging Face model as an FX graph.

What is captured: ``logits = model(input_ids=input_ids, use_cache=False).logits`` with
``input_ids`` int64 [batch, seq] and both dimensions dynamic (``torch.export.Dim``); no
attention-mask input (the causal mask is built inside the graph). ``LogitsOnly`` wraps the
model so the traced function returns one tensor instead of a ``CausalLMOutput``.

How: ``torch.export.export(..., strict=False)`` (non-strict tracing runs the Python code of
the model, which HF models need), then ``ExportedProgram.module()``: an *unlifted*
``GraphModule`` whose parameters and buffers are ``get_attr`` nodes named by their original
paths (``model.model.layers.3.self_attn.q_proj.weight``). The passes work on that
GraphModule because replacing a weight there is ``setattr`` of a smaller tensor, with no
graph-signature bookkeeping; ``reexport`` turns the pruned module back into a fresh
``ExportedProgram`` (which re-derives every shape and so checks the passes' work).

What transformers 5.23's Llama needs (found by capturing it): eval mode (else dropout is
traced), ``use_cache=False`` (else a DynamicCache is an output), a wrapper returning the
logits tensor only. Its SDPA path builds a boolean causal mask in the graph (arange/index/le
on symbolic sizes), computes rotary cos/sin once in a ``wrap_with_set_grad_enabled``
sub-graph, views q/k/v as ``[b, s, -1, head_dim]`` and runs repeat_kv before SDPA as
``expand([b, n_kv, n_rep, s, d]) -> reshape([b, n_kv * n_rep, s, d])`` with literal head
counts (``fix_shapes`` rewrites them). The seq Dim starts at 2 (torch.export specialises
sizes 0/1); the exported ONNX graph also runs seq = 1 (tested).

KV-cache capture (``capture(..., kv_cache=True)``, the ONNX cache contract of
``runtime.export``): ``CachedLM`` takes ``input_ids`` [b, s], ``attention_mask`` [b, past+s],
``position_ids`` [b, s] and a tuple of past keys/values (key then value per layer,
[b, kv_heads, past, head_dim]); it builds a transformers ``DynamicCache`` from them, calls
the model with ``use_cache=True`` and returns ``(logits, present key 0, present value 0,
...)`` (each present is ``cat(past, new)`` along the sequence axis). The cache is built
without the model's config, so every layer keeps its whole past: a sliding-window layer
(Mistral, Gemma) gets the same contract as the others, and its window is the attention
mask's (transformers' masking_utils applies it from the config), not a cropped cache. The padding-aware
causal mask is built in the graph by transformers' masking_utils from ``attention_mask``.
``flatten_io`` then gives the GraphModule a flat signature (``forward(input_ids,
attention_mask, position_ids, past_key_values_0, ...)`` returning a tuple; the pytree
codegen, the input-constraint hook and the ``_guards_fn`` call go), so that
``passes.cache_io`` may drop the cache inputs/outputs of layers without attention. Example
past length is 4 and seq 3 (torch.export specialises sizes 0 and 1; the mask's length gets
its own Dim because Dims cannot be added); the ONNX graph runs at past 0 and seq 1 (tested).

Invariants:
- the captured module computes the same logits as the model (it shares the model's weight
  tensors; the passes replace attributes, they never write into those tensors);
- every ``call_function`` node inside a decoder layer carries ``nn_module_stack`` metadata
  naming its innermost module (``...layers.3.mlp.down_proj``), which ``analysis`` reads;
- every family's projections are separate linears: Phi-3's fused ``qkv_proj`` and
  ``gate_up_proj`` are split by ``passes.unfuse`` before the graph is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx import GraphModule

from prunec.passes.unfuse import unfuse_projections


@dataclass(frozen=True)
class CaptureConfig:
    """Example input and the range of the dynamic dimensions."""

    example_batch: int = 2
    example_seq: int = 8
    max_batch: int = 1024
    max_seq: int = 8192
    example_past: int = 4  # KV-cache capture only (>= 2: torch.export specialises 0 and 1)
    kv_cache: bool = False  # capture ``CachedLM`` instead of ``LogitsOnly``


class LogitsOnly(nn.Module):
    """``input_ids -> logits`` of a causal LM, without cache or attention-mask input; the
    logits are float32 (``float32``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False)
        return float32(out.logits)


def float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32: a cast at the end of a float16 graph, nothing for a float32 one."""
    return logits if logits.dtype == torch.float32 else logits.float()


class CachedLM(nn.Module):
    """``(input_ids, attention_mask, position_ids, past) -> (logits, *presents)``; ``past``
    is key, value per layer; logits are cast to float32 (a float16 model's cache stays
    float16)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, past_key_values: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = list(zip(past_key_values[0::2], past_key_values[1::2], strict=True))
        cache = DynamicCache(ddp_cache_data=pairs)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, use_cache=True)
        presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (float32(out.logits), *presents)


DEFAULT_CAPTURE = CaptureConfig()
CACHE_CAPTURE = CaptureConfig(kv_cache=True)


def dynamic_shapes(config: CaptureConfig) -> dict[str, dict[int, Dim]]:
    batch = Dim("batch", min=1, max=config.max_batch)
    seq = Dim("seq", min=2, max=config.max_seq)
    return {"input_ids": {0: batch, 1: seq}}


def example_input(config: CaptureConfig) -> torch.Tensor:
    return torch.zeros((config.example_batch, config.example_seq), dtype=torch.int64)


def export_logits(module: nn.Module, config: CaptureConfig = DEFAULT_CAPTURE) -> ExportedProgram:
    """``torch.export`` a module taking ``input_ids`` (dynamic batch and seq)."""
    with torch.no_grad():
        ep = torch.export.export(
            module, (example_input(config),), dynamic_shapes=dynamic_shapes(config), strict=False
        )
    forget_last_trace()
    return ep


def forget_last_trace() -> None:
    """Drop what torch.export keeps of its last trace once it has returned: a module-level
    map from fake tensors to the traced graph's nodes (torch 2.13's ``proxy_tensor``), which
    holds that graph, its fake tensors and shape environment and, through them, the weights
    of the traced module: a loaded model's file mapping stayed resident until the next trace."""
    from torch.fx.experimental import proxy_tensor

    getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", {}).clear()


def capture(model: nn.Module, config: CaptureConfig = DEFAULT_CAPTURE) -> GraphModule:
    """The unlifted FX GraphModule of ``model``'s ``input_ids -> logits`` forward, or with
    ``config.kv_cache`` of ``CachedLM`` with a flat signature (see the module docstring)."""
    if model.training:
        raise ValueError("capture needs a model in eval mode (dropout would be traced)")
    if not config.kv_cache:
        gm = export_logits(LogitsOnly(model), config).module()
        assert isinstance(gm, GraphModule)
    else:
        layout = dense_layout(model.config)
        dtype = next(model.parameters()).dtype
        ep = export_cached(CachedLM(model), config, cache_examples(config, layout, dtype), True)
        gm = flatten_io(ep.module())
    unfuse_projections(gm)
    return gm


def dense_layout(mcfg: Any) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) of every layer of an HF config."""
    d = getattr(mcfg, "head_dim", None) or mcfg.hidden_size // mcfg.num_attention_heads
    return [(int(mcfg.num_key_value_heads), int(d))] * int(mcfg.num_hidden_layers)


def cache_examples(config: CaptureConfig, layout: Sequence[tuple[int, int]],
                   dtype: torch.dtype) -> list[torch.Tensor]:
    """Example past keys/values (key, value per ``(kv_heads, head_dim)`` of ``layout``)."""
    b, p = config.example_batch, config.example_past
    return [torch.zeros((b, h, p, d), dtype=dtype) for h, d in layout for _ in range(2)]


def cached_inputs(config: CaptureConfig, past: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    b, s, p = config.example_batch, config.example_seq, config.example_past
    ids = torch.zeros((b, s), dtype=torch.int64)
    positions = torch.arange(p, p + s, dtype=torch.int64).expand(b, s).contiguous()
    return ids, torch.ones((b, p + s), dtype=torch.int64), positions, *past


def cached_dims(config: CaptureConfig, n_past: int) -> list[dict[int, Any]]:
    """Dims of the cache inputs. The mask's length is ``Dim.DYNAMIC``: a named Dim must
    hold every guard the trace derives, and the trace derives a lower bound (>= past + 2)
    no fixed minimum states; the ONNX graph has no such bound (runs at total 1, tested)."""
    batch = Dim("batch", min=1, max=config.max_batch)
    seq = Dim("seq", min=1, max=config.max_seq)
    past = Dim("past", min=0, max=config.max_seq)
    total = Dim.DYNAMIC
    return [{0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
            *({0: batch, 2: past} for _ in range(n_past))]


def export_cached(module: nn.Module, config: CaptureConfig, past: list[torch.Tensor],
                  nested: bool = False) -> ExportedProgram:
    """``torch.export`` a cache module: ``CachedLM`` (``nested``: past as one tuple) or a
    flattened GraphModule (past as separate arguments)."""
    args: tuple[Any, ...] = cached_inputs(config, past)
    dims: tuple[Any, ...] = tuple(cached_dims(config, len(past)))
    if nested:
        args, dims = (*args[:3], tuple(args[3:])), (*dims[:3], tuple(dims[3:]))
    with torch.no_grad():
        ep = torch.export.export(module, args, dynamic_shapes=dims, strict=False)
    forget_last_trace()
    return ep


def flatten_io(gm: GraphModule) -> GraphModule:
    """Give an unlifted module a flat signature: placeholders in, a tuple out (no pytree
    codegen, no input-constraint hook, no ``_guards_fn`` call), so passes may drop I/O."""
    from torch.export._unlift import _check_input_constraints_pre_hook

    assert isinstance(gm, GraphModule)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    gm.graph._codegen = torch.fx.graph.CodeGen()
    for key, hook in list(gm._forward_pre_hooks.items()):
        if hook is _check_input_constraints_pre_hook:
            del gm._forward_pre_hooks[key]
            gm._forward_pre_hooks_with_kwargs.pop(key, None)
    gm.recompile()
    return gm


def reexport(gm: GraphModule, config: CaptureConfig = DEFAULT_CAPTURE,
             past: list[torch.Tensor] | None = None) -> ExportedProgram:
    """Export a (pruned) captured GraphModule again: fresh shapes, same dynamic dims.
    A cache graph (``config.kv_cache``) needs its ``past`` examples (``cache_examples``)."""
    if config.kv_cache:
        assert past is not None, "a cache graph is re-exported with its past examples"
        return export_cached(gm, config, past)
    return export_logits(gm, config)

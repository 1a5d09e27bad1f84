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

Invariants:
- the captured module computes the same logits as the model (it shares the model's weight
  tensors; the passes replace attributes, they never write into those tensors);
- every ``call_function`` node inside a decoder layer carries ``nn_module_stack`` metadata
  naming its innermost module (``...layers.3.mlp.down_proj``), which ``analysis`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx import GraphModule


@dataclass(frozen=True)
class CaptureConfig:
    """Example input and the range of the dynamic dimensions."""

    example_batch: int = 2
    example_seq: int = 8
    max_batch: int = 1024
    max_seq: int = 8192


class LogitsOnly(nn.Module):
    """``input_ids -> logits`` of a causal LM, without cache or attention-mask input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False)
        logits: torch.Tensor = out.logits
        return logits


DEFAULT_CAPTURE = CaptureConfig()


def dynamic_shapes(config: CaptureConfig) -> dict[str, dict[int, Dim]]:
    batch = Dim("batch", min=1, max=config.max_batch)
    seq = Dim("seq", min=2, max=config.max_seq)
    return {"input_ids": {0: batch, 1: seq}}


def example_input(config: CaptureConfig) -> torch.Tensor:
    return torch.zeros((config.example_batch, config.example_seq), dtype=torch.int64)


def export_logits(module: nn.Module, config: CaptureConfig = DEFAULT_CAPTURE) -> ExportedProgram:
    """``torch.export`` a module taking ``input_ids`` (dynamic batch and seq)."""
    with torch.no_grad():
        return torch.export.export(
            module, (example_input(config),), dynamic_shapes=dynamic_shapes(config), strict=False
        )


def capture(model: nn.Module, config: CaptureConfig = DEFAULT_CAPTURE) -> GraphModule:
    """The unlifted FX GraphModule of ``model``'s ``input_ids -> logits`` forward."""
    if model.training:
        raise ValueError("capture needs a model in eval mode (dropout would be traced)")
    gm = export_logits(LogitsOnly(model), config).module()
    assert isinstance(gm, GraphModule)
    return gm


def reexport(gm: GraphModule, config: CaptureConfig = DEFAULT_CAPTURE) -> ExportedProgram:
    """Export a (pruned) captured GraphModule again: fresh shapes, same dynamic dims."""
    return export_logits(gm, config)

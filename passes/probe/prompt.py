"""Prompt-conditioned Probe Pruning (``probe { mode = prompt }``): the PyTorch reference.

Per sequence, once: its prompt (positions 0 .. P-1) is the batch that gets probed. At every
``DYNAMIC`` block the probe is taken from the prompt's residual entering the block
(``model.select_probe``: the ``tokens`` fraction of the prompt's positions; ``samples`` of a
one-sequence batch is that sequence), scored by PPsp fused with the history H at the probe
positions (``GatedBlock.choose``), and ``topk`` fixes the kept set for that sequence's whole
decode. With ``kept = per-batch`` (``ProbeSettings.per_batch``) the batch of prompts is
probed once, as per-batch probing probes a batch (positions by norm over the batch, then the
``samples`` fraction of its sequences), and its one kept set serves every sequence: a decode
step then reads one copy of the kept weights, not one per sequence. A gated MLP is position-wise, so its probe's activations are read from the dense
prefill's at the probe positions (``choose_one``: the same numbers, one MLP pass at prefill);
attention probes attend among the probe tokens, as per-batch probing does. H is read, never updated: requests are independent (nothing carries from one prompt
to the next), so ``momentum`` does not apply.
Prefill runs dense (logits 0 .. P-1 are the dense model's). Decode positions P .. run on the
kept units only, attending to the prompt's keys/values from the dense prefill; with
``compensate`` each skipped unit adds its probe-mean activation (as ``GatedBlock.output``).

``prompt_forward`` is the teacher-forced form, ids ``[B, T]`` -> logits ``[B, T, V]`` in one
causal pass, and it is exact: a position's residual depends on positions at or before it
only, so prompt positions (all units) equal the dense prefill, and decode positions (the
skipped units' activations replaced by 0, or by the probe mean when compensating: for a
gated-MLP channel or an attention head the same as gathering the kept weights) equal decode
steps with the cache. Kept sets differ per sequence, so they are masks ``[B, C]`` here, not
gathers. ``oracle`` (benchmarks only) scores on the whole sequence with full-batch probing:
an upper bound no deployment can run (it reads the continuation).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from prunec.compiler.ir import MIN_SEQ, ModelShape, ProbeMode, ProbePolicy
from prunec.passes.probe.forward import GatedModel, build_gated, initial_state
from prunec.passes.probe.history import History
from prunec.passes.probe.layout import GateKind
from prunec.passes.probe.model import GatedBlock, GatedMLP, select_probe

Rope = tuple[torch.Tensor, torch.Tensor]


def choose_one(block: GatedBlock, h: torch.Tensor, x: torch.Tensor, act: torch.Tensor,
               rope: Rope, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(kept units in topk order, probe mean or None) of one probed batch (``h``/``x`` ``[b,
    n, D]``, its dense activations ``act [b, n, C]``; per sequence, b is 1): the per-batch
    probe (``select_probe``: positions, then samples) of the prompts. A gated MLP is
    position-wise, so its probe's activations are the dense prefill's at the probe
    positions: they are read from ``act``, not recomputed (the same numbers, and the prefill
    pays no second MLP pass). Attention probes run the probe tokens among themselves
    (``GatedBlock.choose``)."""
    if not isinstance(block, GatedMLP) or block.settings.full_batch:
        idx, mean = block.choose(h, x, rope, hist)
        assert idx is not None
        return idx, mean
    pos, smp = select_probe(h, block.settings)
    scores, mean = block.scored(act.index_select(0, smp).index_select(1, pos),
                                hist.index_select(1, pos))
    return torch.topk(scores, block.gate.keep).indices, mean


def kept_mask(block: GatedBlock, idx: torch.Tensor, mean: torch.Tensor | None, like: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept-column mask, skipped-column fill: 0, or the probe mean when compensating) of the
    kept units ``idx``, each shaped and typed as ``like`` (one history row ``[C]``)."""
    mask = torch.zeros_like(like)
    mask[block.columns(idx)] = 1.0
    return mask, torch.zeros_like(mask) if mean is None else mean * (1.0 - mask)


def choose_kept(block: GatedBlock, h: torch.Tensor, x: torch.Tensor, act: torch.Tensor,
                rope: Rope, hist: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept-column mask ``[B, C]``, skipped-column fill ``[B, C]``, kept units in topk
    order: ``[B, keep]`` per sequence, ``[1, keep]`` with ``kept = per-batch``) from the
    prompts ``h``/``x`` ``[B, n, D]`` (the scored prefix) and their dense activations ``act
    [B, n, C]``: each sequence probed on its own, or the batch probed once."""
    if block.settings.per_batch:
        idx, mean = choose_one(block, h, x, act, rope, hist)
        mask, fill = kept_mask(block, idx, mean, hist[:, 0])
        b = h.shape[0]
        return mask.expand(b, -1), fill.expand(b, -1), idx.unsqueeze(0)
    masks, fills, kept = [], [], []
    for s in range(h.shape[0]):
        idx, mean = choose_one(block, h[s:s + 1], x[s:s + 1], act[s:s + 1], rope, hist)
        mask, fill = kept_mask(block, idx, mean, hist[:, 0])
        masks.append(mask)
        fills.append(fill)
        kept.append(idx)
    return torch.stack(masks), torch.stack(fills), torch.stack(kept)


def prompt_forward(gated: GatedModel, ids: torch.Tensor, prompt_len: int,
                   histories: list[torch.Tensor], score_len: int | None = None
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits ``[B, T, V]``, kept units ``[B, keep]`` (``[1, keep]`` per batch) per dynamic
    block in ``history_names`` order); the kept sets are scored on positions ``0 ..
    score_len-1`` (default: the prompt)."""
    t = ids.shape[1]
    n = score_len or prompt_len
    h = gated.embed_ids(ids)
    ropes = gated.ropes(t)
    decode = (torch.arange(t) >= prompt_len).view(1, t, 1)
    kept: list[torch.Tensor] = []
    for block in gated.block_list():
        if block.gate.kind is GateKind.STATIC:
            raise ValueError("mode = prompt scores with ppsp; static metrics have no prompt")
        x, rope = block.normed(h), ropes[block.rope_kind]
        act = block.activation(x, rope, None)
        if block.dynamic:
            mask, fill, idx = choose_kept(
                block, h[:, :n], x[:, :n], act[:, :n], (rope[0][:n], rope[1][:n]),
                histories[len(kept)])
            kept.append(idx)
            act = torch.where(decode, act * mask.unsqueeze(1) + fill.unsqueeze(1), act)
        h = h + block.output(act, None, None)
    return gated.head_logits(h), kept


class PromptRunner:
    """Eager prompt-mode gating: ``run(ids, prompt_len) -> logits``; H stays the calibrated
    one. ``oracle`` (benchmarks): full-batch scoring on the whole sequence instead."""

    def __init__(self, model: nn.Module, shape: ModelShape, policy: ProbePolicy,
                 history: History, oracle: bool = False) -> None:
        mode = ProbeMode.FULL_BATCH if oracle else ProbeMode.PROMPT
        self.gated = build_gated(model, shape, replace(policy, mode=mode), history)
        self.state = initial_state(self.gated, history)
        self.max_len, self.oracle = history.max_len, oracle
        self.last_kept: list[torch.Tensor] = []

    def run(self, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        t = ids.shape[1]
        if not MIN_SEQ <= prompt_len < t <= self.max_len:
            raise ValueError(f"prompt {prompt_len} and sequence {t} tokens: need "
                             f"{MIN_SEQ} <= prompt < sequence <= history max_len "
                             f"{self.max_len}")
        logits: torch.Tensor
        with torch.no_grad():
            logits, self.last_kept = prompt_forward(self.gated, ids, prompt_len, self.state,
                                                    t if self.oracle else None)
        return logits

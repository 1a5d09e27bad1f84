"""The three exportable graphs of a ``probe { mode = prompt }`` artifact, as torch modules.

Built on ``GatedModel`` (``forward.build_gated``) for every family with probe support: the
projections are its copied matrices, and every family difference is the block's own HF
modules or numbers, as in the per-batch gated forward: pre- and post-norms
(``GatedBlock.normed`` / ``post_normed``), the MLP's ``act_fn``, the attention's q/k norms,
``scaling`` and soft-capping (``GatedAttention.head_norms`` / ``attention_logits``), the
embedding module and the final norm / soft-cap (``GatedModel.embed_ids`` / ``head_logits``),
and one rotary table per rope kind (``GatedModel.rope_table``, Gemma 3's local and global
rope). Attention is full causal: a sliding window narrower than ``max_len`` is P0226.
Every graph is batched, with
per-sequence kept sets (``kept = per-batch``: one kept set for the batch, and the gathered
tensors below lose their leading ``B``: the decode's MatMuls are plain ones, reading one copy
of the kept weights per step), static shapes in the pruned dims (TopK with constant K,
Gather, MatMul) and no control flow:
- ``PromptPrefill(input_ids [B, T])``: the dense model (logits are the dense model's) that
  also returns its KV cache and, per dynamic block, the kept units ``[B, keep]`` (ascending)
  chosen exactly as ``prompt.choose_kept`` does, each sequence probed on its own
  prompt: the top ``tokens`` fraction of its positions by residual L2 norm (ascending), the
  probe's activations (attention: the probe tokens through the block's projections, among
  themselves; MLP: the dense prefill's own activations at those positions), PPsp fused with the history H (a constant here,
  position-major ``[max_len, C]``: prompt mode never updates H), TopK; with ``compensate``
  also the probe's mean activation per column ``[B, C]``;
- ``PromptGather(kept, means)`` (once per request): the kept weights per dynamic block
  (``weight_names``): MLP ``gate_up`` ``[B, D, 2k]`` and ``down`` ``[B, k, D]``; attention
  ``q`` ``[B, D, k*d]`` (+ ``q_bias`` ``[B, k*d]`` when q_proj has a bias), ``kv_index``
  ``[B, k]`` (the KV head each kept query head reads), ``o`` ``[B, k*d, D]``; and per block
  ``out_bias`` ``[B, D]``: the output projection's bias plus, compensating, the skipped
  units' probe-mean contribution ``W m - W_kept m_kept``;
- ``PromptDecode(input_ids, position_ids [B, S], pasts, weights)``: the model on the kept
  weights (batched MatMul per sequence), k/v projections whole, so the KV cache keeps every
  KV group (the reference prunes query heads; a KV group goes only when all its heads do,
  which no static shape can express) and is the prefill's cache. ``S`` may exceed 1
  (teacher-forced continuation for ``eval --prompt-len``).
Units are ``GatedMLP`` channels and ``GatedAttention`` query heads, as in ``prompt.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunec.compiler.budget import ceil_count
from prunec.passes.probe import maths
from prunec.passes.probe.forward import GatedModel
from prunec.passes.probe.model import (
    GatedAttention,
    GatedBlock,
    GatedMLP,
    project_in,
    rotate,
)

Tensor = torch.Tensor
MLP_WEIGHTS = ("gate_up", "gate_up_bias", "down", "out_bias")
ATTN_WEIGHTS = ("q", "q_bias", "kv_index", "o", "out_bias")


def weight_names(block: GatedBlock) -> tuple[str, ...]:
    """The gathered tensors of a dynamic block, in graph order (biases only where present)."""
    if isinstance(block, GatedMLP):
        return tuple(n for n in MLP_WEIGHTS if n != "gate_up_bias" or block.b_gate_up is not None)
    assert isinstance(block, GatedAttention)
    return tuple(n for n in ATTN_WEIGHTS if n != "q_bias" or block.b_q is not None)


def per_sequence_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for every sequence b: ``x [B, N, ...]``, ``idx [B, k]`` -> ``[B, k,
    ...]``. One Gather of whole slabs from ``x`` flattened to ``[B*N, ...]`` (row ``b*N +
    idx``): ``torch.gather`` with an index expanded to the output's shape exports as
    GatherElements, which reads an int64 index as large as the output (per decode step, twice
    the KV cache's bytes per layer)."""
    b, n = x.shape[0], x.shape[1]
    rows = idx + torch.arange(b, device=idx.device).unsqueeze(1) * n
    flat = x.reshape(b * n, *x.shape[2:]).index_select(0, rows.reshape(-1))
    return flat.reshape(b, idx.shape[1], *x.shape[2:])


def per_row(t: Tensor) -> Tensor:
    """A gathered bias ``[B, n]`` (per sequence) as ``[B, 1, n]``, to add to ``[B, S, n]``; a
    per-batch one ``[n]`` broadcasts as it is."""
    return t.unsqueeze(-2) if t.dim() == 2 else t


def heads_of(kv: Tensor, kv_index: Tensor) -> Tensor:
    """The KV heads ``kv_index`` of ``kv [B, kv_heads, T, d]``: ``[B, k, T, d]`` for a
    per-sequence ``[B, k]`` (``per_sequence_rows``) or a shared ``[k]`` (one Gather)."""
    return per_sequence_rows(kv, kv_index) if kv_index.dim() == 2 \
        else kv.index_select(1, kv_index)


def project_qkv(block: GatedAttention, x: Tensor, rope: tuple[Tensor, Tensor], wq: Tensor,
                bq: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(queries ``[B, k, S, d]`` of the heads of ``wq`` ``[(B,) D, k*d]``, keys, values ``[B,
    kv, S, d]``) of ``x [B, S, D]``: projected, q/k-normed and rotated at the rope rows
    ``rope``. Every step is position-wise, so a position's rows do not depend on the others."""
    b, s, _ = x.shape
    d = block.settings.head_dim
    cos, sin = rope
    q = x @ wq if bq is None else x @ wq + per_row(bq)
    q, k = block.head_norms(q.view(b, s, -1, d),
                            project_in(x, block.w_k, block.b_k).view(b, s, -1, d))
    q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
    v = project_in(x, block.w_v, block.b_v).view(b, s, -1, d).transpose(1, 2)
    return q, k, v


def mix(block: GatedAttention, q: Tensor, k: Tensor, v: Tensor, kv_index: Tensor) -> Tensor:
    """Causal attention ``[B, S, k*d]`` of the queries ``q [B, k, S, d]`` (the last ``S`` of
    the ``T`` positions of ``k``/``v`` ``[B, kv, T, d]``; ``kv_index`` ``[(B,) k]``: each
    query head's KV head)."""
    b, s = q.shape[0], q.shape[2]
    kk, vv = heads_of(k, kv_index), heads_of(v, kv_index)
    total = k.shape[2]
    keys = torch.arange(total, device=q.device)
    queries = torch.arange(s, device=q.device) + (total - s)
    masked = keys.unsqueeze(0) > queries.unsqueeze(1)
    scores = block.attention_logits(q, kk).masked_fill(masked, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), vv)
    return out.transpose(1, 2).reshape(b, s, -1)


def attend(block: GatedAttention, x: Tensor, rope: tuple[Tensor, Tensor], past: Any,
           wq: Tensor, bq: Tensor | None, kv_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(attention output ``[B, S, k*d]``, keys, values ``[B, kv, past+S, d]``) of ``x``
    ``[B, S, D]`` at the rope rows ``rope`` for the query heads of ``wq`` ``[(B,) D, k*d]``
    (``kv_index`` ``[(B,) k]``: their KV heads), after the cached ``past`` (None or (keys,
    values))."""
    q, k, v = project_qkv(block, x, rope, wq, bq)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    return mix(block, q, k, v, kv_index), k, v


def all_heads(block: GatedAttention) -> tuple[Tensor, Tensor | None]:
    """(``wq [D, H*d]``, its bias or None) of every query head (the dense block)."""
    wq = block.w_q.reshape(-1, block.w_q.shape[-1]).t()
    return wq, None if block.b_q is None else block.b_q.reshape(1, -1)


def full_attention(block: GatedAttention, x: Tensor, rope: tuple[Tensor, Tensor], past: Any
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``attend`` with every query head (the dense block)."""
    return attend(block, x, rope, past, *all_heads(block), block.kv_map)


def rope_at(g: GatedModel, kind: int, pos: Tensor) -> tuple[Tensor, Tensor]:
    """cos/sin ``[B, 1, S, d]`` of rope table ``kind`` (a block's ``rope_kind``) at the
    positions ``pos [B, S]``."""
    cos, sin = g.rope_table(kind)
    return cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)


def probe_positions(h: Tensor, block: GatedBlock, per_batch: bool = False) -> Tensor:
    """Per sequence (``[B, n]``), or once over the batch (``per_batch``: ``[n]``), the top
    ``n = ceil(f*T)`` (>= 2) positions of ``h [B, T, D]`` by L2 over hidden (and the batch),
    ascending: ``maths.probe_positions`` of each one-sequence batch, or of the batch. Ranked
    by the squared norm ``sum(h * h)`` (the same order): a ``Pow`` would be merged with the
    block's RMSNorm's own, and the merged square keeps onnxruntime's RMSNorm fusion away."""
    n = ceil_count(h.shape[1], block.settings.token_frac, 2, maths.SYM_MIN_MAX)
    square = h * h
    if per_batch:
        return torch.sort(torch.topk(square.sum(dim=(0, 2)), n).indices).values
    return torch.sort(torch.topk(square.sum(-1), n, dim=1).indices, dim=1).values


Dense = Tensor | tuple[Tensor, Tensor, Tensor]  # an MLP's activations, or attention's q, k, v


def probe_activation(block: GatedBlock, dense: Dense, rows: Any) -> Tensor:
    """The probe's activations ``[b, n, C]``, read from the dense prefill's ``dense``: a
    gated MLP's activations ``[B, T, C]``, or an attention block's rotated ``(q [B, H, T, d],
    k, v [B, kv, T, d])`` (every step before the mixing is position-wise, so the probe
    tokens' rows are the dense ones); attention then mixes the probe tokens among themselves,
    as the reference (``GatedBlock.choose``) does. ``rows(t, axis)`` takes the probe's rows
    of ``t`` along its position axis."""
    if isinstance(dense, Tensor):
        return rows(dense, 1)  # type: ignore[no-any-return]
    assert isinstance(block, GatedAttention)
    q, k, v = (rows(t, 2) for t in dense)
    return mix(block, q, k, v, block.kv_map)


def choose(block: GatedBlock, h: Tensor, dense: Dense, hist_t: Tensor
           ) -> tuple[Tensor, Tensor | None]:
    """(kept units ``[B, keep]`` ascending, probe-mean activation ``[B, C]`` or None): each
    sequence's own probe of its prompt ``h [B, T, D]`` (``probe_activation``), PPsp fused
    with ``hist_t`` (the reference's ``prompt.choose_one``)."""
    if block.settings.per_batch:
        return choose_batch(block, h, dense, hist_t)
    pos = probe_positions(h, block)

    def rows(t: Tensor, axis: int) -> Tensor:
        return per_sequence_rows(t.transpose(1, axis), pos).transpose(1, axis)

    act = probe_activation(block, dense, rows)
    s = maths.fuse(act.pow(2).transpose(1, 2), hist_t[pos].transpose(1, 2))
    kept = torch.topk(block.importance(s), block.gate.keep, dim=-1).indices
    mean = act.mean(1) if block.settings.compensate else None
    return torch.sort(kept, dim=-1).values, mean


def choose_batch(block: GatedBlock, h: Tensor, dense: Dense, hist_t: Tensor
                 ) -> tuple[Tensor, Tensor | None]:
    """``choose`` with ``kept = per-batch``: (kept units ``[1, keep]`` ascending, probe mean
    ``[1, C]`` or None) of the batch probed once, as ``model.select_probe`` probes a batch
    (``prompt.choose_one`` on the whole batch)."""
    pos = probe_positions(h, block, per_batch=True)
    smp = maths.probe_samples(h.index_select(1, pos), block.settings.sample_frac)

    def rows(t: Tensor, axis: int) -> Tensor:
        return t.index_select(0, smp).index_select(axis, pos)

    act = probe_activation(block, dense, rows)
    s = maths.fuse(act.pow(2).mean(0).t(), hist_t[pos].t())
    kept = torch.topk(block.importance(s), block.gate.keep).indices
    mean = act.mean(dim=(0, 1)).unsqueeze(0) if block.settings.compensate else None
    return torch.sort(kept).values.unsqueeze(0), mean


class PromptPrefill(nn.Module):
    """``input_ids [B, T] -> (logits, keys/values per attention block, kept per dynamic
    block, probe means per dynamic block when compensating)``."""

    def __init__(self, gated: GatedModel, histories: list[Tensor]) -> None:
        super().__init__()
        self.gated = gated
        for j, hist in enumerate(histories):  # [C, max_len] -> position-major [max_len, C]
            self.register_buffer(f"hist_{j}", hist.t().contiguous())

    def forward(self, input_ids: Tensor) -> tuple[Tensor, ...]:
        g, t = self.gated, input_ids.shape[1]
        h = g.embed_ids(input_ids)
        ropes = g.ropes(t)
        cache: list[Tensor] = []
        kept: list[Tensor] = []
        means: list[Tensor] = []
        for block in g.block_list():
            x = block.normed(h)
            dense: Dense
            if isinstance(block, GatedAttention):
                dense = project_qkv(block, x, ropes[block.rope_kind], *all_heads(block))
                act = mix(block, *dense, block.kv_map)
                cache += list(dense[1:])
            else:
                act = dense = block.activation(x, ropes[0], None)
            if block.dynamic:
                idx, mean = choose(block, h, dense, getattr(self, f"hist_{len(kept)}"))
                kept.append(idx)
                means += [] if mean is None else [mean]
            h = h + block.output(act, None, None)
        return (g.head_logits(h), *cache, *kept, *means)


def gather_block(block: GatedBlock, idx: Tensor, mean: Tensor | None) -> list[Tensor]:
    """The ``weight_names(block)`` tensors for the kept units ``idx [B, k]``."""
    b, k = idx.shape
    if isinstance(block, GatedMLP):
        wgu = block.w_gate_up[:, idx]  # [2, B, k, D]
        out = [wgu.permute(1, 3, 0, 2).reshape(b, -1, 2 * k)]
        if block.b_gate_up is not None:
            out.append(block.b_gate_up[:, idx].permute(1, 0, 2).reshape(b, 2 * k))
        w_out, full = block.w_down_t[idx], block.w_down_t  # [B, k, D], [C, D]
        out.append(w_out)
    else:
        assert isinstance(block, GatedAttention)
        d = block.settings.head_dim
        out = [block.w_q[idx].reshape(b, k * d, -1).transpose(1, 2)]
        if block.b_q is not None:
            out.append(block.b_q[idx].reshape(b, k * d))
        w_out = block.w_o_t[idx].reshape(b, k * d, -1)
        full = block.w_o_t.reshape(-1, block.w_o_t.shape[-1])
        out += [block.kv_map[idx], w_out]
    return out + [out_bias(block, idx, mean, w_out, full)]


def batched_columns(block: GatedBlock, idx: Tensor) -> Tensor:
    """``GatedBlock.columns`` per sequence: ``idx [B, k]`` -> columns ``[B, k * unit]``."""
    if isinstance(block, GatedMLP):
        return idx
    assert isinstance(block, GatedAttention)
    d = block.settings.head_dim
    return (idx.unsqueeze(-1) * d + block.head_offsets).reshape(idx.shape[0], -1)


def out_bias(block: GatedBlock, idx: Tensor, mean: Tensor | None, w_kept: Tensor,
             w_full: Tensor) -> Tensor:
    """``[B, D]``: the block's own output bias plus, compensating, ``W m - W_kept m_kept``
    (``GatedBlock.output``'s compensation, constant over the decode)."""
    b, d_model = idx.shape[0], w_full.shape[-1]
    bias = torch.zeros(b, d_model, dtype=w_full.dtype) if block.bias is None \
        else block.bias.reshape(1, -1).expand(b, -1)
    if mean is None:
        return bias
    m_kept = torch.gather(mean, 1, batched_columns(block, idx))
    return bias + mean @ w_full - (m_kept.unsqueeze(1) @ w_kept).squeeze(1)


class PromptGather(nn.Module):
    """``(kept per dynamic block, means when compensating) -> gathered tensors`` in block
    order, ``weight_names`` order within a block."""

    def __init__(self, gated: GatedModel) -> None:
        super().__init__()
        self.gated = gated

    def forward(self, kept: list[Tensor], means: list[Tensor]) -> tuple[Tensor, ...]:
        dynamic = [b for b in self.gated.block_list() if b.dynamic]
        out: list[Tensor] = []
        for j, block in enumerate(dynamic):
            parts = gather_block(block, kept[j], means[j] if means else None)
            out += [t.squeeze(0) for t in parts] if block.settings.per_batch else parts
        return tuple(out)


class PromptDecode(nn.Module):
    """``(input_ids, position_ids [B, S], pasts (key, value per attention block), gathered
    tensors) -> (logits [B, S, V], presents)``."""

    def __init__(self, gated: GatedModel) -> None:
        super().__init__()
        self.gated = gated

    def forward(self, input_ids: Tensor, position_ids: Tensor, pasts: list[Tensor],
                weights: list[Tensor]) -> tuple[Tensor, ...]:
        g = self.gated
        h = g.embed_ids(input_ids)
        ropes = [rope_at(g, k, position_ids) for k in range(g.n_ropes)]
        presents: list[Tensor] = []
        for block in g.block_list():
            x, rope = block.normed(h), ropes[block.rope_kind]
            if not block.dynamic:
                h = h + self._dense(block, x, rope, pasts, presents)
                continue
            n = len(weight_names(block))
            w = dict(zip(weight_names(block), weights[:n]))
            weights = weights[n:]
            h = h + self._pruned(block, x, rope, w, pasts, presents)
        return (g.head_logits(h), *presents)

    @staticmethod
    def _dense(block: GatedBlock, x: Tensor, rope: tuple[Tensor, Tensor], pasts: list[Tensor],
               presents: list[Tensor]) -> Tensor:
        if isinstance(block, GatedAttention):
            i = len(presents)
            act, k, v = full_attention(block, x, rope, (pasts[i], pasts[i + 1]))
            presents += [k, v]
        else:
            act = block.activation(x, rope, None)
        return block.output(act, None, None)

    @staticmethod
    def _pruned(block: GatedBlock, x: Tensor, rope: tuple[Tensor, Tensor],
                w: dict[str, Tensor], pasts: list[Tensor], presents: list[Tensor]) -> Tensor:
        bias = per_row(w["out_bias"])
        if isinstance(block, GatedAttention):
            i = len(presents)
            act, k, v = attend(block, x, rope, (pasts[i], pasts[i + 1]), w["q"],
                               w.get("q_bias"), w["kv_index"])
            presents += [k, v]
            return block.post_normed(act @ w["o"] + bias)
        assert isinstance(block, GatedMLP)
        gu = x @ w["gate_up"]
        if "gate_up_bias" in w:
            gu = gu + per_row(w["gate_up_bias"])
        gate, up = gu.chunk(2, dim=-1)
        return block.post_normed((block.act_fn(gate) * up) @ w["down"] + bias)

"""The probe history H and its initialisation from calibration data.

For every block that exists, H holds the running mean of the SQUARED input of o_proj
(attention, ``[max_len, heads * head_dim]``) and of down_proj (MLP, ``[max_len, channels]``)
per token position and channel. Positions are absolute positions in the sequence: a batch of
length T reads and updates rows ``0 .. T-1``; ``T > max_len`` is an error.
Initialisation (``calibrate_history``): rows ``0 .. Tc-1`` are the mean over calibration
sequences (length Tc) of x^2 at that position; rows ``Tc .. max_len-1`` (when
``max_len > Tc``) take the mean of rows ``1 .. Tc-1`` (position 0, the attention sink, is an
outlier). ``mean`` keeps the per-channel mean of x over all calibration tokens (FLAP needs
it for the fluctuation and the bias compensation). History values are immutable tensors in
frozen dataclasses: an update returns a new ``History``. Calibration runs on the model's
device (``passes.device``); the initial H is returned on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunec.compiler.ir import DEFAULT_MAX_LEN, ModelShape, ProbePolicy
from prunec.passes.device import on_model
from prunec.passes.reference import ZeroAttention, ZeroMLP, decoder_layers

CALIB_BATCH = 8


@dataclass(frozen=True)
class BlockHistory:
    sq: torch.Tensor  # [max_len, C]: running mean of x^2 per position and channel
    mean: torch.Tensor  # [C]: calibration mean of x per channel (static baselines)


@dataclass(frozen=True)
class History:
    attn: tuple[BlockHistory | None, ...]  # per layer; None where the block is removed
    mlp: tuple[BlockHistory | None, ...]
    calib_len: int  # Tc: rows below come from calibration directly
    max_len: int


class _Accumulator:
    """Sums of x^2 per position and of x per channel for one Linear's input."""

    def __init__(self) -> None:
        self.sq: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.n = 0

    def hook(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        sq, s = x.pow(2).sum(0), x.sum(dim=(0, 1))
        self.sq = sq if self.sq is None else self.sq + sq
        self.sum = s if self.sum is None else self.sum + s
        self.n += x.shape[0]

    def block(self, max_len: int) -> BlockHistory:
        assert self.sq is not None and self.sum is not None
        sq = self.sq / self.n
        tc = sq.shape[0]
        if max_len > tc:
            tail = sq[1:].mean(0) if tc > 1 else sq[0]
            sq = torch.cat([sq, tail.expand(max_len - tc, -1)])
        mean = (self.sum / (self.n * tc)).float()
        return BlockHistory(sq.float().contiguous().cpu(), mean.cpu())  # H leaves on the CPU


def _hook_targets(model: nn.Module) -> list[tuple[str, int, nn.Module]]:
    found: list[tuple[str, int, nn.Module]] = []
    for i, layer in enumerate(decoder_layers(model)):
        if not isinstance(layer.self_attn, ZeroAttention):
            found.append(("attn", i, layer.self_attn.o_proj))
        if not isinstance(layer.mlp, ZeroMLP):
            found.append(("mlp", i, layer.mlp.down_proj))
    return found


def _run_batches(model: nn.Module, calib: torch.Tensor) -> None:
    with torch.no_grad():
        for start in range(0, calib.shape[0], CALIB_BATCH):
            model(input_ids=on_model(model, calib[start:start + CALIB_BATCH]), use_cache=False)


def calibrate_history(model: nn.Module, shape: ModelShape, policy: ProbePolicy,
                      calib: torch.Tensor, max_len: int | None = None) -> History:
    """Initial H for ``model`` (dense or statically pruned) from ``calib [N, Tc]`` token ids.

    ``max_len`` (default ``max(Tc, DEFAULT_MAX_LEN)``, the IR's) is the longest sequence the
    history supports.
    ``policy`` is accepted for symmetry with the export (H covers every existing block)."""
    del policy
    tc = int(calib.shape[1])
    max_len = max(tc, max_len or DEFAULT_MAX_LEN)
    accs: dict[tuple[str, int], _Accumulator] = {}
    handles = []
    for kind, i, linear in _hook_targets(model):
        acc = accs[(kind, i)] = _Accumulator()
        handles.append(linear.register_forward_pre_hook(acc.hook))
    try:
        _run_batches(model, calib)
    finally:
        for h in handles:
            h.remove()
    n = shape.n_layers
    get: Callable[[str, int], BlockHistory | None] = (
        lambda k, i: accs[(k, i)].block(max_len) if (k, i) in accs else None)
    return History(tuple(get("attn", i) for i in range(n)), tuple(get("mlp", i) for i in range(n)),
                   calib_len=tc, max_len=max_len)


"""Reconstruction after width cuts: the ``reconstruct`` setting (``off | bias | least-squares``).

A width cut keeps the columns K of o_proj (the kept heads' ``head_dim``-wide blocks) or of
down_proj (the kept MLP channels); the cut columns R stop contributing. ``reconstruct``
compensates, per pruned projection W ``[out, n]`` with input x (over calibration tokens t):
- ``bias`` (FLAP's compensation, for every method): add b = W[:, R] @ mean_t(x_R), x taken
  on the DENSE model (``importance.collect_stats``), so flap's numbers are FLAP's own;
- ``least-squares``: replace W[:, K] by W' and add b' minimising
  sum_t ||W x_t - W' x_t[K] - b'||^2 + lam ||W' - W[:, K]||^2 (a ridge fit of the dense
  projection's output, shrunk toward the plain cut rather than toward 0: a large damp
  gives back the cut, a small one the pure least-squares fit). With z = [x_K; 1] and the
  augmented Gram A = sum_t [x; 1][x; 1]^T, float64, accumulated one calibration chunk at
  a time (activations are never held whole):
  [W' b'] = (W A[:n, K1] + lam [W[:, K] 0]) (A[K1, K1] + lam D)^-1, K1 = K + the bias row,
  D = identity on K and 0 on the bias, lam = damp * mean(diag A[K, K]). Solved by Cholesky; when that fails
  (damp = 0 and a singular Gram: fewer calibration tokens than kept inputs, or dead inputs)
  by the minimum-norm least-squares solution (``torch.linalg.lstsq``, gelsd), and if even
  that is not finite the projection keeps its plain cut (never NaNs).
  Layers are fitted in order, each on the inputs produced by the already pruned and refit
  earlier layers; within a layer o_proj first, then down_proj on the refit attention's
  output. x is the projection's full (dense-width) input on those inputs: the kept units'
  inputs are the same with or without the cut, so one Gram gives both sides.
Removed blocks and untouched projections get nothing. The result is ``{layer: LayerRefit}``
(``types.py``), applied by ``passes.reference.apply_refit_`` (or ``refit_layer_``).
Device (``passes.device``): Grams accumulate and Cholesky solves run on the model's device;
the gelsd fallback runs on the CPU (torch has gelsd there only); refits are CPU tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from prunec.compiler.ir import ModelShape, Reconstruct, damp_for
from prunec.compiler.plan import LayerPlan, Plan
from prunec.passes.methods import importance
from prunec.passes.methods.evaluator import Driver
from prunec.passes.methods.types import LayerRefit, MethodOptions, ProgressEvent, emit
from prunec.passes.reference import apply_layer_plan_, decoder_layers, head_rows, refit_layer_

Refits = dict[int, LayerRefit]


def reconstruct(setting: Reconstruct, damp: float, model: nn.Module, shape: ModelShape,
                plan: Plan, calib: torch.Tensor | None, options: MethodOptions) -> Refits:
    """``{layer: LayerRefit}`` for ``plan`` on ``model`` (empty for ``off`` or no width cut)."""
    if setting is Reconstruct.OFF or not any(_cut(lp) for lp in plan.layers):
        return {}
    assert calib is not None, "checks require a score dataset to reconstruct (P0212)"
    with torch.no_grad():
        return RECONSTRUCTIONS[setting](model, shape, plan, calib, damp, options)


def resolved_damp(damp: float | None, calib: torch.Tensor | None) -> float:
    """The damp a refit on ``calib`` runs with (``damp = auto`` is None: ``ir.damp_for``)."""
    return damp_for(damp, 0 if calib is None else int(calib.numel()))


def with_setting(plan: Plan, setting: Reconstruct, damp: float) -> Plan:
    """``plan`` recording its reconstruction (plan.json, the lock)."""
    if setting is Reconstruct.OFF:
        return replace(plan, reconstruct="off", damp=None)
    return replace(plan, reconstruct=setting.value,
                   damp=damp if setting is Reconstruct.LEAST_SQUARES else None)


def _cut(lp: LayerPlan) -> bool:
    return (lp.kept_heads is not None and not lp.attn_removed) or (
        lp.kept_channels is not None and not lp.mlp_removed)


# ------------------------------------------------------------------------------ bias


def bias_refit(model: nn.Module, shape: ModelShape, plan: Plan, calib: torch.Tensor,
               damp: float, options: MethodOptions) -> Refits:
    """FLAP's compensation: W[:, removed] @ mean(x[removed]) per pruned projection."""
    stats = importance.collect_stats(model, calib, options.batch_size)
    out: Refits = {}
    for layer, lp in zip(decoder_layers(model), plan.layers):
        mlp = attn = None
        if lp.kept_channels is not None and not lp.mlp_removed:
            mlp = _bias(layer.mlp.down_proj.weight, stats[lp.index].mlp.mean,
                        lp.kept_channels, 1)
        if lp.kept_heads is not None and not lp.attn_removed:
            attn = _bias(layer.self_attn.o_proj.weight, stats[lp.index].attn.mean,
                         lp.kept_heads, shape.head_dim)
        if mlp is not None or attn is not None:
            out[lp.index] = LayerRefit(mlp, attn)
    return out


def _bias(weight: torch.Tensor, mean: torch.Tensor, kept: tuple[int, ...],
          width: int) -> torch.Tensor:
    mask = torch.ones(weight.shape[1], dtype=torch.bool)
    for unit_index in kept:
        mask[unit_index * width:(unit_index + 1) * width] = False
    w = weight.detach().double().cpu()[:, mask]  # refits leave the pass on the CPU
    return (w @ mean[mask]).to(weight.dtype)


# --------------------------------------------------------------------- least-squares


class Gram:
    """sum_t [x_t; 1][x_t; 1]^T in float64 over every token a forward pre-hook sees."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.a = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=device)

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        z = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        self.a += z.T @ z


def ridge_fit(a: torch.Tensor, weight: torch.Tensor, cols: torch.Tensor, damp: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W' [out, k], b' [out]) of the module docstring from the augmented Gram ``a``."""
    n, cols = weight.shape[1], cols.to(a.device)
    idx = torch.cat([cols, torch.tensor([n], device=a.device)])
    g = a[idx][:, idx].clone()
    k = len(cols)
    lam = damp * float(g.diagonal()[:k].mean())
    g[range(k), range(k)] += lam
    w = weight.detach().double().to(a.device)
    rhs = w @ a[:n][:, idx]  # [out, k + 1]
    rhs[:, :k] += lam * w[:, cols]
    sol = _solve(g, rhs)
    if sol is None:  # nothing finite: keep the plain cut
        return (weight.detach()[:, cols].cpu().clone(),
                torch.zeros(weight.shape[0], dtype=weight.dtype))
    return sol[:, :k].to(weight.dtype).cpu(), sol[:, k].to(weight.dtype).cpu()


def _solve(g: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor | None:
    """X with X g = rhs (g symmetric): Cholesky, else minimum-norm lstsq, else None."""
    factor, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:
        sol = torch.cholesky_solve(rhs.T, factor).T
        if bool(torch.isfinite(sol).all()):
            return sol
    sol = torch.linalg.lstsq(g.cpu(), rhs.T.cpu(), driver="gelsd").solution.T  # gelsd: CPU
    return sol if bool(torch.isfinite(sol).all()) else None


@contextmanager
def gram_of(linear: nn.Module) -> Iterator[Gram]:
    """A ``Gram`` of ``linear``'s input while the context is open."""
    gram = Gram(int(linear.in_features), linear.weight.device)  # type: ignore[arg-type]
    handle = linear.register_forward_pre_hook(gram)
    try:
        yield gram
    finally:
        handle.remove()


def least_squares_refit(model: nn.Module, shape: ModelShape, plan: Plan, calib: torch.Tensor,
                        damp: float, options: MethodOptions) -> Refits:
    """Ridge refits, layer by layer on the pruned-and-refit earlier layers' outputs."""
    driver = Driver(model, calib, options.batch_size)
    hidden = list(driver.embeds)
    out: Refits = {}
    for n, (layer, lp) in enumerate(zip(decoder_layers(model), plan.layers)):
        work, refit = _fit_layer(layer, lp, shape, driver, hidden, damp)
        if refit != LayerRefit():
            out[lp.index] = refit
        if not (lp.attn_removed and lp.mlp_removed):
            hidden = [driver.run(work, h, c) for c, h in enumerate(hidden)]
        emit(options, ProgressEvent("reconstruct (least-squares)", n + 1, len(plan.layers)))
    return out


def _fit_layer(layer: nn.Module, lp: LayerPlan, shape: ModelShape, driver: Driver,
               hidden: Sequence[torch.Tensor], damp: float) -> tuple[nn.Module, LayerRefit]:
    """The layer pruned and refit (attention first, then the MLP), and its ``LayerRefit``."""
    work: Any = copy.deepcopy(layer)
    attn_plan = LayerPlan(lp.index, attn_removed=lp.attn_removed, kept_heads=lp.kept_heads)
    mlp_plan = LayerPlan(lp.index, mlp_removed=lp.mlp_removed, kept_channels=lp.kept_channels)
    refit = LayerRefit()
    if lp.kept_heads is not None and not lp.attn_removed:
        cols = head_rows(lp.kept_heads, shape.head_dim)
        w, b = _fit(work, lambda m: m.self_attn.o_proj, cols, driver, hidden, damp)
        refit = replace(refit, attn=b, attn_weight=w)
    apply_layer_plan_(work, attn_plan, shape)
    refit_layer_(work, refit, attn_plan, shape)
    if lp.kept_channels is not None and not lp.mlp_removed:
        cols = torch.tensor(lp.kept_channels, dtype=torch.long)
        w, b = _fit(work, lambda m: m.mlp.down_proj, cols, driver, hidden, damp)
        refit = replace(refit, mlp=b, mlp_weight=w)
    apply_layer_plan_(work, mlp_plan, shape)
    refit_layer_(work, LayerRefit(mlp=refit.mlp, mlp_weight=refit.mlp_weight), mlp_plan, shape)
    return work, refit


def _fit(work: Any, pick: Callable[[Any], nn.Linear], cols: torch.Tensor, driver: Driver,
         hidden: Sequence[torch.Tensor], damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    linear = pick(work)
    with gram_of(linear) as gram:
        for chunk, h in enumerate(hidden):
            driver.run(work, h, chunk)
    return ridge_fit(gram.a, linear.weight, cols, damp)


RECONSTRUCTIONS: dict[Reconstruct, Callable[[nn.Module, ModelShape, Plan, torch.Tensor, float,
                                             MethodOptions], Refits]] = {
    Reconstruct.BIAS: bias_refit,
    Reconstruct.LEAST_SQUARES: least_squares_refit,
}

"""Reconstruction after width cuts (``passes.methods.reconstruct``): the ridge refit against
numpy's lstsq, its error against the plain cut, FLAP's bias kept exactly, no NaNs when the
Gram matrix is singular, and the refit weights in the ONNX graph (locked rebuild included)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from method_fixtures import calib_tokens, make_static
from tinymodels import tiny_llama, torch_threads

from prunec.compiler.ir import Reconstruct, StaticMethod, StaticPrune, damp_for
from prunec.passes.methods import MethodOptions, compute_plan
from prunec.passes.methods.lock import read_lock, write_lock
from prunec.passes.methods.reconstruct import ridge_fit
from prunec.passes.reference import (
    apply_plan_,
    apply_refit_,
    decoder_layers,
    head_rows,
    reference_logits,
    relative_error,
    shape_of,
)


def _static(method: StaticMethod, setting: Reconstruct | None, damp: float | None = 0.01,
            **target: Any) -> StaticPrune:
    base = make_static(method, **target) if target else make_static(method, 0.25)
    return dataclasses.replace(base, reconstruct=setting, damp=damp)


def _gram(x: torch.Tensor) -> torch.Tensor:
    z = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    return z.T @ z


def _numpy_ridge(x: np.ndarray, w: np.ndarray, cols: np.ndarray, lam: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """min ||x w^T - x[:, cols] w'^T - b||^2 + lam ||w' - w[:, cols]||^2 by lstsq on the
    stacked system."""
    k = len(cols)
    design = np.hstack([x[:, cols], np.ones((x.shape[0], 1))])
    ridge = np.hstack([np.sqrt(lam) * np.eye(k), np.zeros((k, 1))])
    sol = np.linalg.lstsq(np.vstack([design, ridge]),
                          np.vstack([x @ w.T, np.sqrt(lam) * w[:, cols].T]), rcond=None)[0]
    return sol[:k].T, sol[k]


@pytest.mark.parametrize("damp", [0.0, 0.01, 0.3])
def test_ridge_fit_matches_numpy_lstsq_and_beats_the_plain_cut(damp: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 24, generator=gen, dtype=torch.float64)
    x[:, 3] = 0.6 * x[:, 1] + 0.2 * torch.randn(400, generator=gen, dtype=torch.float64) + 1.0
    w = torch.randn(10, 24, generator=gen, dtype=torch.float64)
    cols = torch.tensor([0, 2, 4, 5, 9, 11, 17, 20])
    a = _gram(x)
    got_w, got_b = ridge_fit(a, w, cols, damp)
    lam = damp * float(a.diagonal()[cols].mean())
    want_w, want_b = _numpy_ridge(x.numpy(), w.numpy(), cols.numpy(), lam)
    assert np.allclose(got_w.numpy(), want_w, atol=1e-8)
    assert np.allclose(got_b.numpy(), want_b, atol=1e-8)
    y = x @ w.T
    refit_err = float(((y - x[:, cols] @ got_w.T - got_b) ** 2).sum())
    cut_err = float(((y - x[:, cols] @ w[:, cols].T) ** 2).sum())
    assert refit_err < cut_err


def test_singular_gram_with_damp_zero_gives_finite_min_norm_fit() -> None:
    """Fewer tokens than kept inputs (rank-deficient Gram), damp = 0: Cholesky fails, the
    minimum-norm lstsq solution still reproduces the outputs, and nothing is NaN."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 20, generator=gen, dtype=torch.float64)
    cols = torch.arange(0, 20, 2)
    got_w, got_b = ridge_fit(_gram(x), w, cols, 0.0)
    assert bool(torch.isfinite(got_w).all()) and bool(torch.isfinite(got_b).all())
    fitted = x[:, cols] @ got_w.T + got_b
    assert float((fitted - x @ w.T).abs().max()) < 1e-6  # 11 unknowns, 6 equations: exact


def _o_proj_inputs(model: Any, calib: torch.Tensor, layer: int) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    o_proj = decoder_layers(model)[layer].self_attn.o_proj
    hook = o_proj.register_forward_pre_hook(
        lambda _m, inp: seen.append(inp[0].reshape(-1, inp[0].shape[-1])))
    with torch.no_grad():
        model.model(calib)
    hook.remove()
    return torch.cat(seen).double()


def test_least_squares_refit_of_the_first_layer_is_the_ridge_solution() -> None:
    """Layer 0 sees the embeddings whatever the plan: its o_proj refit is numpy's ridge
    solution on the dense o_proj inputs, and its error is below the plain cut's."""
    model = tiny_llama(4).double()
    shape, calib = shape_of(model), calib_tokens(samples=8, seq_len=24)
    static = _static(StaticMethod.WANDA_SP, Reconstruct.LEAST_SQUARES, heads=0.5, mlp=0.5)
    result = compute_plan(static, model, shape, calib)
    lp, refit = result.plan.layers[0], result.refit[0]
    assert lp.kept_heads is not None and refit.attn_weight is not None and refit.attn is not None
    x = _o_proj_inputs(model, calib, 0)
    w = decoder_layers(model)[0].self_attn.o_proj.weight.detach().double()
    cols = head_rows(lp.kept_heads, shape.head_dim)
    lam = 0.01 * float((x[:, cols] ** 2).sum(0).mean())
    want_w, want_b = _numpy_ridge(x.numpy(), w.numpy(), cols.numpy(), lam)
    assert np.allclose(refit.attn_weight.numpy(), want_w, atol=1e-7)
    assert np.allclose(refit.attn.numpy(), want_b, atol=1e-7)
    y = x @ w.T
    refit_err = float(((y - x[:, cols] @ refit.attn_weight.T - refit.attn) ** 2).mean())
    cut_err = float(((y - x[:, cols] @ w[:, cols].T) ** 2).mean())
    assert refit_err < cut_err
    assert result.plan.reconstruct == "least-squares" and result.plan.damp == 0.01


def _layer_inputs(model: Any, calib: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
             for layer in decoder_layers(model)]
    reference_logits(model, calib)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("method", [StaticMethod.MAGNITUDE, StaticMethod.WANDA_SP])
@torch.no_grad()
def test_least_squares_lowers_every_refit_layers_output_error(method: StaticMethod) -> None:
    """Each refit layer, fed the inputs the pruned-and-refit earlier layers produce, is
    closer to the dense layer on the calibration data than the plain cut."""
    from prunec.passes.methods.evaluator import Driver

    model, calib = tiny_llama(2), calib_tokens(samples=12, seq_len=32)
    shape = shape_of(model)
    result = compute_plan(_static(method, Reconstruct.LEAST_SQUARES, heads=0.5, mlp=0.5),
                          model, shape, calib)
    assert set(result.refit) == {lp.index for lp in result.plan.layers if lp.kept_channels}
    refit = apply_refit_(apply_plan_(copy.deepcopy(model), result.plan, shape), result.refit,
                         result.plan, shape)
    plain = apply_plan_(copy.deepcopy(model), result.plan, shape)
    driver = Driver(model, calib, calib.shape[0])
    for i, h in enumerate(_layer_inputs(refit, calib)):
        if i not in result.refit:
            continue
        dense_out = driver.run(decoder_layers(model)[i], h, 0)
        err = {name: float((driver.run(decoder_layers(m)[i], h, 0) - dense_out).pow(2).sum())
               for name, m in (("refit", refit), ("plain", plain))}
        assert err["refit"] < err["plain"], (i, err)


def test_bias_on_flap_is_flaps_own_compensation() -> None:
    """flap's default is ``bias``; giving it explicitly changes nothing, ``off`` drops it, and
    another method gets the same compensation for the same plan."""
    model, calib = tiny_llama(3), calib_tokens()
    shape = shape_of(model)
    default = compute_plan(_static(StaticMethod.FLAP, None), model, shape, calib)
    explicit = compute_plan(_static(StaticMethod.FLAP, Reconstruct.BIAS), model, shape, calib)
    off = compute_plan(_static(StaticMethod.FLAP, Reconstruct.OFF), model, shape, calib)
    assert dataclasses.replace(default.plan, decisions=()) == dataclasses.replace(
        explicit.plan, decisions=()) and default.plan.reconstruct == "bias"
    assert set(default.refit) == set(explicit.refit) and default.refit
    for i, r in default.refit.items():
        assert torch.equal(r.mlp, explicit.refit[i].mlp)
        assert torch.equal(r.attn, explicit.refit[i].attn)
        assert r.mlp_weight is None and r.attn_weight is None
    assert not off.refit and off.plan.layers == default.plan.layers
    assert off.plan.reconstruct == "off"


def test_reconstruction_is_in_the_onnx_graph_and_a_locked_rebuild_is_byte_identical(
        tmp_path: Path) -> None:
    import onnxruntime as ort

    from prunec.compiler.ir import Provider
    from prunec.runtime.backends import CompileJob, graph_compile

    model, calib = tiny_llama(5), calib_tokens(samples=8, seq_len=24)
    shape = shape_of(model)
    static = _static(StaticMethod.WANDA_SP, Reconstruct.LEAST_SQUARES, heads=0.5, mlp=0.5)
    first = compute_plan(static, model, shape, calib)
    lock = write_lock(tmp_path / "plan.lock.json", first)
    again = compute_plan(static, model, shape, calib, MethodOptions(lock=read_lock(lock)))
    assert again.from_lock and again.plan == first.plan
    paths = []
    for n, result in enumerate((first, again)):
        path = tmp_path / f"m{n}" / "model.onnx"
        path.parent.mkdir()
        job = CompileJob(model, result.plan, shape, path, 18, None,  # type: ignore[arg-type]
                         refit=result.refit)
        with torch_threads(1):
            graph_compile(job)
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    ids = calib_tokens(samples=2, seq_len=11, seed=9)
    ref = apply_refit_(apply_plan_(copy.deepcopy(model), first.plan, shape), first.refit,
                       first.plan, shape)
    want = reference_logits(ref, ids)
    sess = ort.InferenceSession(str(paths[0]), providers=[Provider.CPU.ort_name])
    got = torch.from_numpy(sess.run(["logits"], {"input_ids": ids.numpy()})[0])
    assert relative_error(got, want) <= 1e-4
    plain = reference_logits(apply_plan_(copy.deepcopy(model), first.plan, shape), ids)
    assert relative_error(plain, want) > 1e-3, "the refit must matter in this test"


def test_damp_auto_resolves_from_the_calibration_tokens_and_is_recorded() -> None:
    """damp = auto (None) runs ``ir.damp_for`` on the score tokens; the plan (and so the
    lock and report) records the number that ran, and fewer tokens get a stronger ridge."""
    model = tiny_llama(4).double()
    shape = shape_of(model)
    damps = []
    for samples in (8, 32):
        calib = calib_tokens(samples=samples, seq_len=64)
        static = _static(StaticMethod.WANDA_SP, Reconstruct.LEAST_SQUARES, damp=None,
                         heads=0.5, mlp=0.5)
        result = compute_plan(static, model, shape, calib)
        assert result.plan.damp == damp_for(None, samples * 64)
        damps.append(result.plan.damp)
    assert damps[0] is not None and damps[1] is not None and damps[0] > damps[1]

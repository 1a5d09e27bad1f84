"""Plan locks (apply without search, refuse when stale) and resumable searches."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from method_fixtures import calib_tokens, make_static
from tinymodels import TinyConfig, tiny_llama

from prunec.compiler.diagnostics import CompileError
from prunec.compiler.ir import StaticMethod
from prunec.passes.methods import MethodOptions, compute_plan
from prunec.passes.methods.lock import read_lock, write_lock
from prunec.passes.reference import decoder_layers, shape_of

CONFIG = TinyConfig(layers=4, hidden=48, intermediate=96, heads=6, kv_heads=2, head_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/passes/conftest.py


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama(9, CONFIG)


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return calib_tokens(4, 16, seed=3)


def _static(params: float = 0.3):
    return make_static(StaticMethod.MULTIPRUNER, params, steps=(12, None),
                       distribution=(0.3, 0.6, 0.1))


def _run(model, calib, static=None, **options):
    return compute_plan(static or _static(), model, shape_of(model), calib,
                        MethodOptions(batch_size=2, **options))


class Interrupt:
    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, step: int) -> None:
        if step >= self.after:
            raise KeyboardInterrupt


def test_resumed_search_reaches_the_uninterrupted_plan(model, calib, tmp_path: Path) -> None:
    straight = _run(model, calib)
    assert len(straight.plan.decisions) > 4
    state = tmp_path / "resume.json"
    with pytest.raises(KeyboardInterrupt):
        _run(model, calib, resume_path=str(state), on_step=Interrupt(3))
    with pytest.raises(KeyboardInterrupt):
        _run(model, calib, resume_path=str(state), on_step=Interrupt(4))
    resumed = _run(model, calib, resume_path=str(state))
    assert resumed.plan == straight.plan
    assert resumed.stats.trajectory == straight.stats.trajectory
    assert resumed.stats.candidate_evaluations == straight.stats.candidate_evaluations


def test_resume_file_of_another_search_is_refused(model, calib, tmp_path: Path) -> None:
    state = tmp_path / "resume.json"
    with pytest.raises(KeyboardInterrupt):
        _run(model, calib, resume_path=str(state), on_step=Interrupt(1))
    with pytest.raises(CompileError) as err:
        _run(model, calib, _static(0.25), resume_path=str(state))
    assert err.value.diagnostics[0].code == "P0705"


def test_lock_applies_without_search(model, calib, tmp_path: Path) -> None:
    first = _run(model, calib)
    path = write_lock(tmp_path / "plan.lock.json", first)
    again = _run(model, calib, lock=read_lock(path))
    assert again.from_lock and again.plan == first.plan
    assert again.stats.trajectory == first.stats.trajectory
    assert dict(again.hashes) == dict(first.hashes)


@pytest.mark.parametrize("change", ["spec", "model", "calib"])
def test_stale_lock_is_refused(model, calib, tmp_path: Path, change: str) -> None:
    path = write_lock(tmp_path / "plan.lock.json", _run(model, calib))
    static, other_model, other_calib = _static(), model, calib
    if change == "spec":
        static = _static(0.2)
    elif change == "model":
        other_model = copy.deepcopy(model)
        with torch.no_grad():
            decoder_layers(other_model)[1].mlp.up_proj.weight[0, 0] += 1e-3
    else:
        other_calib = calib.clone()
        other_calib[0, 0] = (other_calib[0, 0] + 1) % 160
    with pytest.raises(CompileError) as err:
        _run(other_model, other_calib, static, lock=read_lock(path))
    code = {"spec": "P0701", "model": "P0702", "calib": "P0703"}[change]
    assert [d.code for d in err.value.diagnostics] == [code]
    assert err.value.diagnostics[0].span == static.span


def test_flap_lock_round_trips_biases(model, calib, tmp_path: Path) -> None:
    static = make_static(StaticMethod.FLAP, 0.2)
    first = compute_plan(static, model, shape_of(model), calib)
    path = write_lock(tmp_path / "plan.lock.json", first)
    again = compute_plan(static, model, shape_of(model), calib,
                         MethodOptions(lock=read_lock(path)))
    assert again.plan == first.plan and set(again.refit) == set(first.refit)
    for i, b in first.refit.items():
        assert torch.equal(again.refit[i].mlp, b.mlp)  # recomputed, bit for bit


def test_unreadable_lock_is_a_diagnostic(tmp_path: Path) -> None:
    path = tmp_path / "plan.lock.json"
    path.write_text("{not json")
    with pytest.raises(CompileError) as err:
        read_lock(path)
    assert err.value.diagnostics[0].code == "P0704"

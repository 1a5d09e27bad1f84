"""Static pruning methods: one entry point, ``compute_plan``, dispatching on the spec's method.

Methods (docs/algorithms.md: §1 the searches, §2 the wanda-sp and FLAP baselines):
- one-shot width methods (``oneshot.py``): ``magnitude``, ``wanda-sp``, ``flap``;
- greedy searches scored by calibration perplexity (``search.py``): ``multipruner`` (blocks,
  then MLP channel groups, then KV groups of heads) and ``blockpruner`` (blocks only).

Invariants:
- a method never modifies ``model`` (searches work on copies of single layers);
- every ``Decision`` carries the spec line of the field behind it (the target's line);
- protected layers (``StaticPrune.protect``) are never changed;
- passes report and never print: progress goes through ``MethodOptions.progress``;
- the reconstruction (``StaticPrune.reconstruction``: off | bias | least-squares,
  ``reconstruct.py``) runs after the plan, computed or locked, in ``compute_plan`` only: the
  search scores candidates WITHOUT it (final plan only; docs/language.md says why). Tensors
  cannot live in a ``Plan``: they are ``MethodResult.refit``, layer index -> ``LayerRefit``
  (reference semantics: ``passes.reference.apply_refit_``; the graph side carries them as
  o_proj / down_proj weights and biases); the plan records the setting;
- with ``MethodOptions.lock`` the locked plan is applied after its hashes are checked,
  without any search (``lock.py``); a stale lock is a ``CompileError`` (P07xx). The refit is
  recomputed from the same calibration tokens (deterministic on CPU), not stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from prunec.compiler.ir import StaticMethod
from prunec.passes.methods import lock as locks
from prunec.passes.methods.oneshot import run_oneshot
from prunec.passes.methods.reconstruct import reconstruct, resolved_damp, with_setting
from prunec.passes.methods.search import run_search
from prunec.passes.methods.types import (
    LayerRefit,
    MethodOptions,
    MethodResult,
    ProgressEvent,
    SearchStats,
    StepScore,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunec.compiler.ir import ModelShape, StaticPrune

__all__ = [
    "METHODS",
    "LayerRefit",
    "MethodOptions",
    "MethodResult",
    "ProgressEvent",
    "SearchStats",
    "StepScore",
    "compute_plan",
]


def _oneshot(static: StaticPrune, model: nn.Module, shape: ModelShape,
             calib: torch.Tensor | None, options: MethodOptions,
             hashes: Mapping[str, str]) -> MethodResult:
    return run_oneshot(static, model, shape, calib, options)


MethodFn = Callable[["StaticPrune", "nn.Module", "ModelShape", "torch.Tensor | None",
                     MethodOptions, Mapping[str, str]], MethodResult]

# One row per ``prune METHOD``: the function that computes its plan.
METHODS: dict[StaticMethod, MethodFn] = {
    StaticMethod.MULTIPRUNER: run_search,
    StaticMethod.BLOCKPRUNER: run_search,
    StaticMethod.MAGNITUDE: _oneshot,
    StaticMethod.WANDA_SP: _oneshot,
    StaticMethod.FLAP: _oneshot,
}


def compute_plan(static: StaticPrune, model: nn.Module, shape: ModelShape,
                 calib: torch.Tensor | None, options: MethodOptions | None = None
                 ) -> MethodResult:
    """The static plan for ``static`` on ``model``: from the lock if given, else computed."""
    options = options or MethodOptions()
    hashes = locks.current_hashes(static, model, calib, options)
    if options.lock is not None:
        result = locks.apply_lock(static, options.lock, hashes)
    else:
        result = METHODS[static.method](static, model, shape, calib, options, hashes)
    setting, damp = static.reconstruction, resolved_damp(static.damp, calib)
    refit = reconstruct(setting, damp, model, shape, result.plan, calib, options)
    plan = with_setting(result.plan, setting, damp)
    return replace(result, plan=plan, refit=MappingProxyType(refit)).with_hashes(hashes)

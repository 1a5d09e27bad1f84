"""Static pruning methods: one entry point, ``compute_plan``, dispatching on the spec's method.

Methods (see ../shared/docs/algorithms.md):
- one-shot width methods (``oneshot.py``): ``magnitude``, ``wanda-sp``, ``flap``;
- greedy searches scored by calibration perplexity (``search.py``): ``multipruner`` (blocks,
  then MLP channel groups, then KV groups of heads) and ``blockpruner`` (blocks only).

Invariants:
- a method never modifies ``model`` (searches work on copies of single layers);
- every ``Decision`` carries the spec line of the field behind it (the target's line);
- protected layers (``StaticPrune.protect``) are never changed;
- passes report and never print: progress goes through ``MethodOptions.progress``;
- FLAP's bias compensation cannot live in a ``Plan`` (no tensors there): it is returned as
  ``MethodResult.biases``, layer index -> ``LayerBias(mlp, attn)``, ``[hidden]`` tensors to ADD
  to down_proj's / o_proj's output after the plan is applied (reference semantics:
  ``passes.reference.apply_output_biases_``; the graph side adds them as Linear biases);
- with ``MethodOptions.lock`` the locked plan is applied after its hashes are checked,
  without any search (``lock.py``); a stale lock is a ``CompileError`` (P07xx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunec.passes.methods.types import (
    LayerBias,
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
    "LayerBias",
    "MethodOptions",
    "MethodResult",
    "ProgressEvent",
    "SearchStats",
    "StepScore",
    "compute_plan",
]


def compute_plan(static: StaticPrune, model: nn.Module, shape: ModelShape,
                 calib: torch.Tensor | None, options: MethodOptions | None = None
                 ) -> MethodResult:
    """The static plan for ``static`` on ``model``: from the lock if given, else computed."""
    from prunec.compiler.ir import StaticMethod
    from prunec.passes.methods import lock as locks

    options = options or MethodOptions()
    hashes = locks.current_hashes(static, model, calib, options)
    if options.lock is not None:
        return locks.apply_lock(static, options.lock, hashes)
    if static.method in (StaticMethod.MULTIPRUNER, StaticMethod.BLOCKPRUNER):
        from prunec.passes.methods.search import run_search

        result = run_search(static, model, shape, calib, options, hashes)
    else:
        from prunec.passes.methods.oneshot import run_oneshot

        result = run_oneshot(static, model, shape, calib, options)
    return result.with_hashes(hashes)

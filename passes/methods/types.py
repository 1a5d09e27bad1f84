"""The data a static method takes and returns: options, progress events, results, statistics.

Invariants: everything here is a frozen dataclass; tensors appear only in ``LayerRefit``
(the reconstruction of one layer: output biases ``[hidden]`` to add, refit weights
``[hidden, kept]`` for the kept columns in the plan's order); ``SearchStats.layer_forwards`` counts
decoder-layer module calls over the WHOLE calibration set (one call on every calibration
sequence = 1 unit; a layer whose attention and MLP are both removed is never called).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from prunec.compiler.plan import Plan

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ProgressEvent:
    """One tick: ``done`` of ``total`` units of ``task`` (a stage or a candidate sweep)."""

    task: str
    done: int
    total: int
    score: float | None = None
    message: str = ""


ProgressFn = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class MethodOptions:
    """How to run a method (not what to compute: that is the ``StaticPrune``).

    mode: "fast" (prefix-cached per-layer evaluation) or "reference" (whole model per candidate).
    resume_path: the search writes its state there after every step and continues from it.
    lock: a parsed plan lock (``lock.read_lock``) to apply instead of computing.
    spec_hash: sha256 of the spec's relevant parts (``lock.spec_hash``); None hashes ``static``.
    on_step: called after each committed search step with the step number (tests interrupt).
    batch_size: calibration sequences per forward call; cache_mb: fast-engine cache budget.
    workers / ray_address: a search's candidates are scored by ``workers`` Ray actors (a local
    Ray, or the cluster at ``ray_address``; ``distributed.py``); 1 and None: in this process.
    """

    mode: str = "fast"
    progress: ProgressFn | None = None
    resume_path: str | None = None
    lock: Any = None
    spec_hash: str | None = None
    on_step: Callable[[int], None] | None = None
    batch_size: int = 8
    cache_mb: int = 3072
    workers: int = 1
    ray_address: str | None = None


@dataclass(frozen=True)
class StepScore:
    step: int
    stage: str
    score: float
    params: int


@dataclass(frozen=True)
class SearchStats:
    layer_forwards: float = 0.0
    candidate_evaluations: int = 0
    wall_s: float = 0.0
    dense_score: float | None = None
    trajectory: tuple[StepScore, ...] = ()
    mode: str = "none"


@dataclass(frozen=True)
class LayerRefit:
    """One layer's reconstruction (``reconstruct.py``), applied with ``passes.reference.
    apply_refit_``: ``mlp`` / ``attn`` are ``[hidden]`` biases to ADD to down_proj's / o_proj's
    output; ``mlp_weight`` / ``attn_weight`` (least-squares only) REPLACE the kept columns of
    down_proj / o_proj, ``[hidden, kept]`` in the order of the plan's kept channels / heads."""

    mlp: torch.Tensor | None = None
    attn: torch.Tensor | None = None
    mlp_weight: torch.Tensor | None = None
    attn_weight: torch.Tensor | None = None


@dataclass(frozen=True)
class MethodResult:
    plan: Plan
    stats: SearchStats = SearchStats()
    refit: Mapping[int, LayerRefit] = field(default_factory=lambda: MappingProxyType({}))
    hashes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    from_lock: bool = False

    def with_hashes(self, hashes: Mapping[str, str]) -> MethodResult:
        return replace(self, hashes=MappingProxyType(dict(hashes)))


def emit(options: MethodOptions, event: ProgressEvent) -> None:
    if options.progress is not None:
        options.progress(event)

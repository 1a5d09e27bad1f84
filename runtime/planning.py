"""The static plan of a spec: its manual plan, its static method's result, or dense.

``make_plan(spec, loaded, data, options)`` picks the plan's source from the spec (a
``plan { ... }`` block, else a ``prune METHOD`` block, else none) and looks its planner up in
``PLANNERS``, a plain table; the methods themselves are ``prunec.passes.methods``
(``compute_plan``). A manual plan is resolved with weight-magnitude importance
(``compiler.manual``); its ``reconstruct`` runs ``passes.methods.reconstruct`` on its
``score`` dataset (the result is a ``MethodResult`` without hashes: no lock is written). A method result's plan is validated against the model; an invalid
plan is a prunec bug (``RuntimeError``), not a user error.

Planning never touches build state on disk: a search writes its progress to
``PlanOptions.state`` only when the caller gives one (the build does, beside the artifact;
``prunec plan show`` does not), and never deletes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.ir import ManualPlan, Reconstruct, Spec
from prunec.compiler.plan import Plan
from prunec.runtime.jsonio import jsonable


@dataclass(frozen=True)
class PlanOptions:
    progress: Any = None  # a rich Progress the method draws its tasks on, or None
    lock: Path | None = None  # --lock plan.lock.json: apply a locked plan, no search
    batch_size: int = 4  # calibration sequences per forward pass
    state: Path | None = None  # where a search saves (and resumes) its state; None: nowhere
    workers: int = 1  # Ray actors scoring a search's candidates (1: in this process)
    ray_address: str | None = None  # the Ray cluster to run them on (None: a local Ray)


Planned = tuple[Plan, Any]  # (the plan, the method's MethodResult or None)
Planner = Callable[[Spec, Any, dict[str, Any], PlanOptions], Planned]


def plan_source(spec: Spec) -> str:
    """"manual", "method" or "dense": the spec block the plan comes from."""
    if spec.plan is not None:
        return "manual"
    return "method" if spec.static is not None else "dense"


def make_plan(spec: Spec, loaded: Any, data: dict[str, Any], options: PlanOptions) -> Planned:
    """The plan (and the method's result, if a method ran); see the module docstring."""
    return PLANNERS[plan_source(spec)](spec, loaded, data, options)


def manual_plan(spec: Spec, loaded: Any, data: dict[str, Any], options: PlanOptions) -> Planned:
    from prunec.compiler.manual import resolve_manual_plan
    from prunec.passes.methods.importance import magnitude_importance

    assert spec.plan is not None
    importance = magnitude_importance(loaded.model, loaded.shape)
    plan = resolve_manual_plan(spec.plan, loaded.shape, importance)
    if spec.plan.reconstruct is Reconstruct.OFF:
        return plan, None
    result = manual_refit(spec.plan, plan, loaded, data, options)
    return result.plan, result


def manual_refit(manual: ManualPlan, plan: Plan, loaded: Any, data: dict[str, Any],
                 options: PlanOptions) -> Any:
    """A manual plan's reconstruction, as a ``MethodResult`` (no hashes, so no lock)."""
    import time

    from prunec.passes.methods import MethodOptions, MethodResult, SearchStats
    from prunec.passes.methods.reconstruct import reconstruct, resolved_damp, with_setting

    start = time.perf_counter()
    progress = method_progress(options.progress) if options.progress is not None else None
    method_options = MethodOptions(progress=progress, batch_size=options.batch_size)
    calib = data.get(manual.score_dataset or "")
    damp = resolved_damp(manual.damp, calib)
    refit = reconstruct(manual.reconstruct, damp, loaded.model, loaded.shape, plan, calib,
                        method_options)
    plan = with_setting(plan, manual.reconstruct, damp)
    stats = SearchStats(wall_s=time.perf_counter() - start, mode="manual")
    return MethodResult(plan, stats, refit)


def dense_plan(spec: Spec, loaded: Any, data: dict[str, Any], options: PlanOptions) -> Planned:
    return Plan.dense(loaded.shape), None


def method_plan(spec: Spec, loaded: Any, data: dict[str, Any], options: PlanOptions) -> Planned:
    """Run ``prunec.passes.methods.compute_plan`` (or apply the lock)."""
    from prunec.passes.methods import MethodOptions, compute_plan
    from prunec.passes.methods.lock import read_lock, spec_hash

    static = spec.static
    assert static is not None
    lock = read_lock(options.lock, static.span) if options.lock is not None else None
    state = None if lock is not None or options.state is None else str(options.state)
    progress = method_progress(options.progress) if options.progress is not None else None
    method_options = MethodOptions(progress=progress, lock=lock, spec_hash=spec_hash(spec),
                                   batch_size=options.batch_size, resume_path=state,
                                   workers=options.workers, ray_address=options.ray_address)
    calib = data.get(static.score_dataset) if static.score_dataset else None
    result = compute_plan(static, loaded.model, loaded.shape, calib, method_options)
    problems = result.plan.validate(loaded.shape)
    if problems:
        raise RuntimeError(f"method {static.method.value} produced an invalid plan: "
                           + "; ".join(problems))
    return result.plan, result


PLANNERS: dict[str, Planner] = {"manual": manual_plan, "method": method_plan,
                                "dense": dense_plan}


def method_progress(progress: Any) -> Any:
    """A ``MethodOptions.progress`` callback drawing each task on our rich Progress."""
    tasks: dict[str, Any] = {}

    def update(event: Any) -> None:
        if event.task not in tasks:
            tasks[event.task] = progress.add_task(event.task, total=event.total)
        label = event.task if event.score is None else f"{event.task} (ppl {event.score:.3f})"
        progress.update(tasks[event.task], completed=event.done, total=event.total,
                        description=label)

    return update


def method_json(result: Any) -> dict[str, Any]:
    """``report.json``'s ``method_info`` ({} when no method ran)."""
    if result is None:
        return {}
    return {"from_lock": bool(result.from_lock), "stats": jsonable(result.stats),
            "reconstruct": {"setting": result.plan.reconstruct, "damp": result.plan.damp},
            "refit_layers": sorted(int(k) for k in result.refit)}


def method_refit(result: Any) -> Any:
    """The reconstruction ({layer: LayerRefit}) of the plan's method, or None."""
    return getattr(result, "refit", None) or None

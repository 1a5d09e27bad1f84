"""A search's candidate scoring spread over Ray actors (``prunec build --workers N`` or
``--ray-address ADDR``).

Ray is optional (the ``distributed`` extra) and imported lazily: ``prunec`` imports without it,
and asking for workers without it is P0706.

Invariant: the plan is the single-process plan, bit for bit. The coordinator
(``search.run_search``) keeps the greedy loop, the stage order and the selection rule (argmin
over the gathered scores, in candidate order); ``RayEngine`` only stands in for the local
engine behind ``evaluator.Engine``. How:
- the model goes into Ray's object store once (``ray.put``; the actors of a node share it);
  each actor builds the local engine the in-process path builds (``search.make_engine``:
  same driver, chunks and prefix caches) and runs torch on one thread, so it computes the
  same float operations as the in-process search;
- a step's candidates are dealt by layer (layer i to actor i mod N), so a candidate meets
  the suffix states its actor cached for it in earlier steps; the committed candidate is
  broadcast with the next step's batches, every actor applying it before it scores;
- an actor that dies (``RayActorError``) is replaced by a new one built from the committed
  plan, which scores the lost batch again; after ``max_restarts`` replacements in one search
  the search stops with P0706.
Accounting: ``evaluations`` counts candidates (as in process); ``layer_forwards`` is the work
the actors did (each rebuilds its prefix states, so more than in process).
Ray's logs stay out of the terminal (``log_to_driver=False``, error-level logging) and out
of the artifact and the working directory: a local Ray keeps its session files under the
system temporary directory (``SESSION_DIR``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from prunec.compiler.diagnostics import CompileError, user_error
from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import LayerPlan, Plan
from prunec.passes.methods.evaluator import Counters, Driver, Engine
from prunec.passes.methods.types import MethodOptions

SESSION_DIR = os.path.join(tempfile.gettempdir(), "prunec-ray")
INSTALL_HINT = "pip install 'prunec[distributed]' (Ray), or build with --workers 1"


def wanted(workers: int, ray_address: str | None) -> bool:
    """Whether ``--workers`` / ``--ray-address`` ask for Ray actors (else: in process)."""
    return workers > 1 or ray_address is not None


def require_ray() -> Any:
    """The ``ray`` module; P0706 when it is not installed."""
    try:
        import ray
    except ImportError:
        raise user_error("P0706", "--workers / --ray-address need Ray, which is not installed",
                         "--workers", hint=INSTALL_HINT) from None
    return ray


def connect(options: MethodOptions) -> bool:
    """Join ``options.ray_address`` or start a local Ray with ``workers`` CPU slots; True when
    this call started Ray (the caller shuts it down). Ray already running: used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR,
             "include_dashboard": False}
    try:
        if options.ray_address is not None:
            ray.init(address=options.ray_address, **quiet)
        else:
            ray.init(num_cpus=options.workers, _temp_dir=SESSION_DIR, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.ray_address or "--workers"
        raise user_error("P0706", f"cannot start or join Ray: {exc}", where,
                         hint="check --ray-address (`ray status` on the head node)") from None
    return True


def worker_count(options: MethodOptions, ray: Any) -> int:
    """``--workers``; with only ``--ray-address``: one per GPU of the cluster, else per CPU."""
    if options.workers > 1 or options.ray_address is None:
        return options.workers
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 0) or resources.get("CPU", 1)))


class Worker:
    """One actor: the model, the calibration chunks and a local engine, on one torch thread."""

    def __init__(self, model: nn.Module, shape: ModelShape, calib: torch.Tensor, plan: Plan,
                 options: MethodOptions) -> None:
        from prunec.passes.methods.search import make_engine  # search imports this module

        torch.set_num_threads(1)
        driver = Driver(model, calib, options.batch_size)
        self.engine = make_engine(options, model, shape, driver, plan)
        self.dense = self.engine.current()
        self.reported = 0.0

    def current(self) -> tuple[float, float]:
        return self.dense, self._forwards()

    def score(self, commit: LayerPlan | None, layers: list[LayerPlan]
              ) -> tuple[list[float], float]:
        """Apply the last committed candidate (if any), then score ``layers`` in order;
        returns the scores and the layer-forwards run since the last report."""
        if commit is not None:
            self.engine.commit(commit)
        return [self.engine.score(lp) for lp in layers], self._forwards()

    def _forwards(self) -> float:
        total = self.engine.counters.layer_forwards
        delta, self.reported = total - self.reported, total
        return delta


@dataclass
class Pool:
    """The actors and what a replacement needs: the model in the object store, the rest."""

    ray: Any
    spawn_args: tuple[Any, ...]
    actor_class: Any
    actors: list[Any]
    started_ray: bool


class RayEngine(Engine):
    """Scores candidates on Ray actors (see the module docstring)."""

    def __init__(self, model: nn.Module, shape: ModelShape, calib: torch.Tensor, plan: Plan,
                 options: MethodOptions) -> None:
        ray = require_ray()
        started = connect(options)
        n = worker_count(options, ray)
        local = replace(options, progress=None, on_step=None, lock=None, resume_path=None,
                        workers=1, ray_address=None)
        gpus = _gpus_per_actor(model, ray, n)
        actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(Worker)
        args = (ray.put(model), shape, calib, local)
        self.pool = Pool(ray, args, actor_class, [], started)
        self.plan = plan
        self.pending: LayerPlan | None = None  # committed, not yet sent
        self.counters, self.restarts, self.max_restarts = Counters(), 0, max(3, n)
        self.pool.actors = [self._spawn() for _ in range(n)]

    def _spawn(self) -> Any:
        model, shape, calib, local = self.pool.spawn_args
        return self.pool.actor_class.remote(model, shape, calib, self.plan, local)

    def current(self) -> float:
        dense, forwards = self._get(0, lambda actor: actor.current.remote())
        for a in range(1, len(self.pool.actors)):
            self.counters.layer_forwards += self._get(a, lambda actor: actor.current.remote())[1]
        self.counters.layer_forwards += forwards
        return float(dense)

    def score(self, lp: LayerPlan) -> float:
        return next(self.score_all([lp]))

    def score_all(self, layers: Sequence[LayerPlan]) -> Iterator[float]:
        """Every actor gets its share (maybe none) with the pending commit; the scores come
        back in the order of ``layers``."""
        n = len(self.pool.actors)
        shares = [[j for j, lp in enumerate(layers) if lp.index % n == a] for a in range(n)]
        commit, self.pending = self.pending, None
        refs = [actor.score.remote(commit, [layers[j] for j in share])
                for actor, share in zip(self.pool.actors, shares)]
        out: list[float] = [0.0] * len(layers)
        for a, share in enumerate(shares):
            batch = [layers[j] for j in share]
            scores, forwards = self._get(
                a, lambda actor, batch=batch: actor.score.remote(None, batch), refs[a])
            self.counters.layer_forwards += forwards
            for j, s in zip(share, scores):
                out[j] = float(s)
        self.counters.evaluations += len(layers)
        return iter(out)

    def commit(self, lp: LayerPlan) -> None:
        self.plan = self.plan.with_layer(lp)
        self.pending = lp

    def _get(self, a: int, call: Any, ref: Any = None) -> Any:
        """The result of ``call(actor a)`` (or of ``ref``, already sent to it); a dead actor
        is replaced from the committed plan and ``call`` sent to the new one."""
        ray = self.pool.ray
        ref = call(self.pool.actors[a]) if ref is None else ref
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._replace(a, exc)
                ref = call(self.pool.actors[a])

    def _replace(self, a: int, exc: Exception) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise _died(self.restarts, exc)
        self.pool.ray.kill(self.pool.actors[a], no_restart=True)
        self.pool.actors[a] = self._spawn()

    def close(self) -> None:
        for actor in self.pool.actors:
            self.pool.ray.kill(actor, no_restart=True)
        self.pool.actors = []
        if self.pool.started_ray:
            self.pool.ray.shutdown()


def _gpus_per_actor(model: nn.Module, ray: Any, n: int) -> float:
    """One GPU per actor for a model on CUDA (a share of one when the GPUs are fewer)."""
    if next(model.parameters()).device.type != "cuda":
        return 0.0
    total = float(ray.cluster_resources().get("GPU", 0.0))
    return min(1.0, total / n) if total else 0.0


def _died(count: int, exc: Exception) -> CompileError:
    return user_error("P0706", f"Ray workers died {count} times in one search; last: "
                      f"{type(exc).__name__}", "--workers",
                      hint="check the workers' memory (`ray status`), or use fewer workers")

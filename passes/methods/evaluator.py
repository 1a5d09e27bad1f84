"""Calibration perplexity of candidate plans: a fast prefix-cached engine and a reference one.

Score: perplexity = exp(mean over calibration sequences of the sequence's mean token NLL),
computed in fixed chunks of ``batch_size`` sequences (the same chunks in both engines, so
both run bit-identical kernels and choose the same candidates).

A candidate is one layer's new ``LayerPlan`` on top of the committed plan. The engines:
- ``ReferenceEngine``: deep-copies the model, applies the candidate plan with
  ``passes.reference.apply_plan_`` and runs the whole model (L layer-forwards per candidate);
- ``FastEngine``: exact, with three caches.
  1. committed prefix: the hidden states entering every layer under the committed plan; a
     candidate at layer i starts from layer i's cached input (layers < i are unchanged);
  2. candidate suffixes: while a candidate at layer i runs, the states entering layers m > i
     are kept (every ``stride``-th layer, within ``cache_mb``). After a commit at layer j they
     stay valid for candidates at i < j and layers m <= j, so the candidate restarts at the
     last kept layer <= j instead of at i. Stores of candidates at layers >= j are dropped;
  3. the winner's suffix states become the new committed prefix (no recomputation).
  Layers whose attention and MLP are both removed are identities and are not run.
Accounting: ``layer_forwards`` counts decoder-layer calls, 1 = one layer over the whole
calibration set; ``evaluations`` counts candidate scores (each ends in one lm_head pass).
Both engines are ``Engine``s: a search scores a step's candidates with ``score_all`` (in list
order) and ends with ``close``; ``passes.methods.distributed.RayEngine`` spreads them over
Ray actors that each hold one of these engines.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import LayerPlan, Plan
from prunec.passes.device import on_model
from prunec.passes.reference import (
    apply_layer_plan_,
    apply_plan_,
    decoder_layers,
    sequence_nll,
)

Chunks = list[torch.Tensor]


class Driver:
    """Runs single decoder layers on the calibration chunks, as ``LlamaModel.forward`` does."""

    def __init__(self, model: Any, calib: torch.Tensor, batch_size: int) -> None:
        from transformers.masking_utils import create_causal_mask

        self.model, calib = model, on_model(model, calib)  # work where the model is
        self.ids = [calib[s:s + batch_size] for s in range(0, calib.shape[0], batch_size)]
        self.weights = [c.shape[0] / calib.shape[0] for c in self.ids]
        positions = torch.arange(calib.shape[1], device=calib.device).unsqueeze(0)
        with torch.no_grad():
            self.embeds = [model.model.embed_tokens(c) for c in self.ids]
            self.rotary = model.model.rotary_emb(self.embeds[0], position_ids=positions)
        self.positions = positions
        self.masks = [create_causal_mask(config=model.config, inputs_embeds=e,
                                         attention_mask=None, past_key_values=None,
                                         position_ids=positions) for e in self.embeds]

    def run(self, layer: nn.Module, h: torch.Tensor, chunk: int) -> torch.Tensor:
        out: torch.Tensor = layer(h, attention_mask=self.masks[chunk],
                                  position_embeddings=self.rotary, position_ids=self.positions)
        return out

    def nll(self, hidden: torch.Tensor, chunk: int) -> torch.Tensor:
        """Per-sequence mean NLL (float64) of a chunk from the last layer's output."""
        return head_nll(self.model, self.model.model.norm(hidden), self.ids[chunk])


def head_nll(model: Any, normed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean NLL (float64) of ``ids`` from the final-norm hidden states."""
    return sequence_nll(model.lm_head(normed), ids)


def perplexity(per_sequence: list[torch.Tensor]) -> float:
    return math.exp(float(torch.cat(per_sequence).mean()))


def is_identity(lp: LayerPlan) -> bool:
    return lp.attn_removed and lp.mlp_removed


@dataclass
class Counters:
    layer_forwards: float = 0.0
    evaluations: int = 0


class Engine:
    """What a search needs of an engine: ``current``, ``score``, ``commit`` (each subclass),
    ``score_all`` (scores in list order; here one ``score`` after another) and ``close``."""

    counters: Counters

    def current(self) -> float:
        raise NotImplementedError

    def score(self, lp: LayerPlan) -> float:
        raise NotImplementedError

    def commit(self, lp: LayerPlan) -> None:
        raise NotImplementedError

    def score_all(self, layers: Sequence[LayerPlan]) -> Iterator[float]:
        return (self.score(lp) for lp in layers)

    def close(self) -> None:
        """Release what the engine holds beyond memory (worker processes); nothing here."""


class ReferenceEngine(Engine):
    """Whole-model evaluation of every candidate on a pruned deep copy (the semantics)."""

    def __init__(self, model: Any, shape: ModelShape, driver: Driver, plan: Plan) -> None:
        self.model, self.shape, self.driver, self.plan = model, shape, driver, plan
        self.counters = Counters()

    def current(self) -> float:
        return self._score(self.plan)

    def score(self, lp: LayerPlan) -> float:
        self.counters.evaluations += 1
        return self._score(self.plan.with_layer(lp))

    def commit(self, lp: LayerPlan) -> None:
        self.plan = self.plan.with_layer(lp)

    @torch.no_grad()
    def _score(self, plan: Plan) -> float:
        pruned = apply_plan_(copy.deepcopy(self.model), plan, self.shape)
        out = []
        for chunk, ids in enumerate(self.driver.ids):
            hidden = pruned.model(ids, use_cache=False).last_hidden_state
            out.append(head_nll(pruned, hidden, ids))
        self.counters.layer_forwards += self.shape.n_layers
        return perplexity(out)


class FastEngine(Engine):
    """Exact prefix/suffix-cached evaluation (see the module docstring)."""

    def __init__(self, model: nn.Module, shape: ModelShape, driver: Driver, plan: Plan,
                 cache_mb: int) -> None:
        self.shape, self.driver, self.plan = shape, driver, plan
        self.base: list[nn.Module] = decoder_layers(model)
        self.counters = Counters()
        self.work = [self._module(lp) for lp in plan.layers]
        self.stores: dict[LayerPlan, dict[int, Chunks]] = {}
        self.modules: dict[LayerPlan, nn.Module] = {}
        state = sum(e.numel() * e.element_size() for e in driver.embeds)
        need = shape.n_layers * shape.n_layers * state  # ~2L candidates x L/2 states each
        self.stride = max(1, math.ceil(need / max(1, cache_mb * 2**20)))
        self.inputs: list[Chunks] = []

    def _module(self, lp: LayerPlan) -> nn.Module:
        if lp == LayerPlan(lp.index):
            return self.base[lp.index]
        layer: nn.Module = copy.deepcopy(self.base[lp.index])
        with torch.no_grad():
            apply_layer_plan_(layer, lp, self.shape)
        return layer

    @torch.no_grad()
    def current(self) -> float:
        """Score of the committed plan; (re)builds the committed prefix cache."""
        self.inputs = [[] for _ in range(self.shape.n_layers)]
        out = []
        for chunk, h in enumerate(self.driver.embeds):
            for m in range(self.shape.n_layers):
                self.inputs[m].append(h)
                h = self._run(m, self.work[m], h, chunk)
            out.append(self.driver.nll(h, chunk))
        return perplexity(out)

    def _run(self, m: int, module: nn.Module, h: torch.Tensor, chunk: int) -> torch.Tensor:
        """Committed layer ``m`` (identities are skipped)."""
        if is_identity(self.plan.layers[m]):
            return h
        return self._count_run(module, h, chunk)

    @torch.no_grad()
    def score(self, lp: LayerPlan) -> float:
        self.counters.evaluations += 1
        i = lp.index
        module = self.modules.get(lp)
        if module is None:
            module = self.modules[lp] = self._module(lp)
        n = len(self.driver.ids)
        store = {m: s for m, s in self.stores.get(lp, {}).items() if len(s) == n}
        self.stores[lp] = store
        start = max(store, default=i)
        identity = is_identity(lp)
        out = []
        for chunk in range(n):
            h = store[start][chunk] if start > i else self.inputs[i][chunk]
            for m in range(start, self.shape.n_layers):
                if m > i and (m - i) % self.stride == 0:
                    store.setdefault(m, [])
                    if len(store[m]) == chunk:
                        store[m].append(h)
                if m == i:
                    h = h if identity else self._count_run(module, h, chunk)
                else:
                    h = self._run(m, self.work[m], h, chunk)
            out.append(self.driver.nll(h, chunk))
        return perplexity(out)

    def _count_run(self, module: nn.Module, h: torch.Tensor, chunk: int) -> torch.Tensor:
        self.counters.layer_forwards += self.driver.weights[chunk]
        return self.driver.run(module, h, chunk)

    @torch.no_grad()
    def commit(self, lp: LayerPlan) -> None:
        i = lp.index
        self.plan = self.plan.with_layer(lp)
        self.work[i] = self.modules.get(lp) or self._module(lp)
        store = self.stores.get(lp, {})
        for m in range(i + 1, self.shape.n_layers):
            if m in store and len(store[m]) == len(self.driver.ids):
                self.inputs[m] = store[m]
                continue
            self.inputs[m] = [self._run(m - 1, self.work[m - 1], h, c)
                              for c, h in enumerate(self.inputs[m - 1])]
        self._invalidate(i)

    def _invalidate(self, j: int) -> None:
        for key in list(self.stores):
            if key.index >= j:
                del self.stores[key]
                self.modules.pop(key, None)
            else:
                self.stores[key] = {m: s for m, s in self.stores[key].items() if m <= j}

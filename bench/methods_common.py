"""Shared set-up for the static-method benchmarks: the demo model, KJV token batches, IR.

Loads SmolLM2-135M-Instruct through ``prunec.runtime.models`` and tokenises the vendored
KJV slices through ``prunec.runtime.data`` (calibration: specs/data/kjv-calib.txt, held-out
evaluation: specs/data/kjv-eval.txt), and evaluates perplexity with PyTorch modules
(``passes.reference.apply_plan_`` + FLAP biases) -- the same definition the search scores.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    DataFormat,
    DatasetDecl,
    Distribution,
    DType,
    LayerSelector,
    ModelDecl,
    ModelSource,
    Scope,
    SelectorKind,
    StaticMethod,
    StaticPrune,
    Steps,
    Target,
    WidthImportance,
)
from prunec.passes.methods import MethodResult
from prunec.passes.methods.evaluator import head_nll
from prunec.passes.reference import apply_plan_, apply_refit_

ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = ROOT / "specs"
SPAN = Span("bench", 1, 1, 1, 1)


def load_demo() -> Any:
    from prunec.runtime.models import load_model

    return load_model(ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, SPAN), SPEC_DIR)


def tokens(tokenizer: Any, file: str, samples: int, seq_len: int) -> torch.Tensor:
    from prunec.runtime.data import load_dataset

    decl = DatasetDecl(file, DataFormat.TEXT, (f"data/{file}",), None, samples, seq_len, 0,
                       None, SPAN)
    return load_dataset(decl, SPEC_DIR, tokenizer)


def static(method: StaticMethod, params: float, mlp_step: int = 192,
           distribution: tuple[float, float, float] = (0.3, 0.7, 0.0),
           importance: WidthImportance | None = None) -> StaticPrune:
    protect = (LayerSelector(SelectorKind.INDEX, 0, None, SPAN),)
    return StaticPrune(method, Target(params, None, None, None, SPAN),
                       Distribution(*distribution, SPAN), Steps(mlp_step, 1, SPAN), "calib",
                       protect, True, Scope.PER_LAYER, SPAN, importance)


@torch.no_grad()
def perplexity(model: Any, result: MethodResult | None, shape: Any, ids: torch.Tensor,
               batch: int = 8) -> float:
    pruned = model
    if result is not None:
        pruned = apply_refit_(apply_plan_(copy.deepcopy(model), result.plan, shape),
                              result.refit, result.plan, shape)
    nll = [head_nll(pruned, pruned.model(ids[s:s + batch], use_cache=False).last_hidden_state,
                    ids[s:s + batch]) for s in range(0, ids.shape[0], batch)]
    return math.exp(float(torch.cat(nll).mean()))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")

"""The ``export hf "DIR"`` target: the pruned PyTorch model as a directory, and its loader.

A pruned model's layers have different widths, which a Hugging Face config cannot express,
so ``from_pretrained`` alone cannot load it (it would re-initialise removed blocks at random).
The directory therefore holds:
  config.json            the ORIGINAL (dense) config
  plan.json              the plan that shapes it
  model.safetensors      the pruned weights (tied embeddings stored once)
  tokenizer files
  prunec-pruned.json     {"format": "prunec-pruned-hf/1", "loader": ...}
``load_pruned_hf(dir)`` rebuilds the dense skeleton from config.json, applies the plan's
structure (``passes.reference.apply_plan_``) and loads the weights strictly: every tensor
must be present with its pruned shape, so a mismatch is an error, never a silent re-init.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunec.compiler.plan import Plan

FORMAT = "prunec-pruned-hf/1"


def export_hf(model: Any, tokenizer: Any, plan: Plan, directory: Path) -> None:
    """Write ``model`` pruned by ``plan`` to ``directory`` (``model`` itself is unchanged)."""
    import copy

    from safetensors.torch import save_model

    from prunec.passes.reference import apply_plan_, shape_of

    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(directory))
    model = apply_plan_(copy.deepcopy(model), plan, shape_of(model))
    save_model(model, str(directory / "model.safetensors"))
    (directory / "plan.json").write_text(plan.dumps())
    tokenizer.save_pretrained(str(directory))
    marker = {"format": FORMAT, "loader": "prunec.runtime.hf_export.load_pruned_hf"}
    (directory / "prunec-pruned.json").write_text(json.dumps(marker, indent=1))


def load_pruned_hf(directory: Path) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a directory written by ``export_hf``."""
    import torch
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prunec.passes.reference import apply_plan_, shape_of

    config = AutoConfig.from_pretrained(str(directory))
    build = AutoModelForCausalLM.from_config
    model = build(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plan = Plan.from_json(json.loads((directory / "plan.json").read_text()))
    apply_plan_(model, plan, shape_of(model))
    load_model(model, str(directory / "model.safetensors"), strict=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(directory))

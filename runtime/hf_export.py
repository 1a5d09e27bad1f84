"""The ``export hf "DIR"`` target: the pruned PyTorch model as a directory, and its loader.

A pruned model's layers have different widths, which a Hugging Face config cannot express,
so ``from_pretrained`` alone cannot load it (it would re-initialise removed blocks at random).
The directory therefore holds:
  config.json            the ORIGINAL (dense) config
  plan.json              the plan that shapes it
  model.safetensors      the pruned weights (tied embeddings stored once), the plan's
                         reconstruction included (refit o_proj / down_proj weights and
                         the output biases it adds, which the dense config lacks)
  tokenizer files
  prunec-pruned.json     {"format": "prunec-pruned-hf/1", "loader": ...}
``load_pruned_hf(dir)`` rebuilds the dense skeleton from config.json, applies the plan's
structure (``passes.reference.apply_plan_``), gives o_proj / down_proj a bias wherever the
file has one (``add_stored_biases_``), and loads the weights strictly: every tensor must be
present with its pruned shape, so a mismatch is an error, never a silent re-init.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunec.compiler.plan import Plan

FORMAT = "prunec-pruned-hf/1"


def export_hf(model: Any, tokenizer: Any, plan: Plan, directory: Path,
              refit: Any = None) -> None:
    """Write ``model`` pruned by ``plan`` (and its reconstruction ``refit``,
    ``{layer: LayerRefit}``) to ``directory`` (``model`` itself is unchanged)."""
    import copy

    from safetensors.torch import save_model

    from prunec.passes.reference import apply_plan_, apply_refit_, shape_of

    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(directory))
    shape = shape_of(model)
    model = apply_refit_(apply_plan_(copy.deepcopy(model), plan, shape), refit or {}, plan,
                         shape)
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
    add_stored_biases_(model, directory / "model.safetensors")
    load_model(model, str(directory / "model.safetensors"), strict=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(directory))


def add_stored_biases_(model: Any, path: Path) -> None:
    """Give every Linear whose bias the file stores, and the model lacks, a bias parameter
    (zeros; ``load_model`` fills it): a reconstruction adds o_proj / down_proj biases."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.bias is None \
                and f"{name}.bias" in names:
            module.bias = torch.nn.Parameter(torch.zeros(module.out_features))

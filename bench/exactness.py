"""Exactness of the pruned ONNX graph against the module-level pruned PyTorch reference.

Measure: ``relative_error = max|onnx - ref| / max|ref|`` (``passes.reference``), where
``ref`` is the model pruned module by module (``apply_plan_``) and ``onnx`` is the graph a
build ships (``prune_graph`` + ``export_onnx`` with ``fuse = on``, the build default) run on
onnxruntime CPU; one number per plan, the largest over several batch x seq inputs of the
same file. Cases:
- tiny random GQA Llama models (``tests/tinymodels.py``: 6 query heads on 2 KV heads, tied;
  and 8 on 4 with q/k/v/o biases, untied, alternating), ``--plans`` random plans (seed i, blocks
  removed with probability 0.3, random channel and head subsets);
- SmolLM2-135M-Instruct (the demo model, cached under ~/.cache/prunec after the first
  conversion): dense, and one random plan (seed 2025, blocks removed with probability 0.1).
Not a timing benchmark. Prints a table and writes bench/results/exactness.json.

Usage: python bench/exactness.py [--plans 50] [--no-smollm2] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import machine
from tinymodels import TinyConfig, random_plan, tiny_llama, torch_threads

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import DType, ModelDecl, ModelShape, ModelSource
from prunec.compiler.plan import Plan
from prunec.passes.pipeline import prune_graph
from prunec.passes.reference import apply_plan_, reference_logits, relative_error, shape_of
from prunec.runtime.export import ExportConfig, export_onnx

ROOT = Path(__file__).resolve().parents[1]
TINY = (("gqa-tied", TinyConfig(layers=3)),
        ("gqa-bias-untied", TinyConfig(layers=3, heads=8, kv_heads=4, attention_bias=True,
                                       tied=False)))
TINY_SIZES = ((2, 1), (1, 19), (4, 7), (3, 64))
SMOLLM2_SIZES = ((1, 33), (2, 8))


def onnx_error(model: torch.nn.Module, shape: ModelShape, plan: Plan,
               sizes: tuple[tuple[int, int], ...], workdir: Path) -> float:
    """Largest relative error of the exported pruned graph over ``sizes`` inputs."""
    import onnxruntime as ort

    program, _ = prune_graph(model, plan, shape)
    info = export_onnx(program, workdir / "model.onnx", config=ExportConfig(fuse=True))
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    reference = apply_plan_(copy.deepcopy(model), plan, shape)
    gen = torch.Generator().manual_seed(0)
    errors = []
    for batch, seq in sizes:
        ids = torch.randint(0, shape.vocab, (batch, seq), generator=gen)
        (got,) = session.run(["logits"], {"input_ids": ids.numpy()})
        errors.append(relative_error(torch.from_numpy(np.asarray(got)),
                                     reference_logits(reference, ids)))
    return max(errors)


def tiny_rows(plans: int, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    with torch_threads(1):
        for seed in range(plans):
            name, config = TINY[seed % len(TINY)]
            model = tiny_llama(seed, config)
            shape = shape_of(model)
            plan = random_plan(shape, seed, p_remove=0.3)
            rows.append({"model": name, "seed": seed,
                         "relative_error": onnx_error(model, shape, plan, TINY_SIZES, workdir)})
            print(f"  tiny {name:<16} seed {seed:>3}  {rows[-1]['relative_error']:.2e}",
                  file=sys.stderr, flush=True)
    return rows


def smollm2_rows(workdir: Path) -> list[dict[str, Any]]:
    from prunec.runtime.models import load_model

    decl = ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span("bench", 1, 1, 1, 1))
    loaded = load_model(decl, ROOT / "specs")
    rows = []
    for name, plan in (("dense", Plan.dense(loaded.shape)),
                       ("random (seed 2025, p_remove 0.1)",
                        random_plan(loaded.shape, seed=2025, p_remove=0.1))):
        rows.append({"plan": name,
                     "relative_error": onnx_error(loaded.model, loaded.shape, plan,
                                                    SMOLLM2_SIZES, workdir)})
        print(f"  smollm2 {name:<34} {rows[-1]['relative_error']:.2e}", file=sys.stderr,
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=50)
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/exactness.json")
    args = ap.parse_args(argv)
    run = machine.start()
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_rows(args.plans, Path(tmp))
        smollm2 = [] if args.no_smollm2 else smollm2_rows(Path(tmp))
    worst = max(r["relative_error"] for r in tiny)
    result = {"benchmark": "exactness", "measure": "max|onnx - ref| / max|ref|",
              "export": "fuse = on (build default)", "machine": run.entry(),
              "tiny": {"plans": len(tiny), "sizes": TINY_SIZES, "max_relative_error": worst,
                       "rows": tiny},
              "smollm2": {"sizes": SMOLLM2_SIZES, "rows": smollm2}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"tiny GQA models, {len(tiny)} random plans: max {worst:.2e}")
    for row in smollm2:
        print(f"SmolLM2 {row['plan']}: {row['relative_error']:.2e}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

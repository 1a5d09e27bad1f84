"""Search cost on SmolLM2-135M: the fast (prefix/suffix-cached) engine vs the reference one.

Both engines run the same first ``--steps`` greedy steps of a MultiPruner search (blocks
stage: distribution 100:0:0; MLP stage: 0:100:0) on the KJV calibration set and must commit
the same decisions with bit-identical scores. Reported per engine: candidate evaluations,
layer-forwards (1 = one decoder layer over the whole calibration set), wall time. The
reference engine evaluates every candidate on a pruned deep copy of the whole model.
Prints a table and writes JSON (machine noted).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from methods_common import load_demo, machine, static, tokens, write_json

from prunec.compiler.ir import StaticMethod
from prunec.passes.methods import MethodOptions, compute_plan

STAGES = {"blocks": (1.0, 0.0, 0.0), "mlp": (0.0, 1.0, 0.0)}


class Stop(Exception):
    pass


def run(lm: Any, calib: torch.Tensor, stage: str, mode: str, steps: int,
        mlp_step: int) -> dict[str, Any]:
    def stop(step: int) -> None:
        if step >= steps:
            raise Stop

    st = static(StaticMethod.MULTIPRUNER, 0.2, mlp_step, STAGES[stage])
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "resume.json"
        try:
            compute_plan(st, lm.model, lm.shape, calib,
                         MethodOptions(mode=mode, resume_path=str(state), on_step=stop))
        except Stop:
            pass
        data = json.loads(state.read_text())
    return {"stage": stage, "mode": mode, "steps": steps, "evaluations": data["evaluations"],
            "layer_forwards": data["layer_forwards"], "wall_s": data["wall_s"],
            "decisions": [(d["layer"], d["action"], d["score"])
                          for d in data["plan"]["decisions"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calib", default="2x64")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--mlp-step", type=int, default=384)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench/results/search_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_demo()
    calib = tokens(lm.tokenizer, "kjv-calib.txt", *map(int, args.calib.split("x")))
    rows = []
    for stage in STAGES:
        for mode in ("fast", "reference"):
            rows.append(run(lm, calib, stage, mode, args.steps, args.mlp_step))
            write_json(Path(args.out), {"machine": machine(), "args": vars(args), "rows": rows})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "decisions"}), flush=True)
    print(f"{'stage':<8}{'engine':<11}{'evals':>7}{'layer-fwd':>11}{'wall s':>9}"
          f"{'fwd x':>7}{'wall x':>8}  same plan")
    for fast, ref in zip(rows[::2], rows[1::2]):
        for r in (fast, ref):
            print(f"{r['stage']:<8}{r['mode']:<11}{r['evaluations']:>7}"
                  f"{r['layer_forwards']:>11.1f}{r['wall_s']:>9.1f}"
                  f"{ref['layer_forwards'] / r['layer_forwards']:>7.2f}"
                  f"{ref['wall_s'] / r['wall_s']:>8.2f}  {fast['decisions'] == ref['decisions']}")


if __name__ == "__main__":
    main()

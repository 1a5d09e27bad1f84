"""Search cost on SmolLM2-135M: the fast (prefix/suffix-cached) engine vs the reference one.

One MultiPruner search as the example spec runs it (``specs/smollm2-multipruner.prune``:
20% of parameters, distribution 30:70:0, MLP steps of 384 channels, layer 0 protected,
``importance = wanda-sp``, 8x128 KJV calibration tokens), in one process:
- fast engine: the whole search; cumulative counters are read after every step;
- reference engine (a pruned deep copy of the whole model per candidate): the first
  ``--ref-steps`` steps only (it costs the same per candidate at every step).
Checks: both commit the same decisions with bit-identical scores on the common steps.
Reported: candidate evaluations, layer-forwards (1 = one decoder layer over the whole
calibration set; the lm_head pass every evaluation ends with is not counted) and wall time,
(a) over the same first steps and (b) for the whole search, the reference's cost being its
measured per-evaluation cost times the search's evaluations. Prints a table and writes JSON
(machine noted).

    python bench/search_cost.py [--ref-steps 3] [--calib 8x128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import machine
import torch
from methods_common import load_demo, static, tokens, write_json

from prunec.compiler.ir import StaticMethod, WidthImportance
from prunec.passes.methods import MethodOptions, compute_plan


class Stop(Exception):
    pass


def run(lm: Any, calib: torch.Tensor, mode: str, steps: int | None,
        args: argparse.Namespace) -> dict[str, Any]:
    """One search (``steps`` None: to the end); counters after every step."""
    st = static(StaticMethod.MULTIPRUNER, args.params, args.mlp_step, (0.3, 0.7, 0.0),
                WidthImportance.WANDA_SP)
    per_step: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "resume.json"

        def on_step(step: int) -> None:
            data = json.loads(state.read_text())
            per_step.append({k: data[k] for k in ("evaluations", "layer_forwards", "wall_s")})
            if steps is not None and step >= steps:
                raise Stop

        try:
            compute_plan(st, lm.model, lm.shape, calib,
                         MethodOptions(mode=mode, resume_path=str(state), on_step=on_step,
                                       batch_size=args.batch_size))
        except Stop:
            pass
        data = json.loads(state.read_text())
    return {"mode": mode, "steps": len(per_step), "per_step": per_step,
            "decisions": [(d["layer"], d["action"], d["score"])
                          for d in data["plan"]["decisions"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calib", default="8x128")
    p.add_argument("--params", type=float, default=0.2)
    p.add_argument("--ref-steps", type=int, default=3)
    p.add_argument("--mlp-step", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=4, help="as prunec build searches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/search_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run_on = machine.start()
    lm = load_demo()
    calib = tokens(lm.tokenizer, "kjv-calib.txt", *map(int, args.calib.split("x")))
    fast = run(lm, calib, "fast", None, args)
    ref = run(lm, calib, "reference", args.ref_steps, args)
    n = ref["steps"]
    same = fast["decisions"][:n] == ref["decisions"][:n]
    f_n, r_n, f_all = fast["per_step"][n - 1], ref["per_step"][n - 1], fast["per_step"][-1]
    per_eval = {k: r_n[k] / r_n["evaluations"] for k in ("layer_forwards", "wall_s")}
    rows = [
        {"scope": f"first {n} steps", "evaluations": f_n["evaluations"],
         "fast_layer_forwards": f_n["layer_forwards"], "ref_layer_forwards": r_n["layer_forwards"],
         "fast_wall_s": f_n["wall_s"], "ref_wall_s": r_n["wall_s"]},
        {"scope": f"whole search ({fast['steps']} steps; reference extrapolated)",
         "evaluations": f_all["evaluations"],
         "fast_layer_forwards": f_all["layer_forwards"],
         "ref_layer_forwards": per_eval["layer_forwards"] * f_all["evaluations"],
         "fast_wall_s": f_all["wall_s"], "ref_wall_s": per_eval["wall_s"] * f_all["evaluations"]},
    ]
    for r in rows:
        r["layer_forward_ratio"] = r["ref_layer_forwards"] / r["fast_layer_forwards"]
        r["wall_ratio"] = r["ref_wall_s"] / r["fast_wall_s"]
    write_json(Path(args.out), {"machine": run_on.entry(), "args": vars(args),
                                "same_decisions_on_common_steps": same, "rows": rows,
                                "runs": [fast, ref]})
    print(f"same decisions, bit-identical scores on the first {n} steps: {same}")
    print(f"{'scope':<48}{'evals':>7}{'fwd fast':>10}{'fwd ref':>10}{'fwd x':>7}"
          f"{'wall fast':>11}{'wall ref':>10}{'wall x':>8}")
    for r in rows:
        print(f"{r['scope']:<48}{r['evaluations']:>7}{r['fast_layer_forwards']:>10.0f}"
              f"{r['ref_layer_forwards']:>10.0f}{r['layer_forward_ratio']:>7.2f}"
              f"{r['fast_wall_s']:>11.1f}{r['ref_wall_s']:>10.1f}{r['wall_ratio']:>8.2f}")


if __name__ == "__main__":
    main()

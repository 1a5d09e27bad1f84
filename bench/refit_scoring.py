"""MultiPruner with least-squares reconstruction: score candidates refit, or refit the final plan?

Issue 14 asks to decide by measurement. Two ways to combine the search with the refit:
- ``final`` (what prunec ships): the search scores plain cuts; the least-squares refit runs
  once, on the final plan (``passes.methods.reconstruct``);
- ``candidates``: every width candidate is scored AFTER its layer's least-squares refit,
  fitted on the committed prefix's calibration inputs to that layer (the same per-layer fit
  the final refit does; ``reconstruct._fit_layer``); the chosen, refit layer is committed.
  The final plan is then refit once more in order (later cuts changed earlier layers'
  inputs), exactly as in ``final``.
Both search the same spec settings (MultiPruner, importance = wanda-sp, steps mlp 384 /
heads 1, distribution 30:70:0) on the same calibration tokens; both are evaluated in both
protocols (KJV evaluation slice; license texts). Reported: held-out perplexity, search
seconds, and the plans' difference. ``--final-plans DIR`` reads the ``final`` plan from
``bench/search_quality.py --plan-cache DIR`` instead of searching it again.

The ``candidates`` engine lives here, not in prunec, until it is measured to win.

    python bench/refit_scoring.py --ratios 0.2 --final-plans /tmp/b14/plans
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import machine
import torch
from methods_common import load_demo, perplexity, static, tokens, write_json
from search_quality import cached
from torch import nn

from prunec.compiler.ir import Reconstruct, StaticMethod, WidthImportance, damp_for
from prunec.compiler.plan import LayerPlan
from prunec.passes.methods import MethodOptions, MethodResult, compute_plan, search
from prunec.passes.methods.evaluator import FastEngine
from prunec.passes.methods.reconstruct import (
    _fit_layer,
    reconstruct,
    resolved_damp,
    with_setting,
)

PROTOCOLS = {"in-domain": "kjv-eval.txt", "out-of-domain": "licenses.txt"}


class RefitEngine(FastEngine):
    """``FastEngine`` whose candidate layers are least-squares refit before they are scored."""

    damp: float | None = None

    def _module(self, lp: LayerPlan) -> nn.Module:
        if lp == LayerPlan(lp.index) or not self.inputs:
            return super()._module(lp)
        with torch.no_grad():
            work, _ = _fit_layer(self.base[lp.index], lp, self.shape, self.driver,
                                 self.inputs[lp.index],
                                 damp_for(self.damp, sum(int(c.numel()) for c in self.driver.ids)))
        return work


def damp_arg(text: str) -> float | None:
    return None if text == "auto" else float(text)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2])
    p.add_argument("--calib", default="8x128")
    p.add_argument("--eval", default="16x256")
    p.add_argument("--damp", type=damp_arg, default=None,
                   help="least-squares damp: a number, or auto (the default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--final-plans", default=None)
    p.add_argument("--scorings", nargs="+", default=["final", "candidates"],
                   choices=["final", "candidates"])
    p.add_argument("--merge", nargs="+", default=None, help="only merge these JSON files")
    p.add_argument("--out", default="bench/results/refit_scoring.json")
    return p.parse_args()


def search_with(lm: Any, calib: torch.Tensor, ratio: float, engine: str) -> MethodResult:
    st = static(StaticMethod.MULTIPRUNER, ratio, 384, (0.3, 0.7, 0.0), WidthImportance.WANDA_SP)
    st = replace(st, reconstruct=Reconstruct.OFF)
    original = search.FastEngine
    if engine == "candidates":
        search.FastEngine = RefitEngine  # type: ignore[misc]
    try:
        return compute_plan(st, lm.model, lm.shape, calib, MethodOptions())
    finally:
        search.FastEngine = original  # type: ignore[misc]


def refit_final(lm: Any, calib: torch.Tensor, result: MethodResult, damp: float | None
                ) -> tuple[MethodResult, float]:
    start = time.perf_counter()
    damp = resolved_damp(damp, calib)
    kind = Reconstruct.LEAST_SQUARES
    refits = reconstruct(kind, damp, lm.model, lm.shape, result.plan, calib, MethodOptions())
    return (replace(result, plan=with_setting(result.plan, kind, damp), refit=refits),
            time.perf_counter() - start)


def main() -> None:
    args = parse()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        rows = [r for part in parts for r in part["rows"]]
        write_json(Path(args.out), {"machine": parts[-1]["machine"], "runs": [
            {"machine": p["machine"], "args": p["args"]} for p in parts], "rows": rows})
        print_table(rows)
        return
    torch.set_num_threads(args.threads)
    RefitEngine.damp = args.damp
    run_on = machine.start()
    lm = load_demo()
    calib = tokens(lm.tokenizer, "kjv-calib.txt", *map(int, args.calib.split("x")))
    held = {p: tokens(lm.tokenizer, f, *map(int, args.eval.split("x")))
            for p, f in PROTOCOLS.items()}
    report: dict[str, Any] = {"machine": run_on.entry(), "args": vars(args), "rows": []}
    for ratio in args.ratios:
        for engine in args.scorings:
            name = "multipruner-wanda" + ("" if engine == "final" else "-refit-scored")
            result = cached(args.final_plans, name, ratio,
                            lambda e=engine, r=ratio: search_with(lm, calib, r, e))
            refitted, refit_s = refit_final(lm, calib, result, args.damp)
            row: dict[str, Any] = {"ratio": ratio, "scoring": engine,
                                   "search_s": result.stats.wall_s, "refit_s": refit_s,
                                   "calib_ppl": result.stats.trajectory[-1].score,
                                   "layer_forwards": result.stats.layer_forwards,
                                   "decisions": [[d.layer, d.action]
                                                 for d in result.plan.decisions]}
            for protocol, ids in held.items():
                row[protocol] = perplexity(lm.model, refitted, lm.shape, ids)
            report["rows"].append(row)
            report["machine"] = run_on.entry()
            write_json(Path(args.out), report)
            print(json.dumps(row), flush=True)
    print_table(report["rows"])


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'ratio':>6} {'scoring':>11} {'in-domain':>10} {'out-of-domain':>14} "
          f"{'search_s':>9}")
    for r in rows:
        print(f"{r['ratio']:>6.0%} {r['scoring']:>11} {r['in-domain']:>10.2f} "
              f"{r['out-of-domain']:>14.2f} {r['search_s']:>9.0f}")


if __name__ == "__main__":
    main()

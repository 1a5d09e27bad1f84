"""Held-out perplexity of the static methods on SmolLM2-135M at several parameter ratios.

Methods: dense, multipruner (the paper's magnitude reorder), multipruner-wanda (prunec's
``importance = wanda-sp`` reorder), blockpruner, magnitude, wanda-sp, flap; calibration on
specs/data/kjv-calib.txt, evaluation on specs/data/kjv-eval.txt (PyTorch modules via
apply_plan_, FLAP biases included). BlockPruner's greedy path does not depend on the target
(it stops at the first step past it), so one run to the largest ratio yields every ratio:
its plan is snapshotted when each ratio is crossed. Rows are appended to the JSON as they
finish (a long run can be read while it goes). Prints a table at the end.

Reconstruction (issue 14): every width method's plan is computed once (the search scores
without reconstruction) and then evaluated under each ``--settings`` value (off, bias,
least-squares; ``refit_s`` is the time the setting adds) on each ``--protocols`` value:
``in-domain`` (specs/data/kjv-eval.txt) and ``out-of-domain`` (specs/data/licenses.txt),
both calibrated on kjv-calib.txt. BlockPruner has no width cut: ``off`` only.

    python bench/search_quality.py --methods magnitude wanda-sp flap multipruner blockpruner
    python bench/search_quality.py --methods wanda-sp --ratios 0.2 --settings off \
        least-squares --protocols in-domain --eval 4x128 --out /tmp/smoke.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import machine
import torch
from methods_common import load_demo, perplexity, static, tokens, write_json

from prunec.compiler import budget
from prunec.compiler.ir import Reconstruct, StaticMethod, WidthImportance
from prunec.compiler.plan import Plan
from prunec.passes.methods import MethodOptions, MethodResult, compute_plan
from prunec.passes.methods.reconstruct import reconstruct, resolved_damp, with_setting

PROTOCOLS = {"in-domain": "kjv-eval.txt", "out-of-domain": "licenses.txt"}


def damp_arg(text: str) -> float | None:
    return None if text == "auto" else float(text)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.1, 0.3])
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda-sp", "flap",
                                                     "multipruner", "multipruner-wanda",
                                                     "blockpruner"])
    p.add_argument("--calib", default="2x64", help="samples x seq_len for calibration")
    p.add_argument("--refit-calib", default=None,
                   help="samples x seq_len the reconstruction fits on (default: --calib)")
    p.add_argument("--plan-cache", default=None,
                   help="a directory: each method/ratio plan is saved there and, when present, "
                        "read back instead of searched again (to refit a plan differently)")
    p.add_argument("--eval", default="16x128", help="samples x seq_len held out")
    p.add_argument("--settings", nargs="+", default=[r.value for r in Reconstruct],
                   choices=[r.value for r in Reconstruct])
    p.add_argument("--damp", type=damp_arg, default=None,
                   help="least-squares damp: a number, or auto (the default)")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--mlp-step", type=int, default=384)
    p.add_argument("--distribution", default="30:70:0")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for this process (1 is fastest on a busy 2-core box)")
    p.add_argument("--seed-blocks-from", default=None,
                   help="a running BlockPruner bench's resume file: MultiPruner's blocks stage "
                        "is that greedy path's prefix, so it is read from there, not re-run")
    p.add_argument("--merge", nargs="+", default=None,
                   help="only merge these result files into --out and print the table")
    p.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model")
    p.add_argument("--out", default="bench/results/search_quality.json")
    return p.parse_args()


def merge(paths: list[str], out: str) -> None:
    """Combine the JSON of several (parallel) runs into one table and one JSON file."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    for part in parts:  # runs before rows carried their damp: the run's --damp
        dist = part["args"].get("distribution", "30:70:0")
        for row in part["rows"]:
            if row.get("setting") == Reconstruct.LEAST_SQUARES.value and "damp" not in row:
                row["damp"] = part["args"].get("damp") or "auto"
            if row["method"].startswith("multipruner") and dist != "30:70:0":
                row["method"] += f" ({dist})"  # another distribution is another method
    rows = [r for part in parts for r in part["rows"]]
    write_json(Path(out), {"machine": parts[0]["machine"], "runs": [
        {"machine": p["machine"], "args": p["args"]} for p in parts], "rows": rows})
    print_table(rows)


def main() -> None:
    args = parse()
    if args.merge:
        merge(args.merge, args.out)
        return
    torch.set_num_threads(args.threads)
    run_on = machine.start()
    lm = load_demo()
    calib = tokens(lm.tokenizer, "kjv-calib.txt", *map(int, args.calib.split("x")))
    held = {p: tokens(lm.tokenizer, PROTOCOLS[p], *map(int, args.eval.split("x")))
            for p in args.protocols}
    refit_calib = calib if args.refit_calib is None else tokens(
        lm.tokenizer, "kjv-calib.txt", *map(int, args.refit_calib.split("x")))
    dist = tuple(float(x) / 100 for x in args.distribution.split(":"))
    out = Path(args.out)
    report: dict[str, Any] = {"machine": run_on.entry(), "args": vars(args), "rows": []}

    def record(method: str, ratio: float, result: MethodResult | None) -> None:
        for setting in settings_for(method, result, args.settings):
            refitted, refit_s = refit(lm, refit_calib, result, setting, args.damp)
            for protocol, ids in held.items():
                write_row(method, ratio, refitted, setting, refit_s, protocol, ids)

    def write_row(method: str, ratio: float, result: MethodResult | None, setting: str,
                  refit_s: float, protocol: str, ids: torch.Tensor) -> None:
        row = {"method": method, "ratio": ratio, "setting": setting, "protocol": protocol,
               "refit_s": refit_s, "heldout_ppl": perplexity(lm.model, result, lm.shape, ids)}
        if setting == Reconstruct.LEAST_SQUARES.value:
            row["damp"] = "auto" if args.damp is None else args.damp
        if result is not None:
            s = result.stats
            row.update(params=budget.dense_params(lm.shape)
                       - budget.removed_params(lm.shape, result.plan),
                       calib_ppl=s.trajectory[-1].score if s.trajectory else None,
                       search_s=s.wall_s, layer_forwards=s.layer_forwards,
                       evaluations=s.candidate_evaluations, steps=len(s.trajectory))
        report["rows"].append(row)
        report["machine"] = run_on.entry()  # load_after: as of this row
        write_json(out, report)
        print(json.dumps(row), flush=True)

    if not args.skip_dense:
        record("dense", 0.0, None)
    for method in args.methods:
        if method == "blockpruner":
            blockpruner_snapshots(lm, calib, sorted(args.ratios), args, record)
            continue
        for ratio in args.ratios:
            if method == "multipruner" and args.seed_blocks_from:
                record(method, ratio, seeded_multipruner(lm, calib, ratio, args, dist))
                continue
            st = static(StaticMethod(method.removesuffix("-wanda")), ratio, args.mlp_step, dist,
                        WidthImportance.WANDA_SP if method.endswith("-wanda") else None)
            st = replace(st, reconstruct=Reconstruct.OFF)  # settings are applied by record
            record(method, ratio, cached(args.plan_cache, method, ratio, lambda st=st:
                   compute_plan(st, lm.model, lm.shape, calib, MethodOptions(progress=log_step))))
    print_table(report["rows"])


def cached(directory: str | None, method: str, ratio: float, compute: Any) -> MethodResult:
    """``compute()``, or the plan (and search statistics) a run saved in ``directory``."""
    from prunec.passes.methods.types import SearchStats, StepScore

    if directory is None:
        return compute()  # type: ignore[no-any-return]
    path = Path(directory) / f"{method}-{ratio}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        stats = dict(saved["stats"], trajectory=tuple(StepScore(**t)
                                                      for t in saved["stats"]["trajectory"]))
        return MethodResult(Plan.from_json(saved["plan"]), SearchStats(**stats))
    result: MethodResult = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    stats_json = {f.name: getattr(result.stats, f.name) for f in fields(result.stats)}
    stats_json["trajectory"] = [vars(t) for t in result.stats.trajectory]
    write_json(path, {"plan": result.plan.to_json(), "stats": stats_json})
    return result


def settings_for(method: str, result: MethodResult | None, wanted: list[str]) -> list[str]:
    """The settings a row is evaluated under: none for dense, off for BlockPruner."""
    if result is None or method == "blockpruner":
        return ["off"]
    return wanted


def refit(lm: Any, calib: torch.Tensor, result: MethodResult | None, setting: str,
          damp: float | None) -> tuple[MethodResult | None, float]:
    """``result`` with the reconstruction ``setting`` (and the seconds it took)."""
    if result is None:
        return None, 0.0
    start = time.perf_counter()
    kind = Reconstruct(setting)
    damp = resolved_damp(damp, calib)
    refits = reconstruct(kind, damp, lm.model, lm.shape, result.plan, calib, MethodOptions())
    plan = with_setting(result.plan, kind, damp)
    return replace(result, plan=plan, refit=refits), time.perf_counter() - start


def blockpruner_snapshots(lm: Any, calib: torch.Tensor, ratios: list[float],
                          args: argparse.Namespace, record: Any) -> None:
    """One BlockPruner run to max(ratios); the plan is recorded as each ratio is crossed."""
    resume = Path(args.out).with_suffix(".bp-resume.json")
    resume.unlink(missing_ok=True)
    pending = list(ratios)
    started = time.perf_counter()

    def on_step(_step: int) -> None:
        state = json.loads(resume.read_text())
        plan = Plan.from_json(state["plan"])
        done = budget.removed_params(lm.shape, plan) / budget.dense_params(lm.shape)
        while pending and done >= pending[0] - 1e-9:
            from prunec.passes.methods.types import SearchStats, StepScore

            traj = tuple(StepScore(**t) for t in state["trajectory"])
            stats = SearchStats(state["layer_forwards"], state["evaluations"],
                                time.perf_counter() - started, None, traj, "fast")
            record("blockpruner", pending.pop(0), MethodResult(plan, stats))

    st = static(StaticMethod.BLOCKPRUNER, max(ratios), args.mlp_step)
    compute_plan(st, lm.model, lm.shape, calib,
                 MethodOptions(resume_path=str(resume), on_step=on_step, progress=log_step))


def seeded_multipruner(lm: Any, calib: torch.Tensor, ratio: float, args: argparse.Namespace,
                       dist: tuple[float, ...]) -> MethodResult:
    """MultiPruner whose blocks stage is copied from a BlockPruner run on the same data.

    Both score the same block candidates on the same committed plans, so MultiPruner's
    blocks stage (until d0 * goal is removed) IS BlockPruner's path up to that point; the
    search resumes from there with its MLP and head stages. Counters cover those stages."""
    from prunec.passes.methods import lock, resume
    from prunec.passes.methods.resume import SearchState

    st = static(StaticMethod.MULTIPRUNER, ratio, args.mlp_step, dist)
    need = dist[0] * (budget.params_goal(st, lm.shape) or 0)
    plan, traj, dense = wait_for_prefix(Path(args.seed_blocks_from), lm.shape, need)
    hashes = lock.current_hashes(st, lm.model, calib, MethodOptions())
    path = Path(args.out).with_suffix(f".mp{ratio}-resume.json")
    resume.save(str(path), resume.fingerprint(st, hashes, "fast"),
                SearchState(plan, traj, dense))
    return compute_plan(st, lm.model, lm.shape, calib,
                        MethodOptions(resume_path=str(path), progress=log_step))


def wait_for_prefix(path: Path, shape: Any, need: float) -> tuple[Plan, list[Any], float]:
    from dataclasses import replace

    from prunec.passes.methods.types import StepScore

    while True:
        if path.exists():
            state = json.loads(path.read_text())
            plan = Plan.dense(shape, "multipruner")
            for d in Plan.from_json(state["plan"]).decisions:
                if budget.removed_params(shape, plan) >= need - 1e-9:
                    traj = [StepScore(**t) for t in state["trajectory"][:len(plan.decisions)]]
                    return plan, traj, state["dense_score"]
                lp = plan.layers[d.layer]
                lp = replace(lp, attn_removed=True) if d.action == "remove attn" \
                    else replace(lp, mlp_removed=True)
                plan = plan.with_layer(lp).with_decision(d)
        time.sleep(30)


def log_step(event: Any) -> None:
    if event.done == event.total:
        print(f"{time.strftime('%H:%M:%S')} {event.task}: best {event.score:.3f} "
              f"({event.total} candidates)", flush=True)


def setting_label(row: dict[str, Any]) -> str:
    """``off`` / ``bias`` / ``least-squares, damp D`` (older rows: off)."""
    setting = row.get("setting", "off")
    return f"{setting}, damp {row['damp']}" if "damp" in row else setting


def print_table(rows: list[dict[str, Any]]) -> None:
    """One table per protocol; a row per method and setting (older rows: in-domain, off)."""
    ratios = sorted({r["ratio"] for r in rows if r["ratio"] > 0})
    for protocol in dict.fromkeys(r.get("protocol", "in-domain") for r in rows):
        print(f"[{protocol}]")
        mine = [r for r in rows if r.get("protocol", "in-domain") == protocol]
        print(f"{'method':<32}" + "".join(f"{f'{r:.0%}':>12}" for r in ratios))
        for key in dict.fromkeys((r["method"], setting_label(r)) for r in mine):
            cells = {r["ratio"]: r["heldout_ppl"] for r in mine
                     if (r["method"], setting_label(r)) == key}
            name = key[0] if key[0] == "dense" else f"{key[0]} ({key[1]})"
            print(f"{name:<32}" + "".join(f"{cells[r]:>12.2f}" if r in cells else f"{'-':>12}"
                                          for r in ratios)
                  + (f"  (dense {cells[0.0]:.2f})" if 0.0 in cells else ""))


if __name__ == "__main__":
    main()

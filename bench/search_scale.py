"""Search scaling over Ray workers: the example MultiPruner search at workers 1 and 2.

The search of ``specs/smollm2-multipruner.prune`` (distribution 30:70:0, MLP steps of 384
channels, layer 0 protected, ``importance = wanda-sp``, its 8x128 KJV calibration tokens)
with a SHORT target (``--params``, default 5%), on SmolLM2-135M, one torch thread per worker:
- workers 1: the in-process search (``MethodOptions.workers = 1``), timed per step;
- workers N (``--workers``, default 2): the same search on a local Ray with N actors
  (``passes.methods.distributed.RayEngine``), timed per step, plus its start-up (Ray, the
  model into the object store, each actor's engine and prefix states).
Checks: both commit the same decisions with the same scores (the plan is identical).
Measured, for the scaling model: the time of one layer-forward in process (t), the
actors' extra layer-forwards per step (each rebuilds the committed prefix after a commit;
the in-process engine reuses the winner's states), the coordination latency of one round
trip to every actor (an empty batch, ``--pings`` times), ``ray.put`` of the model and
``load_model`` from the GGUF file (the other way an actor could get the model).
Scaling model, N workers: T(N) = start(N) + steps * latency + t * (F1 / N + steps * extra),
F1 = the in-process search's layer-forwards (assumes an even share per worker; on N GPUs
replace t by one GPU's layer-forward time). Prints tables; writes JSON (machine noted).

    python bench/search_scale.py [--params 0.05] [--workers 2] [--out FILE]
    # smoke test: --params 0.01 --calib 2x32 --out /tmp/search_scale.json
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import machine
import torch
from methods_common import load_demo, static, tokens, write_json

from prunec.compiler.ir import StaticMethod, WidthImportance
from prunec.compiler.plan import Plan
from prunec.passes.methods import MethodOptions, compute_plan
from prunec.passes.methods import distributed as dist


def search(lm: Any, calib: torch.Tensor, workers: int, args: argparse.Namespace
           ) -> dict[str, Any]:
    st = static(StaticMethod.MULTIPRUNER, args.params, 384, (0.3, 0.7, 0.0),
                WidthImportance.WANDA_SP)
    marks = [time.perf_counter()]
    options = MethodOptions(batch_size=args.batch_size, workers=workers,
                            on_step=lambda step: marks.append(time.perf_counter()))
    result = compute_plan(st, lm.model, lm.shape, calib, options)
    s = result.stats
    steps = [b - a for a, b in itertools.pairwise(marks[1:])]  # steps 2..n
    return {"workers": workers, "total_s": marks[-1] - marks[0], "search_s": s.wall_s,
            "steps": len(result.plan.decisions), "step_s": steps,
            "evaluations": s.candidate_evaluations, "layer_forwards": s.layer_forwards,
            "decisions": [(d.layer, d.action, d.score) for d in result.plan.decisions]}


def coordination(lm: Any, calib: torch.Tensor, workers: int, args: argparse.Namespace
                 ) -> dict[str, Any]:
    """Start-up of a RayEngine, then round trips of empty batches to every actor."""
    import ray

    options = MethodOptions(batch_size=args.batch_size, workers=workers)
    t0 = time.perf_counter()
    started = dist.connect(options)
    t1 = time.perf_counter()
    ref = ray.put(lm.model)
    t2 = time.perf_counter()
    del ref
    engine = dist.RayEngine(lm.model, lm.shape, calib, Plan.dense(lm.shape), options)
    engine.current()
    t3 = time.perf_counter()
    pings = []
    for _ in range(args.pings):
        a = time.perf_counter()
        list(engine.score_all([]))
        pings.append(time.perf_counter() - a)
    engine.close()
    if started:
        ray.shutdown()
    pings.sort()
    return {"ray_init_s": t1 - t0, "put_model_s": t2 - t1, "actors_ready_s": t3 - t2,
            "start_s": t3 - t0, "latency_s": pings[len(pings) // 2], "pings_s": pings}


def load_time() -> float:
    start = time.perf_counter()
    load_demo()
    return time.perf_counter() - start


def scaling(one: dict[str, Any], many: dict[str, Any], coord: dict[str, Any]
            ) -> dict[str, Any]:
    t = one["search_s"] / one["layer_forwards"]
    n, steps = many["workers"], max(1, many["steps"])
    extra = (many["layer_forwards"] - one["layer_forwards"]) / (n * steps)
    rows = []
    for k in (1, 2, 4, 8, 16, 32):
        work = t * (one["layer_forwards"] / k + (steps * extra if k > 1 else 0.0))
        over = coord["start_s"] + steps * coord["latency_s"] if k > 1 else 0.0
        rows.append({"workers": k, "predicted_s": work + over, "compute_s": work,
                     "overhead_s": over, "speedup": one["search_s"] / (work + over)})
    return {"layer_forward_s": t, "extra_forwards_per_actor_step": extra, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", type=float, default=0.05)
    p.add_argument("--calib", default="8x128", help="as the example spec")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4, help="as prunec build searches")
    p.add_argument("--pings", type=int, default=20)
    p.add_argument("--out", default="bench/results/search_scale.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # one torch thread per worker, the coordinator's search too
    run_on = machine.start()
    load_s = load_time()
    lm = load_demo()
    calib = tokens(lm.tokenizer, "kjv-calib.txt", *map(int, args.calib.split("x")))
    one = search(lm, calib, 1, args)
    many = search(lm, calib, args.workers, args)
    coord = coordination(lm, calib, args.workers, args)
    coord["load_model_s"] = load_s
    model = scaling(one, many, coord)
    same = one["decisions"] == many["decisions"]
    write_json(Path(args.out), {"machine": run_on.entry(), "args": vars(args),
                                "same_plan": same, "runs": [one, many],
                                "coordination": coord, "scaling_model": model})
    report(one, many, coord, model, same)


def report(one: dict[str, Any], many: dict[str, Any], coord: dict[str, Any],
           model: dict[str, Any], same: bool) -> None:
    print(f"same decisions and scores at workers 1 and {many['workers']}: {same}")
    print(f"{'workers':>8}{'steps':>7}{'evals':>7}{'fwd':>9}{'search s':>10}{'total s':>9}")
    for r in (one, many):
        print(f"{r['workers']:>8}{r['steps']:>7}{r['evaluations']:>7}"
              f"{r['layer_forwards']:>9.1f}{r['search_s']:>10.1f}{r['total_s']:>9.1f}")
    print(f"per candidate (in process): {one['search_s'] / max(1, one['evaluations']):.3f} s; "
          f"round trip to every actor: {coord['latency_s'] * 1e3:.1f} ms; start-up "
          f"{coord['start_s']:.1f} s (ray {coord['ray_init_s']:.1f}, put model "
          f"{coord['put_model_s']:.2f}, actors {coord['actors_ready_s']:.1f}); "
          f"load_model {coord['load_model_s']:.1f} s")
    print(f"{'workers':>8}{'predicted s':>13}{'compute s':>11}{'overhead s':>12}{'speedup':>9}")
    for r in model["rows"]:
        print(f"{r['workers']:>8}{r['predicted_s']:>13.1f}{r['compute_s']:>11.1f}"
              f"{r['overhead_s']:>12.1f}{r['speedup']:>9.2f}")


if __name__ == "__main__":
    main()

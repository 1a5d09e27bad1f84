"""A static plan for people: a PNG (matplotlib, Agg) and a self-contained HTML page.

``write_plan_report(result, shape, out_dir)`` writes ``plan-report.png`` (per layer: the
fraction of MLP channels and of query heads kept, removed blocks marked; below, calibration
perplexity after each search step, coloured by stage, dense score dashed) and
``plan-report.html`` (the PNG inlined as base64, a summary, the per-layer table and every
decision with its score and spec line). No network, no external files. ``rich_progress``
turns a method's progress events into a rich progress bar with an ETA per task.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan, param_count

STAGE_COLOURS = {"blocks": "#d62728", "mlp": "#1f77b4", "heads": "#2ca02c"}


def layer_fractions(plan: Plan, shape: ModelShape) -> list[tuple[float, float]]:
    """Per layer: (fraction of MLP channels kept, fraction of heads kept); 0 when removed."""
    out = []
    for lp in plan.layers:
        mlp = 0.0 if lp.mlp_removed else (
            1.0 if lp.kept_channels is None else len(lp.kept_channels) / shape.intermediate)
        heads = 0.0 if lp.attn_removed else (
            1.0 if lp.kept_heads is None else len(lp.kept_heads) / shape.n_heads)
        out.append((mlp, heads))
    return out


def plot_plan(result: Any, shape: ModelShape, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan, stats = result.plan, result.stats
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), constrained_layout=True)
    fr = layer_fractions(plan, shape)
    xs = range(len(fr))
    top.bar([x - 0.2 for x in xs], [m for m, _ in fr], 0.4, label="MLP channels kept",
            color="#1f77b4")
    top.bar([x + 0.2 for x in xs], [h for _, h in fr], 0.4, label="heads kept", color="#2ca02c")
    for lp in plan.layers:
        if lp.mlp_removed:
            top.plot(lp.index - 0.2, 0.03, "x", color="#d62728", ms=9)
        if lp.attn_removed:
            top.plot(lp.index + 0.2, 0.03, "v", color="#d62728", ms=8)
    top.set(xlabel="layer", ylabel="fraction kept", ylim=(0, 1.05),
            title=f"{plan.method}: {param_count(shape, plan) / 1e6:.1f}M params "
                  "(x = MLP removed, v = attention removed)")
    top.legend(loc="lower right")
    _plot_trajectory(bottom, stats)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_trajectory(ax: Any, stats: Any) -> None:
    traj = stats.trajectory
    if not traj:
        ax.text(0.5, 0.5, "no search: a manual or one-shot plan has no trajectory", ha="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    for stage, colour in STAGE_COLOURS.items():
        pts = [(t.step + 1, t.score) for t in traj if t.stage == stage]
        if pts:
            ax.plot(*zip(*pts), "o-", color=colour, ms=3, label=stage)
    if stats.dense_score:
        ax.axhline(stats.dense_score, ls="--", color="grey", label="dense")
    ax.set(xlabel="search step", ylabel="calibration perplexity", yscale="log")
    ax.legend()


def write_plan_report(result: Any, shape: ModelShape, out_dir: str | Path) -> tuple[Path, Path]:
    """Write plan-report.png and plan-report.html into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_plan(result, shape, out / "plan-report.png")
    page = out / "plan-report.html"
    page.write_text(render_html(result, shape, png.read_bytes()), encoding="utf-8")
    return png, page


def render_html(result: Any, shape: ModelShape, png: bytes) -> str:
    plan, s = result.plan, result.stats
    dense = param_count(shape, Plan.dense(shape))
    kept = param_count(shape, plan)
    share = f"{kept:,} of {dense:,} ({1 - kept / dense:.1%} removed)"
    summary = [("method", plan.method), ("parameters", share),
               ("dense calibration perplexity", _num(s.dense_score)),
               ("final calibration perplexity", _num(s.trajectory[-1].score if s.trajectory
                                                     else None)),
               ("candidate evaluations", str(s.candidate_evaluations)),
               ("layer-forwards", f"{s.layer_forwards:.1f}"), ("wall time", f"{s.wall_s:.1f} s"),
               ("from lock", str(getattr(result, "from_lock", False)))]
    parts = ["<!doctype html><meta charset='utf-8'><title>prunec plan report</title>",
             ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
              "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style>"),
             f"<h1>Plan report: {html.escape(plan.method)}</h1>",
             _table(("", ""), summary),
             f"<p><img alt='plan' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
             "<h2>Layers</h2>", _table(("layer", "attention", "MLP"), _layer_rows(plan, shape)),
             "<h2>Decisions</h2>",
             _table(("step", "stage", "layer", "action", "score", "spec line"),
                    [(str(d.step), d.stage, str(d.layer), d.action, _num(d.score),
                      str(d.spec_line)) for d in plan.decisions])]
    return "\n".join(parts) + "\n"


def _layer_rows(plan: Plan, shape: ModelShape) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for lp in plan.layers:
        attn = "removed" if lp.attn_removed else (
            f"{len(lp.kept_heads or range(shape.n_heads))}/{shape.n_heads} heads")
        mlp = "removed" if lp.mlp_removed else (
            f"{len(lp.kept_channels or range(shape.intermediate))}/{shape.intermediate}")
        rows.append((str(lp.index), attn, mlp))
    return rows


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@contextmanager
def rich_progress() -> Iterator[Callable[[Any], None]]:
    """A progress callback for ``MethodOptions.progress`` drawing rich bars with ETAs."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total}"), TextColumn("{task.fields[score]}"),
                  TimeRemainingColumn()) as progress:
        tasks: dict[str, Any] = {}

        def update(event: Any) -> None:
            if event.task not in tasks:
                tasks[event.task] = progress.add_task(event.task, total=event.total, score="")
            score = "" if event.score is None else f"best ppl {event.score:.3f}"
            progress.update(tasks[event.task], completed=event.done, total=event.total,
                            score=score)

        yield update

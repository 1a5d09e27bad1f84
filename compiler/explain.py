"""What a build of a spec would do, in words and in a table — without running anything.

``explain(spec, shape, spec_dir)`` returns ``Row``s (section, setting, value) and
``steps`` (sentences, in build order); ``print_explanation`` renders them with rich.
Parameter counts use ``plan.param_count``: exact for a manual plan (counts without indices
are costed as if the first N were kept — which N does not change the count), an estimate
``dense * (1 - target)`` for a static parameter target, and "decided by the search" where
no number can be known before the build. Reads file sizes, never file contents or weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from prunec.compiler import budget, files
from prunec.compiler.blocks import DISTRIBUTION, IMPORTANCE
from prunec.compiler.checks import history_dataset, resolved
from prunec.compiler.ir import (
    BlockKind,
    KeepChannels,
    KeepHeads,
    ManualPlan,
    ModelShape,
    OnnxExport,
    ParamsGate,
    PerplexityGate,
    ProbePolicy,
    Reconstruct,
    RemoveBlock,
    Spec,
    StaticMethod,
    StaticPrune,
)
from prunec.compiler.outputs import output_dir
from prunec.compiler.plan import LayerPlan, Plan, param_count


@dataclass(frozen=True)
class Row:
    section: str
    setting: str
    value: str


@dataclass(frozen=True)
class Explanation:
    rows: tuple[Row, ...]
    steps: tuple[str, ...]


def explain(spec: Spec, shape: ModelShape, spec_dir: Path) -> Explanation:
    rows = _model_rows(spec, shape) + _dataset_rows(spec, spec_dir)
    dense = _count(budget.dense_params(shape))
    steps = [f"Load {_model_words(spec)} ({shape.n_layers} layers, {dense} parameters)."]
    if spec.static:
        rows += _static_rows(spec.static, shape, spec.refit_damp())
        steps.append(_static_words(spec.static, shape))
        steps += _refit_words(spec.static.reconstruction, spec.refit_damp())
    if spec.plan:
        rows += _plan_rows(spec.plan, shape, spec.refit_damp())
        steps.append(f"Apply the manual plan ({len(spec.plan.actions)} actions).")
        steps += _refit_words(spec.plan.reconstruct, spec.refit_damp())
    if spec.probe:
        rows += _probe_rows(spec.probe, shape, history_dataset(spec))
        steps.append(_probe_words(spec.probe, shape))
    rows += _output_rows(spec, spec_dir)
    steps += _output_words(spec)
    return Explanation(tuple(rows), tuple(steps))


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _bytes(n: int) -> str:
    """Human size: 512 B, 339 KiB, 1.2 MiB.

    >>> _bytes(512), _bytes(347512), _bytes(5 * 2**20)
    ('512 B', '339 KiB', '5.0 MiB')
    """
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


# ------------------------------------------------------------------------ model


def _model_words(spec: Spec) -> str:
    m = spec.model
    where = "the demo model SmolLM2-135M-Instruct" if m.location is None else (
        f"{m.source.value} model {m.location}" + (f"@{m.revision}" if m.revision else ""))
    return f"{where} in {m.dtype.value}"


def _model_rows(spec: Spec, shape: ModelShape) -> list[Row]:
    dense = budget.dense_params(shape)
    return [
        Row("model", "source", _model_words(spec)),
        Row("model", "shape", f"{shape.architecture}, {shape.n_layers} layers, hidden "
            f"{shape.hidden}, MLP {shape.intermediate}, {shape.n_heads} heads over "
            f"{shape.n_kv_heads} KV heads (head_dim {shape.head_dim})"),
        Row("model", "parameters", f"{dense:,} ({_count(dense)})"),
    ]


def _dataset_rows(spec: Spec, spec_dir: Path) -> list[Row]:
    rows = []
    for d in spec.datasets:
        r = files.resolve(d, spec_dir)
        size = f"{_bytes(r.size_bytes())} in {len(r.files)} file(s)"
        cut = f", slice {_pct(d.slice.start)} .. {_pct(d.slice.end)}" if d.slice else ""
        field = f", field '{d.field}'" if d.field else ""
        rows.append(Row("dataset", d.name, f"{d.format.value} {', '.join(d.paths)} ({size}); "
                        f"{d.samples} x {d.seq_len} tokens, seed {d.seed}{cut}{field}"))
    return rows


# ----------------------------------------------------------------------- static


def _static_rows(s: StaticPrune, shape: ModelShape, damp: str) -> list[Row]:
    rows = [Row("static", "method", s.method.value), Row("static", "target", _target(s))]
    if s.method.value == "multipruner":
        d = s.distribution
        share = f"{DISTRIBUTION.shown} (default)" if d is None else (
            f"{d.blocks:.0%} blocks : {d.mlp:.0%} MLP : {d.heads:.0%} heads")
        rows += [Row("static", "distribution", share),
                 Row("static", "steps", f"{budget.mlp_step(s, shape)} MLP channels, "
                     f"{budget.head_step(s)} KV group(s) of heads"),
                 Row("static", "reorder", (
                     f"on, by {s.importance.value if s.importance else IMPORTANCE.shown}"
                     if s.reorder else "off"))]
    rows += [Row("static", "score on", s.score_dataset or "(weights only)"),
             Row("static", "protect", _layers(resolved(s.protect, shape.n_layers)))]
    if s.method is not StaticMethod.BLOCKPRUNER:
        rows.append(Row("static", "refit", _refit(s.reconstruction, damp)))
    goal = budget.params_goal(s, shape)
    if goal is not None:
        dense = budget.dense_params(shape)
        after = dense - goal
        rows.append(Row("static", "parameters", f"{_count(dense)} -> about {_count(after)}"))
    return rows


def _target(s: StaticPrune) -> str:
    t = s.target
    if t.params is not None:
        return f"{_pct(t.params)} of all parameters"
    parts = [f"{_pct(v)} of {k}" for k, v in (("MLP channels", t.mlp), ("heads", t.heads),
                                              ("blocks", t.blocks)) if v is not None]
    return ", ".join(parts) + f" ({s.scope.value})"


def _static_words(s: StaticPrune, shape: ModelShape) -> str:
    how = "a greedy search scored by calibration perplexity" if s.method.value in (
        "multipruner", "blockpruner") else "a one-shot ranking"
    return f"Prune {_target(s)} with {s.method.value} ({how})."


def _layers(idx: set[int]) -> str:
    return ", ".join(map(str, sorted(idx))) if idx else "none"


# ------------------------------------------------------------------------- plan


def estimate_manual_plan(manual: ManualPlan, shape: ModelShape) -> Plan:
    """The plan a manual plan yields, with the first N kept where only a count is given."""
    plan = Plan.dense(shape, "manual")
    for a in manual.actions:
        for i in a.layers.resolve(shape.n_layers):
            plan = plan.with_layer(_apply(plan.layers[i], a, shape))
    return plan


def _apply(lp: LayerPlan, a: object, shape: ModelShape) -> LayerPlan:
    if isinstance(a, RemoveBlock):
        if a.block is BlockKind.ATTN:
            return replace(lp, attn_removed=True, kept_heads=None)
        return replace(lp, mlp_removed=True, kept_channels=None)
    if isinstance(a, KeepChannels):
        return replace(lp, kept_channels=a.indices or tuple(range(a.count or 0)))
    if isinstance(a, KeepHeads):
        return replace(lp, kept_heads=a.indices or _balanced_heads(a.count or 0, shape))
    return lp


def _balanced_heads(n: int, shape: ModelShape) -> tuple[int, ...]:
    per = max(n // shape.n_kv_heads, 1)
    groups = n // per
    return tuple(g * shape.group_size + j for g in range(groups) for j in range(per))


def _plan_rows(manual: ManualPlan, shape: ModelShape, damp: str) -> list[Row]:
    plan = estimate_manual_plan(manual, shape)
    dense = budget.dense_params(shape)
    after = param_count(shape, plan)
    rows = [Row("plan", f"line {a.span.line}", _action_words(a, shape)) for a in manual.actions]
    rows.append(Row("plan", "parameters", f"{_count(dense)} -> {_count(after)} "
                    f"(-{(dense - after) / dense:.1%})"))
    if manual.reconstruct is not Reconstruct.OFF:
        rows.append(Row("plan", "refit", _refit(manual.reconstruct, damp)
                        + f", on {manual.score_dataset}"))
    return rows


def _refit(setting: Reconstruct, damp: str) -> str:
    return f"{setting.value} (damp {damp})" if setting is Reconstruct.LEAST_SQUARES \
        else setting.value


def _refit_words(setting: Reconstruct, damp: str) -> list[str]:
    """The build step a reconstruction adds (none for ``off``)."""
    if setting is Reconstruct.OFF:
        return []
    if setting is Reconstruct.BIAS:
        return [("Fold the cut units' mean calibration contribution into o_proj / down_proj "
                 "biases (reconstruct = bias).")]
    return [("Refit the kept o_proj / down_proj columns and a bias by ridge regression on "
             "calibration activations, layer by layer (reconstruct = least-squares, damp "
             f"{damp}).")]


def _action_words(a: object, shape: ModelShape) -> str:
    if isinstance(a, RemoveBlock):
        where = _layers(set(a.layers.resolve(shape.n_layers)))
        return f"remove the {a.block.value.upper()} block of layer(s) {where}"
    assert isinstance(a, (KeepChannels, KeepHeads))
    what = "MLP channels" if isinstance(a, KeepChannels) else "heads"
    which = f"{a.count} {what} (largest weights)" if a.indices is None else (
        f"{what} {', '.join(map(str, a.indices))}")
    return f"keep {which} in layer(s) {_layers(set(a.layers.resolve(shape.n_layers)))}"


# ------------------------------------------------------------------------ probe


def _probe_rows(p: ProbePolicy, shape: ModelShape, history: str | None) -> list[Row]:
    skip = resolved(p.skip, shape.n_layers)
    live = max(shape.n_layers - len(skip), 1)
    per_layer = budget.layer_ratio(p.ratio, shape.n_layers, len(skip))
    return [
        Row("probe", "ratio", f"{_pct(p.ratio)} model-wide = {_pct(per_layer)} in each of "
            f"{live} layers"),
        Row("probe", "targets", ", ".join(t.value for t in p.targets)),
        Row("probe", "skip", _layers(skip)),
        Row("probe", "probe", _probe_what(p)),
        Row("probe", "history", ("read only" if p.mode.value == "prompt" else
                                 f"EMA momentum {p.momentum}") +
            f", initialised from {history or '(none)'}"),
        Row("probe", "metric", f"{p.metric.value}, kept counts rounded to {p.round_to}"),
        Row("probe", "compensate", "skipped units add the probe's mean activation times their "
            "weights" if p.compensate else "off (skipped units contribute nothing)"),
    ]


def _probe_what(p: ProbePolicy) -> str:
    if p.mode.value == "full-batch":
        return "the whole batch"
    if p.mode.value == "prompt" and p.kept.value == "per-batch":
        return (f"{_pct(p.token_fraction)} of tokens x {_pct(p.sample_fraction)} of the "
                "batch's prompts, once per batch (one kept set for the batch)")
    if p.mode.value == "prompt":
        return f"{_pct(p.token_fraction)} of each prompt's tokens, once per sequence"
    return f"{_pct(p.token_fraction)} of tokens x {_pct(p.sample_fraction)} of samples"


def _probe_words(p: ProbePolicy, shape: ModelShape) -> str:
    units = f"{_pct(p.ratio)} of {' and '.join(t.value for t in p.targets)}"
    if p.mode.value == "prompt":
        return (f"At prefill, probe each prompt (dense) and drop {units} for its decode "
                f"({p.metric.value}).")
    return f"At run time, probe each batch and drop {units} per batch ({p.metric.value})."


# ----------------------------------------------------------------------- output


def _output_rows(spec: Spec, spec_dir: Path) -> list[Row]:
    rows = [Row("evaluate", "datasets", ", ".join(spec.eval_datasets()) or "none")]
    for g in spec.gates:
        if isinstance(g, PerplexityGate):
            bounds = [f"<= {g.relative:g}x dense" if g.relative else "",
                      f"<= {g.absolute:g}" if g.absolute else ""]
            rows.append(Row("gate", f"perplexity({g.dataset})", " and ".join(b for b in bounds
                                                                               if b)))
        elif isinstance(g, ParamsGate):
            rows.append(Row("gate", "parameters", f"<= {g.max_params:,}"))
    for e in spec.exports:
        rows.append(_export_row(e))
    rows.append(Row("output", "directory", str(output_dir(spec, spec_dir))))
    return rows


def _export_row(e: object) -> Row:
    if isinstance(e, OnnxExport):
        prov = ", ".join(p.value for p in e.providers)
        gating = f"on (max_len {e.max_len})" if e.gating else "off"
        static = "" if e.gating else (f", kv_cache {'on' if e.kv_cache else 'off'}, "
                                      f"dtype {e.dtype.value}")
        return Row("export", "onnx", f"{e.file}, opset {e.opset}, gating {gating}, "
                   f"fuse {'on' if e.fuse else 'off'}{static}, providers [{prov}]")
    return Row("export", "hf", getattr(e, "directory", ""))


def _output_words(spec: Spec) -> list[str]:
    out = []
    if spec.eval_datasets():
        out.append(f"Measure perplexity on {', '.join(spec.eval_datasets())}"
                   + (f" and check {len(spec.gates)} gate(s)." if spec.gates else "."))
    if spec.exports:
        out.append("Export " + ", ".join(
            "ONNX" if isinstance(e, OnnxExport) else "a Hugging Face checkpoint"
            for e in spec.exports) + ".")
    return out


def print_explanation(exp: Explanation, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    for i, step in enumerate(exp.steps, 1):
        console.print(Text(f"{i}. {step}"), highlight=False)
    table = Table(show_header=True, header_style="bold")
    for col in ("section", "setting", "value"):
        table.add_column(col, overflow="fold")
    last = ""
    for r in exp.rows:
        table.add_row(Text(r.section if r.section != last else ""), Text(r.setting),
                      Text(r.value))
        last = r.section
    console.print(table)

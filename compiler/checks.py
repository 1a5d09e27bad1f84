"""Semantic checks of a lowered ``Spec``: names, ranges, files, and the model's shape.

Each check is a plain function ``(Context) -> Iterator[Diagnostic]``; they run in the
order of ``CHECKS`` (one tuple a reader can scan) and never stop early, so one run reports
every problem. Checks that need the model's shape skip themselves when it is unknown
(``ctx.shape is None``: the model could not be read, which is reported elsewhere). Only
the config is ever needed, never weights. Policies (documented in docs/language.md):
- calibration data (``score``, ``history``) and evaluation data (``evaluate`` and the
  perplexity gates) that read a shared file must use disjoint slices: an error (P0204),
  because a gate measured on calibration text approves a model it should reject;
- a spec has a static method or a manual plan, not both (P0208): the build applies a
  manual plan instead of any static method, so the pair would silently lose one;
- a kept head count must be equal per KV group or whole KV groups (P0206).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prunec.compiler import files, names
from prunec.compiler.budget import dense_params, layer_ratio
from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.families import family, rope_problem, window_problem
from prunec.compiler.ir import (
    MAX_OPSET,
    MAX_SEQ,
    MIN_OPSET,
    MIN_SEQ,
    DatasetDecl,
    KeepChannels,
    KeepHeads,
    KeptScope,
    LayerSelector,
    ModelShape,
    OnnxExport,
    ParamsGate,
    PerplexityGate,
    ProbeMetric,
    ProbeMode,
    ProbePolicy,
    Reconstruct,
    RemoveBlock,
    SelectorKind,
    SliceRange,
    Spec,
    StaticMethod,
    fusable,
)
from prunec.compiler.syntax import suggest

SEARCH = (StaticMethod.MULTIPRUNER, StaticMethod.BLOCKPRUNER)
NEEDS_DATA = (StaticMethod.MULTIPRUNER, StaticMethod.BLOCKPRUNER, StaticMethod.WANDA_SP,
              StaticMethod.FLAP)


@dataclass(frozen=True)
class Context:
    spec: Spec
    shape: ModelShape | None
    spec_dir: Path


Check = Callable[[Context], Iterator[Diagnostic]]


def run_checks(ctx: Context) -> list[Diagnostic]:
    return [d for check in CHECKS for d in check(ctx)]


def _err(code: str, msg: str, span: Span, hint: str | None = None) -> Diagnostic:
    return Diagnostic.error(code, msg, span, hint)


# ----------------------------------------------------------------------- datasets


def dataset_refs(ctx: Context) -> Iterator[tuple[str, Span, str]]:
    """(name, span, role) of every dataset reference in the spec."""
    s = ctx.spec
    score = s.score_dataset()
    if score:
        yield score, (s.static or s.plan or s).span, "score"
    if s.probe and s.probe.history_dataset:
        yield s.probe.history_dataset, s.probe.span, "history"
    for name in s.evaluate:
        yield name, s.span, "evaluate"
    for g in s.gates:
        if isinstance(g, PerplexityGate):
            yield g.dataset, g.span, "gate"


def check_undefined_datasets(ctx: Context) -> Iterator[Diagnostic]:
    declared = {d.name for d in ctx.spec.datasets}
    for name, span, role in dataset_refs(ctx):
        if name not in declared:
            hint = suggest(name, sorted(declared)) if declared else "declare it: dataset NAME text ..."
            yield _err("P0201", f"{role} refers to the undefined dataset '{name}'", span, hint)


def check_unused_datasets(ctx: Context) -> Iterator[Diagnostic]:
    used = {name for name, _, _ in dataset_refs(ctx)}
    for d in ctx.spec.datasets:
        if d.name not in used:
            yield Diagnostic.warning("P0220", f"dataset '{d.name}' is never used", d.span,
                                     "use it in score, history, evaluate or a gate")


def check_dataset_sizes(ctx: Context) -> Iterator[Diagnostic]:
    for d in ctx.spec.datasets:
        for key, value, low in (("samples", d.samples, 1), ("seq_len", d.seq_len, 2),
                                ("seed", d.seed, 0)):
            if value < low:
                yield _err("P0216", f"dataset {d.name}: {key} must be at least {low}", d.span)


def check_data_files(ctx: Context) -> Iterator[Diagnostic]:
    for d in ctx.spec.datasets:
        for problem in files.resolve(d, ctx.spec_dir).problems:
            yield _err("P0302", f"dataset {d.name}: {problem}", d.span,
                       f"paths are relative to the spec's folder ({ctx.spec_dir})")


def history_dataset(spec: Spec) -> str | None:
    """The dataset that initialises the probe history: ``history``, else the static score
    dataset (None without a probe policy, or when there is neither: P0212)."""
    if spec.probe is None:
        return None
    if spec.probe.history_dataset:
        return spec.probe.history_dataset
    return spec.static.score_dataset if spec.static else None


def calibration_names(spec: Spec) -> set[str]:
    score = spec.score_dataset()
    names = {score} if score else set()
    history = history_dataset(spec)
    return names | {history} if history else names


def check_overlap(ctx: Context) -> Iterator[Diagnostic]:
    known = {d.name: d for d in ctx.spec.datasets}
    calib = [known[n] for n in sorted(calibration_names(ctx.spec)) if n in known]
    evals = [known[n] for n in ctx.spec.eval_datasets() if n in known]
    for c in calib:
        shared = _real_files(c, ctx.spec_dir)
        for e in evals:
            common = shared & _real_files(e, ctx.spec_dir)
            if common and _overlaps(c.slice, e.slice):
                yield _overlap_error(c.name, e.name, e.span)


def _real_files(d: DatasetDecl, spec_dir: Path) -> set[Path]:
    return {p.resolve() for p in files.resolve(d, spec_dir).files}


def _overlaps(a: SliceRange | None, b: SliceRange | None) -> bool:
    """Whether two slices of one stream share tokens (no slice = the whole stream).

    >>> s = Span("s", 1, 1, 1, 1)
    >>> _overlaps(SliceRange(0.0, 0.5, s), SliceRange(0.5, 1.0, s))
    False
    >>> _overlaps(None, SliceRange(0.9, 1.0, s))
    True
    """
    lo_a, hi_a = (a.start, a.end) if a else (0.0, 1.0)
    lo_b, hi_b = (b.start, b.end) if b else (0.0, 1.0)
    return lo_a < hi_b and lo_b < hi_a


def _overlap_error(calib: str, ev: str, span: Span) -> Diagnostic:
    what = f"dataset '{calib}' is used both to calibrate and to evaluate" if calib == ev else (
        f"calibration dataset '{calib}' and evaluation dataset '{ev}' share files and their "
        "slices overlap")
    return _err("P0204", what, span,
                "give them disjoint slices, e.g. slice = 0% .. 50% and slice = 50% .. 100%")


# ---------------------------------------------------------------------- selectors


def all_selectors(spec: Spec) -> Iterator[LayerSelector]:
    if spec.static:
        yield from spec.static.protect
    if spec.probe:
        yield from spec.probe.skip
    if spec.plan:
        yield from (a.layers for a in spec.plan.actions)


def check_selectors(ctx: Context) -> Iterator[Diagnostic]:
    if ctx.shape is None:
        return
    n = ctx.shape.n_layers
    for sel in all_selectors(ctx.spec):
        bad = [e for e in (sel.start, sel.stop) if e is not None and not _endpoint_ok(sel, e, n)]
        if bad or not sel.resolve(n):
            yield _err("P0205", f"layer selector {_show(sel)} is outside the model's {n} "
                       f"layers", sel.span, f"layers are numbered 0..{n - 1} (or -{n}..-1)")


def _endpoint_ok(sel: LayerSelector, e: int, n: int) -> bool:
    if sel.kind is SelectorKind.SLICE:
        return -n <= e <= n
    return -n <= e < n


def _show(sel: LayerSelector) -> str:
    a = "" if sel.start is None else str(sel.start)
    b = "" if sel.stop is None else str(sel.stop)
    body = {SelectorKind.ALL: "*", SelectorKind.INDEX: a, SelectorKind.SLICE: f"{a}:{b}",
            SelectorKind.RANGE: f"{a}..{b}"}[sel.kind]
    return f"layers[{body}]"


def resolved(sels: tuple[LayerSelector, ...], n: int) -> set[int]:
    return {i for s in sels for i in s.resolve(n)}


# ------------------------------------------------------------------- static prune


def check_static_options(ctx: Context) -> Iterator[Diagnostic]:
    s = ctx.spec.static
    if s is None:
        return
    yield from _target_fits(ctx)
    if s.score_dataset is None and s.method in NEEDS_DATA:
        yield _err("P0212", f"{s.method.value} needs a calibration dataset to score with", s.span,
                   "add score = <dataset> to the prune block")


def _target_fits(ctx: Context) -> Iterator[Diagnostic]:
    s = ctx.spec.static
    assert s is not None
    t = s.target  # which keys apply to which method: the target schema (blocks.py)
    values = [v for v in (t.params, t.mlp, t.heads, t.blocks) if v is not None]
    if values and (max(values) >= 1.0 or sum(values) <= 0.0):
        yield _err("P0213", "the target must remove something and leave something", t.span,
                   "a target is above 0% and below 100%")


def check_steps(ctx: Context) -> Iterator[Diagnostic]:
    s, shape = ctx.spec.static, ctx.shape
    if s is None or s.steps is None or shape is None:
        return
    mlp, heads = s.steps.mlp_channels, s.steps.head_groups
    if mlp is not None and not 1 <= mlp <= shape.intermediate:
        yield _err("P0216", f"MLP step {mlp} is outside 1..{shape.intermediate}", s.steps.span)
    if heads is not None and not 1 <= heads <= shape.n_kv_heads:
        yield _err("P0206", f"a head step of {heads} KV groups is outside 1.."
                   f"{shape.n_kv_heads}", s.steps.span,
                   f"the model has {shape.n_kv_heads} KV groups of {shape.group_size} heads")


def check_protect_all(ctx: Context) -> Iterator[Diagnostic]:
    s, shape = ctx.spec.static, ctx.shape
    if s is not None and shape is not None and s.protect and len(
            resolved(s.protect, shape.n_layers)) >= shape.n_layers:
        yield _err("P0219", "every layer is protected: nothing can be pruned", s.span)


def check_reconstruct(ctx: Context) -> Iterator[Diagnostic]:
    """``reconstruct`` needs calibration data (P0212) and a width cut to compensate (P0211);
    least-squares with ``damp = 0`` needs more calibration tokens than the widest kept
    input (P0228: the Gram matrix would be singular; any damp > 0 makes the ridge
    well-posed, and a singular Gram at build time falls back to minimum-norm lstsq)."""
    spec = ctx.spec
    owner = spec.static or spec.plan
    setting = (spec.static.reconstruction if spec.static else
               spec.plan.reconstruct if spec.plan else Reconstruct.OFF)
    if owner is None or setting is Reconstruct.OFF:
        return
    score = spec.score_dataset()
    if score is None and not (spec.static and spec.static.method in NEEDS_DATA):
        yield _err("P0212", f"reconstruct = {setting.value} needs a calibration dataset",
                   owner.span, f"add score = <dataset> to the {_block(spec)} block")
    if spec.plan is not None and not any(isinstance(a, (KeepChannels, KeepHeads))
                                         for a in spec.plan.actions):
        yield _err("P0211", "reconstruct applies to width cuts (keep ... in ...); this plan "
                   "only removes blocks", spec.plan.span, "drop reconstruct")
    yield from _gram_rank(ctx, setting, owner.damp, score, owner.span)


def _block(spec: Spec) -> str:
    return "prune" if spec.static else "plan"


def _gram_rank(ctx: Context, setting: Reconstruct, damp: float | None, score: str | None,
               span: Span) -> Iterator[Diagnostic]:
    known = {d.name: d for d in ctx.spec.datasets}
    if setting is not Reconstruct.LEAST_SQUARES or damp != 0 or ctx.shape is None:
        return
    if score not in known:
        return
    d, shape = known[score], ctx.shape
    tokens, width = d.samples * d.seq_len, max(shape.intermediate, shape.n_heads * shape.head_dim)
    if tokens <= width:
        yield _err("P0228", f"least-squares with damp = 0 needs more than {width} calibration "
                   f"tokens; {score} has {tokens} ({d.samples} x {d.seq_len})", span,
                   "give damp > 0 (the ridge handles a rank-deficient Gram) or more samples")


# -------------------------------------------------------------------- manual plan


def check_plan_actions(ctx: Context) -> Iterator[Diagnostic]:
    if ctx.spec.plan is None or ctx.shape is None:
        return
    for a in ctx.spec.plan.actions:
        if isinstance(a, KeepHeads):
            yield from _heads_fit(a, ctx.shape)
        elif isinstance(a, KeepChannels):
            yield from _channels_fit(a, ctx.shape)


def _heads_fit(a: KeepHeads, shape: ModelShape) -> Iterator[Diagnostic]:
    n, kv, g = shape.n_heads, shape.n_kv_heads, shape.group_size
    ok = sorted({c for c in range(kv, n + 1, kv)} | {c for c in range(g, n + 1, g)})
    if a.count is not None and not 1 <= a.count <= n:
        yield _err("P0207", f"cannot keep {a.count} of {n} heads", a.span,
                   "to drop all heads write remove layers[i].attn" if a.count == 0 else None)
    elif a.count is not None and a.count not in ok:
        yield _err("P0206", f"keeping {a.count} heads breaks grouped-query attention "
                   f"({n} query heads over {kv} KV heads)", a.span,
                   "keep " + ", ".join(map(str, ok)) + " heads (equal per KV group or whole "
                   "KV groups)")
    if a.indices is not None:
        yield from _indices_fit(a.indices, n, "head", a.span)
        per = [sum(1 for h in set(a.indices) if h // g == k) for k in range(kv)]
        if len({c for c in per if c}) > 1:
            yield _err("P0206", f"kept heads per KV group {per} are unequal", a.span,
                       f"heads {g}k..{g}k+{g - 1} share KV head k; keep the same number "
                       "in every kept group")


def _channels_fit(a: KeepChannels, shape: ModelShape) -> Iterator[Diagnostic]:
    n = shape.intermediate
    if a.count is not None and not 1 <= a.count <= n:
        yield _err("P0207", f"cannot keep {a.count} of {n} MLP channels", a.span,
                   "to drop the whole MLP write remove layers[i].mlp" if a.count == 0 else None)
    if a.indices is not None:
        yield from _indices_fit(a.indices, n, "channel", a.span)


def _indices_fit(idx: tuple[int, ...], n: int, what: str, span: Span) -> Iterator[Diagnostic]:
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        yield _err("P0207", f"{what} index {bad[0]} is outside 0..{n - 1}", span)
    if len(set(idx)) != len(idx):
        yield _err("P0215", f"a {what} index is listed twice", span)


def plan_touches(ctx: Context) -> Iterator[tuple[int, str, Span]]:
    """(layer, 'attn'|'mlp', span) for every layer/sub-block a manual plan action changes."""
    assert ctx.spec.plan is not None and ctx.shape is not None
    for a in ctx.spec.plan.actions:
        part = a.block.value if isinstance(a, RemoveBlock) else (
            "attn" if isinstance(a, KeepHeads) else "mlp")
        for i in a.layers.resolve(ctx.shape.n_layers):
            yield i, part, a.span


def check_plan_conflicts(ctx: Context) -> Iterator[Diagnostic]:
    if ctx.spec.plan is None or ctx.shape is None:
        return
    seen: dict[tuple[int, str], Span] = {}
    for i, part, span in plan_touches(ctx):
        if (i, part) in seen and seen[(i, part)] != span:
            yield _err("P0209", f"layer {i}'s {part} is changed by two plan actions", span,
                       f"the other is at line {seen[(i, part)].line}")
        seen.setdefault((i, part), span)


def check_static_vs_plan(ctx: Context) -> Iterator[Diagnostic]:
    s, plan = ctx.spec.static, ctx.spec.plan
    if s is not None and plan is not None:
        yield _err("P0208", f"the spec has both a manual plan and prune {s.method.value}",
                   plan.span, f"a build applies the manual plan and would ignore prune "
                   f"{s.method.value}: keep one of them")


# -------------------------------------------------------------------------- probe


def check_probe(ctx: Context) -> Iterator[Diagnostic]:
    p = ctx.spec.probe
    if p is None:
        return
    if not 0.0 < p.ratio < 1.0:
        yield _err("P0213", "the probe ratio must be above 0% and below 100%", p.span)
    if p.round_to < 1:
        yield _err("P0216", "round must be at least 1", p.span)
    if p.compensate and p.metric is not ProbeMetric.PPSP:
        yield _err("P0222", f"compensate = on needs metric = ppsp, not {p.metric.value}", p.span,
                   "flap brings its own bias compensation; wanda-sp has none")
    if p.mode is ProbeMode.PROMPT and p.metric is not ProbeMetric.PPSP:
        yield _err("P0230", f"mode = prompt scores each prompt with ppsp, not {p.metric.value}",
                   p.span, "a static metric's kept set does not depend on the prompt")
    if p.kept is not KeptScope.PER_SEQUENCE and p.mode is not ProbeMode.PROMPT:
        yield _err("P0231", f"kept = {p.kept.value} needs mode = prompt, not {p.mode.value}",
                   p.span, "per-batch probing already chooses one kept set per batch")
    if history_dataset(ctx.spec) is None:
        yield _err("P0212", "the probe policy needs a calibration dataset for its history",
                   p.span, "add history = <dataset> to the probe block")
    yield from _probe_layers(ctx)


def _probe_layers(ctx: Context) -> Iterator[Diagnostic]:
    p, shape = ctx.spec.probe, ctx.shape
    if p is None or shape is None:
        return
    n = shape.n_layers
    live = n - len(resolved(p.skip, n))
    if live <= 0:
        yield _err("P0219", "every layer is skipped: the probe policy prunes nothing", p.span)
    elif layer_ratio(p.ratio, n, n - live) >= 1.0:
        yield _err("P0213", f"ratio {p.ratio:.0%} over the {live} unskipped layers means "
                   "removing every channel", p.span, "lower the ratio or skip fewer layers")
    if p.round_to > shape.intermediate:
        yield _err("P0216", f"round {p.round_to} exceeds the MLP width {shape.intermediate}",
                   p.span)
    yield from _probe_model(ctx)


def _probe_model(ctx: Context) -> Iterator[Diagnostic]:
    """What the gated forward cannot express (decided from config.json): a family whose
    support-table row says no to probe (or to prompt mode), an attention window narrower
    than the graph's ``max_len``, or rotary scaling that changes below it. Activations are
    no reason: both paths run the MLP's own ``act_fn``."""
    p, shape, export = ctx.spec.probe, ctx.shape, ctx.spec.onnx_export()
    if p is None or shape is None:
        return
    yield from _probe_family(p, shape)
    if export is None or not export.gating:
        return
    problem = window_problem((shape.sliding_window,), export.max_len)
    if problem:
        yield _err("P0226", problem, export.span,
                   f"set max_len = {shape.sliding_window} or less in export onnx")
    problem = rope_problem(shape.rope_fixed_len, export.max_len)
    if problem:
        yield _err("P0226", problem, export.span,
                   f"set max_len = {shape.rope_fixed_len} or less in export onnx")


def _probe_family(p: ProbePolicy, shape: ModelShape) -> Iterator[Diagnostic]:
    row, prompt = family(shape.architecture), p.mode is ProbeMode.PROMPT
    if not row.probe:
        yield _err("P0226", f"probe gating is not built for {shape.architecture} models "
                   "(see the README's supported models)", p.span,
                   "prune it with a static method instead")
    elif prompt and not row.prompt:
        yield _err("P0226", f"mode = prompt is not built for {shape.architecture} models "
                   "(see the README's supported models)", p.span,
                   "use mode = probe (per batch) or a static method")


# ------------------------------------------------------------------ exports, gates


def check_exports(ctx: Context) -> Iterator[Diagnostic]:
    kinds: set[str] = set()
    written: set[str] = set()  # artifact entries, lower case (case-insensitive file systems)
    for e in ctx.spec.exports:
        onnx = isinstance(e, OnnxExport)
        kind, name = ("onnx", e.file) if isinstance(e, OnnxExport) else ("hf", e.directory)
        entries = {w.lower() for w in names.written(name, onnx)}
        problem = names.export_problem(name, onnx)
        if kind in kinds:
            yield _err("P0107", f"export {kind} declared twice", e.span)
        elif problem:
            yield _err("P0224", f"export {kind}: {problem}", e.span, _EXPORT_HINT[kind])
        elif entries & written:
            yield _err("P0218", f"two exports write '{min(entries & written)}'", e.span)
        kinds.add(kind)
        written |= entries
        if isinstance(e, OnnxExport):
            yield from _onnx_fits(ctx, e)


_EXPORT_HINT = {"onnx": 'name a file inside the artifact: export onnx "model.onnx"',
                "hf": 'name a directory inside the artifact: export hf "hf"'}


def _onnx_fits(ctx: Context, e: OnnxExport) -> Iterator[Diagnostic]:
    if e.opset < MIN_OPSET:
        yield _err("P0214", f"opset {e.opset} is too old", e.span,
                   f"use an opset from {MIN_OPSET} to {MAX_OPSET}")
    elif e.opset > MAX_OPSET:
        yield _err("P0214", f"opset {_short(e.opset)} is newer than prunec exports (at most "
                   f"{MAX_OPSET})", e.span, f"use an opset from {MIN_OPSET} to {MAX_OPSET}")
    if not MIN_SEQ <= e.max_len <= MAX_SEQ:
        yield _err("P0216", f"max_len {_short(e.max_len)} is outside {MIN_SEQ}..{MAX_SEQ}",
                   e.span)
    elif e.gating:
        yield from _fits_max_len(ctx, e)
    if e.gating and ctx.spec.probe is None:
        yield _err("P0210", "gating = on needs a probe policy", e.span,
                   "add a probe { ratio = ... } block or set gating = off")
    if e.fuse and not fusable(e.gating, ctx.spec.probe):
        yield _err("P0221", "fuse = on is not supported with gating = on (per-batch probing)",
                   e.span, "drop fuse = on: per-batch gated graphs are exported with standard "
                   "ONNX ops (mode = prompt graphs are fused)")


def _fits_max_len(ctx: Context, e: OnnxExport) -> Iterator[Diagnostic]:
    """A gated graph runs sequences up to max_len: so must its evaluation and history data."""
    used = set(ctx.spec.eval_datasets()) | {history_dataset(ctx.spec) or ""}
    for d in ctx.spec.datasets:
        if d.name in used and d.seq_len > e.max_len:
            yield _err("P0225", f"dataset {d.name}: seq_len {_short(d.seq_len)} is longer than "
                       f"the gated graph's max_len {e.max_len}", d.span,
                       "add export onnx { max_len = ... } or lower seq_len"
                       if e.span == ctx.spec.span else  # the implicit export
                       f"raise max_len in export onnx (line {e.span.line}) or lower seq_len")


def _short(n: int) -> str:
    """An integer for a message, however long (Python refuses to print > 4300 digits)."""
    return str(n) if n < 2**63 else "over 2**63"


def check_params_gate(ctx: Context) -> Iterator[Diagnostic]:
    if ctx.shape is None:
        return
    dense = dense_params(ctx.shape)
    for g in ctx.spec.gates:
        if isinstance(g, ParamsGate) and g.max_params >= dense:
            yield Diagnostic.warning(
                "P0217", f"the dense model has {dense:,} parameters: this gate never fails",
                g.span)
        elif isinstance(g, ParamsGate) and g.max_params <= 0:
            yield _err("P0217", "a parameter gate of 0 never passes", g.span)


CHECKS: tuple[Check, ...] = (
    check_undefined_datasets,
    check_unused_datasets,
    check_dataset_sizes,
    check_data_files,
    check_overlap,
    check_selectors,
    check_static_options,
    check_reconstruct,
    check_steps,
    check_protect_all,
    check_plan_actions,
    check_plan_conflicts,
    check_static_vs_plan,
    check_probe,
    check_exports,
    check_params_gate,
)

"""Reading the ``key = value`` bodies of blocks into IR nodes, with the language's defaults.

Each ``*_block`` function takes the generic entries of one block (``Attr``/``Group`` from
``prunec.compiler.syntax``), reports unknown/duplicate keys and ill-typed values into the
sink, and returns the IR node with defaults filled in. A field whose value is wrong falls
back to its default so that lowering goes on and reports every problem in one run; a block
whose *required* key is missing returns ``None``. Defaults follow docs/algorithms.md and are
listed in ``DEFAULTS`` (the formatter, ``explain`` and the docs read them from here).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prunec.compiler import syntax as sx
from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.ir import (
    DataFormat,
    DatasetDecl,
    Distribution,
    DType,
    LayerSelector,
    ProbeMetric,
    ProbeMode,
    ProbePolicy,
    ProbeTarget,
    Provider,
    Scope,
    SelectorKind,
    SliceRange,
    StaticMethod,
    StaticPrune,
    Steps,
    Target,
    WidthImportance,
)

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
Entries = tuple["sx.Attr | sx.Group", ...]

DEFAULTS: dict[str, object] = {
    "dtype": "float32",
    "dataset.samples": 64,
    "dataset.seq_len": 256,
    "dataset.seed": 0,
    "dataset.field": "text",
    "prune.distribution": "44:52:4",
    "prune.reorder": True,
    "prune.importance": "magnitude",
    "prune.scope": "per-layer",
    "probe.targets": "[mlp, heads]",
    "probe.skip": "layers[0..2]",
    "probe.mode": "probe",
    "probe.tokens": 0.5,
    "probe.samples": 0.05,
    "probe.momentum": 0.99,
    "probe.metric": "ppsp",
    "probe.round": 64,
    "onnx.file": "model.onnx",
    "onnx.opset": 18,
    "onnx.providers": "[cuda, cpu]",
    "hf.directory": "hf",
}
DTYPE_ALIASES = {"fp32": DType.FLOAT32, "fp16": DType.FLOAT16, "bf16": DType.BFLOAT16}


@dataclass(frozen=True)
class Fields:
    """The entries of one block by key, after unknown/duplicate keys were reported."""

    attrs: dict[str, sx.Value]
    groups: dict[str, sx.Group]
    span: Span

    def get(self, key: str, convert: Callable[[sx.Value, str, list[Diagnostic]], T | None],
            default: T, sink: list[Diagnostic]) -> T:
        value = self.attrs.get(key)
        if value is None:
            return default
        got = convert(value, key, sink)
        return default if got is None else got


def fields(entries: Entries, where: str, keys: tuple[str, ...], groups: tuple[str, ...],
           span: Span, sink: list[Diagnostic]) -> Fields:
    """Sort a block's entries by key; report unknown and repeated keys."""
    attrs: dict[str, sx.Value] = {}
    grps: dict[str, sx.Group] = {}
    for e in entries:
        key = e.key if isinstance(e, sx.Attr) else e.name
        allowed = keys if isinstance(e, sx.Attr) else groups
        if key not in allowed:
            _unknown_key(e, key, where, keys, groups, sink)
        elif key in attrs or key in grps:
            sink.append(Diagnostic.error("P0102", f"'{key}' is given twice in {where}", e.span))
        elif isinstance(e, sx.Attr):
            attrs[key] = e.value
        else:
            grps[key] = e
    return Fields(attrs, grps, span)


def _unknown_key(e: sx.Attr | sx.Group, key: str, where: str, keys: tuple[str, ...],
                 groups: tuple[str, ...], sink: list[Diagnostic]) -> None:
    hint: str | None
    if isinstance(e, sx.Attr) and key in groups:
        hint = f"'{key}' is a group: write {key} {{ ... }}"
    elif isinstance(e, sx.Group) and key in keys:
        hint = f"write {key} = <value>"
    else:
        hint = sx.suggest(key, list(keys + groups))
    sink.append(Diagnostic.error("P0101", f"unknown key '{key}' in {where}", e.span, hint))


# ------------------------------------------------------------------------ datasets


def dataset_block(name: str, fmt: DataFormat, paths: tuple[str, ...], f: Fields,
                  sink: list[Diagnostic]) -> DatasetDecl:
    samples = f.get("samples", sx.integer, 64, sink)
    seq_len = f.get("seq_len", sx.integer, 256, sink)
    seed = f.get("seed", sx.integer, 0, sink)
    field = f.get("field", sx.string, None if fmt is DataFormat.TEXT else "text", sink)
    if fmt is DataFormat.TEXT and "field" in f.attrs:
        sink.append(Diagnostic.error(
            "P0211", "'field' applies to jsonl and hf-disk datasets, not text",
            f.attrs["field"].span))
    slice_ = _slice(f.attrs.get("slice"), sink)
    return DatasetDecl(name, fmt, paths, field, samples, seq_len, seed, slice_, f.span)


def dataset_paths(v: sx.Value, sink: list[Diagnostic]) -> tuple[str, ...]:
    out = [sx.string(item, "dataset path", sink) for item in sx.items(v)]
    if not out:
        sink.append(Diagnostic.error("P0106", "a dataset needs at least one path", v.span))
    return tuple(p for p in out if p is not None)


def _slice(v: sx.Value | None, sink: list[Diagnostic]) -> SliceRange | None:
    if v is None:
        return None
    if not isinstance(v, sx.RangeV):
        sx.wrong_type(v, "slice", "a range such as 0% .. 50%", sink)
        return None
    lo, hi = sx.fraction(v.lo, "slice", sink), sx.fraction(v.hi, "slice", sink)
    if lo is None or hi is None:
        return None
    if lo >= hi:
        sink.append(Diagnostic.error(
            "P0203", f"the slice {v.lo.raw} .. {v.hi.raw} is empty", v.span,
            "the start must be below the end"))
        return None
    return SliceRange(lo, hi, v.span)


# -------------------------------------------------------------------- static prune


def prune_block(method: StaticMethod, f: Fields, sink: list[Diagnostic]) -> StaticPrune | None:
    target = _target(f, sink)
    protect = tuple(s for s in (sx.selector(i, "protect", sink)
                                for i in sx.items(f.attrs.get("protect", _EMPTY))) if s)
    steps = _steps(f.groups.get("steps"), sink)
    distribution = _distribution(f.attrs.get("distribution"), sink)
    score = f.get("score", sx.name, None, sink)
    reorder = f.get("reorder", sx.boolean, True, sink)
    scope = f.get("scope", _enum(Scope), Scope.PER_LAYER, sink)
    importance = f.get("importance", _enum(WidthImportance), None, sink)
    if importance is not None:
        at = f.attrs["importance"].span
        if method is not StaticMethod.MULTIPRUNER:
            sink.append(Diagnostic.error(
                "P0211", f"'importance' applies to multipruner, not {method.value}", at))
        elif not reorder:
            sink.append(Diagnostic.error(
                "P0211", "'importance' orders the reorder, but reorder = off", at,
                "drop importance, or set reorder = on"))
    if target is None:
        return None
    return StaticPrune(method, target, distribution, steps, score, protect, reorder, scope,
                       f.span, importance)


_EMPTY = sx.ListV((), Span("", 0, 0, 0, 0))


def _enum(kind: type[E]) -> Callable[[sx.Value, str, list[Diagnostic]], E | None]:
    def convert(v: sx.Value, key: str, sink: list[Diagnostic]) -> E | None:
        got: E | None = sx.word(v, key, kind, sink)
        return got

    return convert


def _target(f: Fields, sink: list[Diagnostic]) -> Target | None:
    group = f.groups.get("target")
    if "target" in f.attrs:
        params = sx.fraction(f.attrs["target"], "target", sink)
        return None if params is None else Target(params, None, None, None, f.attrs[
            "target"].span)
    if group is None:
        sink.append(Diagnostic.error(
            "P0106", "the prune block needs a target", f.span,
            "write target = 20% (of all parameters) or target { mlp = 30%, heads = 25% }"))
        return None
    g = fields(group.attrs, "target", ("params", "mlp", "heads", "blocks"), (), group.span, sink)
    if not g.attrs:
        sink.append(Diagnostic.error("P0106", "the target group is empty", group.span))
        return None
    vals = {k: g.get(k, sx.fraction, None, sink) for k in ("params", "mlp", "heads", "blocks")}
    return Target(vals["params"], vals["mlp"], vals["heads"], vals["blocks"], group.span)


def _steps(group: sx.Group | None, sink: list[Diagnostic]) -> Steps | None:
    if group is None:
        return None
    g = fields(group.attrs, "steps", ("mlp", "heads"), (), group.span, sink)
    return Steps(g.get("mlp", sx.integer, None, sink), g.get("heads", sx.integer, None, sink),
                 group.span)


def _distribution(v: sx.Value | None, sink: list[Diagnostic]) -> Distribution | None:
    if v is None:
        return None
    if not isinstance(v, sx.RatioV) or len(v.parts) != 3:
        sx.wrong_type(v, "distribution", "three shares blocks:mlp:heads such as 44:52:4", sink)
        return None
    parts = [sx.number(p, "distribution", sink) for p in v.parts]
    if any(p is None for p in parts):
        return None
    b, m, h = (float(p or 0) for p in parts)
    if b + m + h <= 0:
        sink.append(Diagnostic.error("P0202", "the distribution's shares sum to 0", v.span))
        return None
    total = b + m + h
    return Distribution(b / total, m / total, h / total, v.span)


# ------------------------------------------------------------------------- probe


def probe_block(f: Fields, sink: list[Diagnostic]) -> ProbePolicy | None:
    ratio = f.get("ratio", sx.fraction, None, sink)
    targets = _words(f.attrs.get("targets"), "targets", ProbeTarget, sink)
    skip = f.attrs.get("skip")
    default_skip = (LayerSelector(SelectorKind.RANGE, 0, 2, f.span),)
    skips = default_skip if skip is None else tuple(
        s for s in (sx.selector(i, "skip", sink) for i in sx.items(skip)) if s)
    policy = ProbePolicy(
        ratio=ratio or 0.0,
        targets=targets or (ProbeTarget.MLP, ProbeTarget.HEADS),
        skip=skips,
        mode=f.get("mode", _enum(ProbeMode), ProbeMode.PROBE, sink),
        token_fraction=f.get("tokens", sx.fraction, 0.5, sink),
        sample_fraction=f.get("samples", sx.fraction, 0.05, sink),
        momentum=f.get("momentum", sx.fraction, 0.99, sink),
        history_dataset=f.get("history", sx.name, None, sink),
        metric=f.get("metric", _enum(ProbeMetric), ProbeMetric.PPSP, sink),
        round_to=f.get("round", sx.integer, 64, sink),
        span=f.span,
        compensate=f.get("compensate", sx.boolean, False, sink),
    )
    if "ratio" not in f.attrs:
        sink.append(Diagnostic.error("P0106", "the probe block needs a ratio", f.span,
                                     "write ratio = 40%"))
    return None if ratio is None else policy


def _words(v: sx.Value | None, key: str, kind: type[E], sink: list[Diagnostic]
           ) -> tuple[E, ...] | None:
    if v is None:
        return None
    out = [sx.word(i, key, kind, sink) for i in sx.items(v)]
    if not out:
        sink.append(Diagnostic.error("P0215", f"'{key}' is an empty list", v.span))
    _duplicates([i for i in sx.items(v) if isinstance(i, sx.Word)], key, sink)
    return tuple(o for o in out if o is not None)


def _duplicates(words: list[sx.Word], key: str, sink: list[Diagnostic]) -> None:
    seen: set[str] = set()
    for w in words:
        if w.name in seen:
            sink.append(Diagnostic.error("P0215", f"'{w.name}' appears twice in '{key}'",
                                         w.span))
        seen.add(w.name)


def providers(v: sx.Value | None, sink: list[Diagnostic]) -> tuple[Provider, ...]:
    got = _words(v, "providers", Provider, sink)
    return (Provider.CUDA, Provider.CPU) if got is None else got

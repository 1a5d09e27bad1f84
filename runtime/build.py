"""``prunec build``: the driver. spec -> model -> plan -> pruned graph -> ONNX artifact + report.

Stages, in order (each timed in ``report.json``'s ``timings_s``):
  load_model -> load_data -> plan -> evaluate_dense (PyTorch, before any pruning)
  -> compile (into the temporary artifact directory) -> evaluate_pruned (onnxruntime)
  -> gates -> write -> publish.
Each stage's work lives elsewhere: the plan in ``runtime.planning``, compiling in the
``runtime.backends`` table (``"gated"`` when the spec's ``export onnx`` has gating on, else
``"static"``; the build obeys the IR's export and invents no default of its own), sessions
in ``runtime.session``, the report in ``runtime.report``, the other files in
``runtime.artifact_files``, where outputs go in ``compiler.outputs``. A gated model's
pruned perplexity runs with H carried from batch to batch, reset per dataset. Dense
perplexity is always PyTorch on the unpruned model; pruned is always onnxruntime on the
artifact itself.

The artifact is published atomically (``prunec.runtime.artifact``). A search's state is kept
beside the artifact (``compiler.outputs.resume_path``): a build without ``--resume`` starts
afresh and deletes it, a published build deletes it. When a gate fails, the build exits 1
and the artifact is NOT published: an existing artifact at DIR stays as it was, and the
failing report is written next to it as ``DIR.failed-report.json`` (report.json plus the
plan under ``"plan"``; replaced atomically; deleted by the next successful build).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunec.compiler.checks import history_dataset
from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import OnnxExport, Spec
from prunec.compiler.outputs import failed_report_path, output_dir, resume_path
from prunec.compiler.plan import Plan
from prunec.runtime.artifact import (
    FAILED_REPORT_FORMAT,
    ArtifactDir,
    checkpoint,
    discard_sibling,
    require_replaceable,
)
from prunec.runtime.backends import CompileFn, CompileJob, backend_for, quiet_torch
from prunec.runtime.jsonio import write_json
from prunec.runtime.planning import PlanOptions, make_plan, method_json, method_refit
from prunec.runtime.report import BuildReport, DatasetResult, Outcome, assemble, refit_notes


@dataclass(frozen=True)
class BuildOptions:
    output: Path | None = None  # -o DIR
    quiet: bool = False
    lock: Path | None = None  # --lock plan.lock.json: apply a locked plan, no search
    batch_size: int = 4  # sequences per forward pass when evaluating
    resume: bool = False  # --resume: continue a search from its last completed step


@dataclass(frozen=True)
class BuildResult:
    report: dict[str, Any]
    artifact: Path | None  # None when a gate failed
    failed_report: Path | None  # DIR.failed-report.json when a gate failed

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start
        checkpoint(name)


@dataclass
class BuildContext:
    spec: Spec
    spec_dir: Path
    options: BuildOptions
    progress: Any
    backends: dict[str, CompileFn]  # overrides of ``runtime.backends.BACKENDS``
    out: Path
    timings: Timings = field(default_factory=Timings)

    @contextmanager
    def busy(self, label: str) -> Iterator[None]:
        """An indeterminate progress line for a stage that reports no progress itself."""
        task = self.progress.add_task(label, total=None)
        try:
            yield
        finally:
            self.progress.remove_task(task)

    def plan_options(self) -> PlanOptions:
        return PlanOptions(self.progress, self.options.lock, self.options.batch_size,
                           resume_path(self.out))


def onnx_export(spec: Spec) -> OnnxExport:
    """The spec's ``export onnx`` (lowering adds the implicit one; its absence is a bug)."""
    export = spec.onnx_export()
    if export is None:
        raise RuntimeError(f"spec {spec.name!r} reached the build without an `export onnx`")
    return export


def build(spec: Spec, spec_dir: Path, options: BuildOptions = BuildOptions(),
          backends: dict[str, CompileFn] | None = None) -> BuildResult:
    """Build ``spec``'s artifact; CompileError for user errors (nothing is written then).
    ``backends`` overrides entries of ``runtime.backends.BACKENDS`` (tests)."""
    from prunec.runtime.evaluate import make_progress

    onnx_export(spec)
    out = output_dir(spec, spec_dir, options.output).absolute()
    require_replaceable(out, Span.unknown(spec.file), (failed_report_path(out), resume_path(out)))
    if not options.resume:
        discard_sibling(resume_path(out))  # a fresh search
    with make_progress(options.quiet) as progress:
        ctx = BuildContext(spec, spec_dir, options, progress, dict(backends or {}), out)
        return _run(ctx, time.perf_counter())


def _run(ctx: BuildContext, start: float) -> BuildResult:
    from prunec.runtime.data import load_spec_data
    from prunec.runtime.evaluate import torch_logits
    from prunec.runtime.models import load_model

    spec, t = ctx.spec, ctx.timings
    with t.stage("load_model"), ctx.busy("loading the model"):
        loaded = load_model(spec.model, ctx.spec_dir)
    with t.stage("load_data"):
        data = load_spec_data(spec, ctx.spec_dir, loaded.tokenizer)
    with t.stage("plan"):
        plan, method = make_plan(spec, loaded, data, ctx.plan_options())
    with t.stage("evaluate_dense"):
        dense = evaluate_all(spec.eval_datasets(), data, torch_logits(loaded.model), ctx, "dense")
    artifact = ArtifactDir(ctx.out, Span.unknown(spec.file))
    with artifact as tmp:
        checkpoint("artifact-open")
        report = _compile_and_check(ctx, loaded, plan, data, dense, tmp, method_refit(method))
        report = dataclasses.replace(report, method_info=method_json(method),
                                     notes=report.notes + refit_notes(plan, method_refit(method)))
        with t.stage("write"):
            from prunec.runtime.artifact_files import write_artifact_files

            genai = write_artifact_files(spec, loaded, plan, method, tmp)
        t.stages["total"] = time.perf_counter() - start
        data_json = dataclasses.replace(report, timings=dict(t.stages), genai=genai).to_json()
        write_json(tmp / "report.json", data_json)
        checkpoint("report-written")
        if not data_json["passed"]:
            failed = failed_report_path(ctx.out)
            write_json(failed, {"format": FAILED_REPORT_FORMAT, **data_json,
                                "plan": plan.to_json()})
            return BuildResult(data_json, None, failed)
        artifact.commit()
    discard_sibling(failed_report_path(ctx.out))
    discard_sibling(resume_path(ctx.out))
    return BuildResult(data_json, ctx.out, None)


def evaluate_all(names: tuple[str, ...], data: dict[str, Any], logits_fn: Any,
                 ctx: BuildContext, which: str, reset: Any = None) -> dict[str, Any]:
    """Perplexity per dataset; ``reset()`` (if given) runs before each dataset."""
    from prunec.runtime.evaluate import perplexity

    results = {}
    for n in names:
        if reset is not None:
            reset()
        results[n] = perplexity(logits_fn, data[n], ctx.options.batch_size, ctx.progress,
                                f"{which} perplexity on {n}")
    return results


def _compile_and_check(ctx: BuildContext, loaded: Any, plan: Plan, data: dict[str, Any],
                       dense: dict[str, Any], tmp: Path, refit: Any) -> BuildReport:
    from prunec.runtime.session import artifact_runner

    spec, t, export = ctx.spec, ctx.timings, onnx_export(ctx.spec)
    onnx_path = tmp / export.file
    job = CompileJob(loaded.model, plan, loaded.shape, onnx_path, export.opset,
                     spec.model.span, spec.probe, data.get(history_dataset(spec) or ""),
                     export.max_len, refit, export.fuse, export.kv_cache,
                     export.dtype.value)
    with t.stage("compile"), ctx.busy("compiling: graph passes, ONNX export"), quiet_torch():
        compiled = backend_for(export.gating, ctx.backends)(job)
    with t.stage("evaluate_pruned"):
        session, logits_fn, reset = artifact_runner(onnx_path, export.providers)
        pruned = evaluate_all(spec.eval_datasets(), data, logits_fn, ctx, "pruned", reset)
    results = tuple(DatasetResult(n, int(data[n].shape[0]), int(data[n].shape[1]), dense[n],
                                  pruned[n]) for n in spec.eval_datasets())
    providers = {"requested": list(session.requested), "used": list(session.used),
                 "notes": list(session.notes)}
    seq_len = max((r.seq_len for r in results), default=export.max_len)
    return assemble(Outcome(spec, loaded, plan, results, providers, onnx_path, compiled,
                            seq_len))

"""``prunec build``: the driver. spec -> model -> plan -> pruned graph -> ONNX artifact + report.

Stages, in order (each timed in ``report.json``'s ``timings_s``, its peak RSS in ``memory``:
``runtime.stages``):
  load_model -> load_data -> plan -> evaluate_dense (PyTorch, before any pruning)
  -> compile (into the temporary artifact directory) -> evaluate_pruned (onnxruntime)
  -> gates -> write -> publish.
The model is loaded once, on the device of ``model { device }`` or ``BuildOptions.device``
(``--device``; ``runtime.device``), and handed to the compile backend (``backends.Handoff``:
it changes the model in place and frees it) unless an ``export hf`` needs it afterwards; evaluation batches are capped by ``eval_rows`` (logits dominate its memory).
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
from prunec.compiler.ir import Device, OnnxExport, Spec
from prunec.compiler.outputs import failed_report_path, output_dir, resume_path
from prunec.compiler.plan import Plan
from prunec.runtime.artifact import (
    FAILED_REPORT_FORMAT,
    ArtifactDir,
    checkpoint,
    discard_sibling,
    require_replaceable,
)
from prunec.runtime.backends import CompileFn, CompileJob, Handoff, backend_for, quiet_torch
from prunec.runtime.jsonio import write_json
from prunec.runtime.planning import PlanOptions, make_plan, method_json, method_refit
from prunec.runtime.report import BuildReport, DatasetResult, Outcome, assemble, refit_notes
from prunec.runtime.stages import Stages


@dataclass(frozen=True)
class BuildOptions:
    output: Path | None = None  # -o DIR
    quiet: bool = False
    lock: Path | None = None  # --lock plan.lock.json: apply a locked plan, no search
    batch_size: int = 4  # sequences per forward pass when evaluating
    resume: bool = False  # --resume: continue a search from its last completed step
    workers: int = 1  # --workers N: a search's candidates scored on N Ray actors
    ray_address: str | None = None  # --ray-address ADDR: those actors on a Ray cluster
    device: Device | None = None  # --device: replaces the spec's ``model { device }``


@dataclass(frozen=True)
class BuildResult:
    report: dict[str, Any]
    artifact: Path | None  # None when a gate failed
    failed_report: Path | None  # DIR.failed-report.json when a gate failed

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


@dataclass
class Timings(Stages):
    """``runtime.stages.Stages`` (time and peak RSS per stage) + the artifact checkpoints."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with super().stage(name):
            yield
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
                           resume_path(self.out), self.options.workers,
                           self.options.ray_address)


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
    from prunec.runtime.device import with_device
    from prunec.runtime.evaluate import torch_logits
    from prunec.runtime.models import load_model

    spec, t = ctx.spec, ctx.timings
    with t.stage("load_model"), ctx.busy("loading the model"):
        loaded = load_model(with_device(spec.model, ctx.options.device), ctx.spec_dir)
    with t.stage("load_data"):
        data = load_spec_data(spec, ctx.spec_dir, loaded.tokenizer)
    with t.stage("plan"):
        plan, method = make_plan(spec, loaded, data, ctx.plan_options())
    with t.stage("evaluate_dense"):
        dense = evaluate_all(spec.eval_datasets(), data, torch_logits(loaded.model), ctx,
                             "dense", vocab=loaded.shape.vocab)
    artifact = ArtifactDir(ctx.out, Span.unknown(spec.file))
    with artifact as tmp:
        checkpoint("artifact-open")
        model = loaded.model if spec.hf_exports() else Handoff(loaded.model)
        if isinstance(model, Handoff):  # nothing after the compile reads the torch model:
            loaded = dataclasses.replace(loaded, model=None)  # the backend owns it
        compiled = _compile(ctx, model, loaded, plan, data, tmp, method_refit(method))
        del model
        report = _check(ctx, loaded, plan, data, dense, compiled, tmp / onnx_export(spec).file)
        report = dataclasses.replace(report, method_info=method_json(method),
                                     notes=report.notes + refit_notes(plan, method_refit(method)))
        with t.stage("write"):
            from prunec.runtime.artifact_files import write_artifact_files

            genai = write_artifact_files(spec, loaded, plan, method, tmp)
        t.seconds["total"] = time.perf_counter() - start
        data_json = dataclasses.replace(report, timings=dict(t.seconds), genai=genai,
                                        memory=t.memory_json()).to_json()
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
                 ctx: BuildContext, which: str, reset: Any = None,
                 vocab: int = 0) -> dict[str, Any]:
    """Perplexity per dataset; ``reset()`` (if given) runs before each dataset. With
    ``vocab`` (a model whose rows are independent: not a gated one, whose probe sees the
    batch), the batch is capped by ``eval_rows``."""
    from prunec.runtime.evaluate import perplexity

    results = {}
    for n in names:
        if reset is not None:
            reset()
        rows = eval_rows(ctx.options.batch_size, int(data[n].shape[1]), vocab)
        results[n] = perplexity(logits_fn, data[n], rows, ctx.progress,
                                f"{which} perplexity on {n}")
    return results


EVAL_LOGITS_BYTES = 64 * 2**20  # float32 logits one evaluation forward may produce


def eval_rows(batch_size: int, seq_len: int, vocab: int) -> int:
    """Sequences per evaluation forward: ``--batch-size``, capped (when ``vocab`` is given)
    so that one forward's float32 logits fit ``EVAL_LOGITS_BYTES``, at least 1: the logits,
    not the weights, dominate an evaluation's memory (SmolLM2 at 4 x 256 tokens: 192 MiB
    of logits, and as much again for their log-softmax).

    >>> eval_rows(4, 256, 49152), eval_rows(4, 32, 160), eval_rows(4, 256, 0)
    (1, 4, 4)
    """
    if vocab <= 0:
        return batch_size
    return max(1, min(batch_size, EVAL_LOGITS_BYTES // (seq_len * vocab * 4)))


def _compile(ctx: BuildContext, model: Any, loaded: Any, plan: Plan, data: dict[str, Any],
             tmp: Path, refit: Any) -> dict[str, Any]:
    """The compile stage: the backend writes the ONNX file; returns what it reported.
    ``model``: the loaded model, or a ``Handoff`` of it (the backend may free it)."""
    spec, export = ctx.spec, onnx_export(ctx.spec)
    job = CompileJob(model, plan, loaded.shape, tmp / export.file, export.opset,
                     spec.model.span, spec.probe, data.get(history_dataset(spec) or ""),
                     export.max_len, refit, export.fuse, export.kv_cache,
                     export.dtype.value)
    with ctx.timings.stage("compile"), ctx.busy("compiling: graph passes, ONNX export"), \
            quiet_torch():
        return backend_for(export.gating, ctx.backends)(job)


def _check(ctx: BuildContext, loaded: Any, plan: Plan, data: dict[str, Any],
           dense: dict[str, Any], compiled: dict[str, Any], onnx_path: Path) -> BuildReport:
    """The evaluate_pruned stage: onnxruntime on the artifact's file, then the report (in
    the stage, after the session is gone: nothing runs outside a measured stage)."""
    from prunec.runtime.session import artifact_runner

    spec, t, export = ctx.spec, ctx.timings, onnx_export(ctx.spec)
    with t.stage("evaluate_pruned"):
        session, logits_fn, reset = artifact_runner(onnx_path, export.providers)
        pruned = evaluate_all(spec.eval_datasets(), data, logits_fn, ctx, "pruned", reset,
                              0 if export.gating else loaded.shape.vocab)
        providers = {"requested": list(session.requested), "used": list(session.used),
                     "notes": list(session.notes)}
        del session, logits_fn, reset
        results = tuple(DatasetResult(n, int(data[n].shape[0]), int(data[n].shape[1]),
                                      dense[n], pruned[n]) for n in spec.eval_datasets())
        seq_len = max((r.seq_len for r in results), default=export.max_len)
        return assemble(Outcome(spec, loaded, plan, results, providers, onnx_path, compiled,
                                seq_len))

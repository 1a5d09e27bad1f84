"""The artifact's files besides the ONNX model, written into the build's temporary directory.

``write_artifact_files`` writes the tokenizer (``tokenizer.save_pretrained``), ``plan.json``
(``Plan.to_json``), ``plan.lock.json`` (static methods only: rebuild with ``--lock``),
``plan-report.png`` / ``plan-report.html`` (``runtime.plan_report``), every
``export hf "DIR"`` (``runtime.hf_export``) and, for a graph with a KV cache,
``genai_config.json`` (``runtime.genai``). It returns report.json's ``genai`` entry;
``report.json`` is written last by the build.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prunec.compiler.ir import HfExport, Spec
from prunec.compiler.plan import Plan
from prunec.runtime.jsonio import write_json


def write_artifact_files(spec: Spec, loaded: Any, plan: Plan, method: Any,
                         tmp: Path) -> dict[str, Any]:
    """Everything but the model and report.json (see the module docstring); returns
    report.json's ``genai`` entry."""
    loaded.tokenizer.save_pretrained(str(tmp))
    write_json(tmp / "plan.json", plan.to_json())
    if method is not None and method.hashes:  # a manual plan's refit has no lock
        from prunec.passes.methods.lock import write_lock

        write_lock(tmp / "plan.lock.json", method)
    write_plan_pictures(method, plan, loaded.shape, tmp)
    write_hf_exports(spec, loaded, plan, tmp, getattr(method, "refit", None))
    return write_genai_files(spec, loaded, tmp)


def write_plan_pictures(method: Any, plan: Plan, shape: Any, tmp: Path) -> None:
    """plan-report.png + plan-report.html: per-layer widths and the search trajectory."""
    from prunec.passes.methods.types import SearchStats
    from prunec.runtime.plan_report import write_plan_report

    result = method if method is not None else SimpleNamespace(plan=plan, stats=SearchStats())
    write_plan_report(result, shape, tmp)


def write_hf_exports(spec: Spec, loaded: Any, plan: Plan, tmp: Path,
                     refit: Any = None) -> None:
    """``export hf "DIR"``: the pruned PyTorch model (see ``prunec.runtime.hf_export``)."""
    from prunec.runtime.hf_export import export_hf

    for e in (e for e in spec.exports if isinstance(e, HfExport)):
        export_hf(loaded.model, loaded.tokenizer, plan, tmp / e.directory, refit)


def write_genai_files(spec: Spec, loaded: Any, tmp: Path) -> dict[str, Any]:
    """``genai_config.json`` beside the ONNX model (see ``prunec.runtime.genai``)."""
    from prunec.runtime.genai import write_genai_config

    export = spec.onnx_export()
    if export is None:
        return {"written": False, "reason": "the spec has no `export onnx`"}
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    return write_genai_config(tmp / export.file, loaded.shape, bos)

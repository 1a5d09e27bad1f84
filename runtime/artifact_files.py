"""The artifact's files besides the ONNX model, written into the build's temporary directory.

``write_artifact_files`` writes the tokenizer (``tokenizer.save_pretrained``), ``plan.json``
(``Plan.to_json``), ``plan.lock.json`` (static methods only: rebuild with ``--lock``),
``plan-report.png`` / ``plan-report.html`` (``runtime.plan_report``) and every
``export hf "DIR"`` (``runtime.hf_export``). ``report.json`` is written last by the build.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prunec.compiler.ir import HfExport, Spec
from prunec.compiler.plan import Plan
from prunec.runtime.jsonio import write_json


def write_artifact_files(spec: Spec, loaded: Any, plan: Plan, method: Any, tmp: Path) -> None:
    """Everything but the model and report.json (see the module docstring)."""
    loaded.tokenizer.save_pretrained(str(tmp))
    write_json(tmp / "plan.json", plan.to_json())
    if method is not None:
        from prunec.passes.methods.lock import write_lock

        write_lock(tmp / "plan.lock.json", method)
    write_plan_pictures(method, plan, loaded.shape, tmp)
    write_hf_exports(spec, loaded, plan, tmp)


def write_plan_pictures(method: Any, plan: Plan, shape: Any, tmp: Path) -> None:
    """plan-report.png + plan-report.html: per-layer widths and the search trajectory."""
    from prunec.passes.methods.types import SearchStats
    from prunec.runtime.plan_report import write_plan_report

    result = method if method is not None else SimpleNamespace(plan=plan, stats=SearchStats())
    write_plan_report(result, shape, tmp)


def write_hf_exports(spec: Spec, loaded: Any, plan: Plan, tmp: Path) -> None:
    """``export hf "DIR"``: the pruned PyTorch model (see ``prunec.runtime.hf_export``)."""
    from prunec.runtime.hf_export import export_hf

    for e in (e for e in spec.exports if isinstance(e, HfExport)):
        export_hf(loaded.model, loaded.tokenizer, plan, tmp / e.directory)
